package diglett

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/transport"
)

// A link is one of the sessions the agent keeps to a gateway
// (Config.Connections per gateway). Each link connects, registers the
// names, serves the gateway's streams, and reconnects with backoff on its
// own; the gateway treats every live session as a member of the names'
// groups and spreads visitors over them.
type link struct {
	l       *Listener
	gateway string // host:port as configured: the key of its pinned identity
	index   int
	tls     *tls.Config
	proxy   func(*http.Request) (*url.URL, error)
	log     *slog.Logger

	mu  sync.Mutex
	cur *linkSession
}

// linkSession is a session of a link, logged in and registered.
type linkSession struct {
	sess    transport.Session
	via     string // the transport
	ctrl    transport.Stream
	tunnels []Tunnel
	conns   sync.WaitGroup // visitor connections not yet closed
	flows   flowTable      // UDP flows in QUIC datagrams
	// refused is set when the gateway ends the session with a fatal
	// error (its operator revoked the token or took a name away).
	refused atomic.Pointer[RefusedError]
}

// endedBy records e, an Error the gateway sent after registration, and
// reports whether it ends the session for good (IsFatal); after any other
// the session goes on.
func (ls *linkSession) endedBy(e *protocol.Error) bool {
	err := refusal(e)
	if !IsFatal(err) {
		return false
	}
	ls.refused.CompareAndSwap(nil, err.(*RefusedError))
	return true
}

func newLink(l *Listener, gateway string, index int, tc *tls.Config, proxy func(*http.Request) (*url.URL, error)) *link {
	return &link{l: l, gateway: gateway, index: index, tls: tc, proxy: proxy,
		log: l.log.With("gateway", gateway, "session", index)}
}

func (k *link) setCurrent(ls *linkSession) {
	k.mu.Lock()
	k.cur = ls
	k.mu.Unlock()
}

// tunnelList is what the link's current session registered.
func (k *link) tunnelList() []Tunnel {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cur == nil {
		return nil
	}
	return slices.Clone(k.cur.tunnels)
}

// live reports whether the link's current session is up: registered and
// not yet ended.
func (k *link) live() bool {
	k.mu.Lock()
	ls := k.cur
	k.mu.Unlock()
	return ls != nil && ls.sess.Context().Err() == nil
}

// drain tells the gateway to send the current session no new visitors.
func (k *link) drain() error {
	k.mu.Lock()
	ls := k.cur
	k.mu.Unlock()
	if ls == nil {
		return nil
	}
	return ls.drain(k.l.cfg.DialTimeout)
}

func (ls *linkSession) drain(timeout time.Duration) error {
	ls.ctrl.SetWriteDeadline(time.Now().Add(timeout))
	if err := protocol.WriteMessage(ls.ctrl, &protocol.Drain{}); err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	return nil
}

// run serves the link's sessions, reconnecting, until the listener stops.
// first, if not nil, is an already connected session.
func (k *link) run(first *linkSession) {
	l := k.l
	ls := first
	attempt := 0
	wait := false
	for {
		for ls == nil {
			if wait {
				select {
				case <-time.After(backoff(attempt, l.cfg.MaxBackoff)):
				case <-l.ctx.Done():
					return
				}
				attempt++
			}
			wait = true
			var err error
			ls, err = k.connect(l.ctx, l.tunnelsOf(k.gateway))
			if l.ctx.Err() != nil || l.draining.Load() {
				if ls != nil {
					ls.sess.Close()
				}
				return
			}
			if err != nil {
				if IsFatal(err) {
					k.log.Error("giving up", "err", err)
					l.stop(err)
					l.cancel() // the other links too
					return
				}
				k.log.Warn("reconnect failed", "err", err, "attempt", attempt)
			}
		}
		started := time.Now()
		next := k.serve(ls)
		if re := ls.refused.Load(); re != nil {
			// The gateway's operator no longer allows this agent: every
			// link of the listener stops, and Accept returns why.
			if next != nil {
				next.sess.Close()
			}
			err := fmt.Errorf("gateway %s ended the session: %w", k.gateway, re)
			k.log.Error("giving up: the gateway ended the session", "err", re)
			l.stop(err)
			l.cancel()
			return
		}
		if l.ctx.Err() != nil || l.draining.Load() {
			if next != nil {
				next.sess.Close()
			}
			return
		}
		if next != nil {
			ls = next
			continue
		}
		if time.Since(started) > l.cfg.MaxBackoff {
			attempt = 0
		}
		k.log.Warn("disconnected from gateway, reconnecting", "transport", ls.via, "why", context.Cause(ls.sess.Context()))
		ls, wait = nil, true
	}
}

// serve accepts the gateway's streams on ls until it ends, or until a
// session over a faster transport replaces it: serve then returns that
// one, and ls is retired in the background.
func (k *link) serve(ls *linkSession) *linkSession {
	l := k.l
	k.setCurrent(ls)
	stop := context.AfterFunc(l.ctx, func() { ls.sess.Close() })
	defer stop()
	accepted := make(chan struct{})
	// Counted in l.wg, from here in run, whose end the listener awaits
	// before it waits for l.wg: the goroutine counts the streams it
	// starts in l.wg too, and a count taken from zero during that wait
	// would be a misuse (a retired session's streams outlive serve).
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer close(accepted)
		k.acceptStreams(ls)
	}()
	better := k.betterThan(ls.via)
	if len(better) == 0 {
		<-accepted
		ls.sess.Close()
		return nil
	}
	timer := time.NewTimer(l.cfg.UpgradeInterval)
	defer timer.Stop()
	for {
		select {
		case <-accepted:
			ls.sess.Close()
			return nil
		case <-timer.C:
			next, err := k.connectOver(l.ctx, better, ls.tunnels, false)
			if err != nil {
				k.log.Debug("faster transports still fail", "transports", better, "err", err)
				timer.Reset(l.cfg.UpgradeInterval)
				continue
			}
			k.log.Info("moved to a faster transport", "from", ls.via, "to", next.via)
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				k.retire(ls, accepted)
			}()
			return next
		}
	}
}

// retire drains ls and closes it once its visitor connections have ended,
// after drainTimeout at most.
func (k *link) retire(ls *linkSession, accepted <-chan struct{}) {
	defer ls.sess.Close()
	if err := ls.drain(k.l.cfg.DialTimeout); err != nil {
		return
	}
	done := make(chan struct{})
	go func() {
		ls.conns.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-accepted:
	case <-time.After(drainTimeout):
	case <-k.l.ctx.Done():
	}
}

// drainTimeout bounds how long a retired session waits for its visitors.
const drainTimeout = 30 * time.Second

// acceptStreams hands the gateway's streams on ls to Accept until the
// session ends.
func (k *link) acceptStreams(ls *linkSession) {
	for {
		st, err := ls.sess.AcceptStream(k.l.ctx)
		if err != nil {
			return
		}
		k.l.wg.Add(1)
		go func() {
			defer k.l.wg.Done()
			k.handleStream(ls, st)
		}()
	}
}

// streamHeaderTimeout bounds how long the gateway may take to send a
// stream's header.
const streamHeaderTimeout = 10 * time.Second

func (k *link) handleStream(ls *linkSession, st transport.Stream) {
	l := k.l
	st.SetReadDeadline(time.Now().Add(streamHeaderTimeout))
	h, err := protocol.ReadStreamHeader(st)
	if err != nil {
		k.log.Warn("bad stream from gateway", "err", err)
		st.Close()
		return
	}
	st.SetReadDeadline(time.Time{})
	var public Addr
	found := false
	for _, t := range ls.tunnels {
		if t.Name == h.Name {
			public, found = t.Addr, true
		}
	}
	ls.conns.Add(1)
	c := &Conn{st: st, name: h.Name, visitor: visitorAddr(h.Visitor, h.UDP), public: public, closed: ls.conns.Done, session: ls.sess.Context()}
	switch {
	case !found:
		k.log.Warn("gateway sent a connection for a name this agent does not serve", "tunnel", h.Name)
		c.refuse(protocol.StatusUnknownTunnel)
		return
	case h.UDP != public.UDP:
		// Served as an unknown name: the gateway has it as another kind
		// of tunnel than this agent does.
		k.log.Warn("gateway sent a visitor of the other protocol than the tunnel's", "tunnel", h.Name, "udp_flow", h.UDP, "udp_tunnel", public.UDP)
		c.refuse(protocol.StatusUnknownTunnel)
		return
	case h.UDP:
		if err := ls.attachUDP(c, h, k.log.With("tunnel", h.Name, "visitor", h.Visitor)); err != nil {
			k.log.Warn("bad UDP flow from gateway", "tunnel", h.Name, "err", err)
			c.refuse(protocol.StatusRefused)
			return
		}
	}
	if !l.enqueue(c, k.log, h) {
		if l.ctx.Err() == nil {
			k.log.Warn("visitor refused: accept backlog full", "tunnel", h.Name, "visitor", h.Visitor, "backlog", l.cfg.Backlog)
		}
		c.refuse(protocol.StatusBusy)
	}
	if c.udp.queued() {
		c.udp.watch(st)
	}
}

// backlogGrace is how long a visitor waits for room in a full accept
// backlog before it is refused. A burst of visitors starts a goroutine per
// stream, and those can keep the application's accept loop from running
// for a while even when it takes every connection at once; the grace
// rides that out, while an application that stopped accepting still has
// its excess visitors refused, only later.
const backlogGrace = 500 * time.Millisecond

// enqueue hands c to Accept, waiting up to backlogGrace for room; it
// reports false when there was none, or the listener closed meanwhile.
func (l *Listener) enqueue(c *Conn, log *slog.Logger, h protocol.StreamHeader) bool {
	select {
	case l.conns <- c:
		return true
	default:
	}
	log.Debug("accept backlog full: the visitor waits for room", "tunnel", h.Name, "visitor", h.Visitor, "backlog", l.cfg.Backlog, "wait", backlogGrace)
	t := time.NewTimer(backlogGrace)
	defer t.Stop()
	select {
	case l.conns <- c:
		return true
	case <-t.C:
	case <-l.ctx.Done():
	}
	return false
}

// transportOrder is the order transports are tried in for Config.Transport.
func transportOrder(t string) []string {
	if t == TransportAuto {
		// TLS over TCP measured fastest on every workload of the
		// benchmark suite (docs/DECISIONS.md, "auto"); QUIC where TCP to
		// the agent port is blocked; WebSocket on the HTTPS port last.
		return []string{TransportTCP, TransportQUIC, TransportWebSocket}
	}
	return []string{t}
}

// betterThan lists the transports preferred to via.
func (k *link) betterThan(via string) []string {
	order := transportOrder(k.l.cfg.Transport)
	if i := slices.Index(order, via); i > 0 {
		return order[:i]
	}
	return nil
}

// connectFirst is a link's first connection, at start: like connect it
// fails fast, except when the gateway is busy: then it retries with
// backoff until ctx ends.
func (k *link) connectFirst(ctx context.Context) (*linkSession, error) {
	var busy error
	for attempt := 0; ; attempt++ {
		ls, err := k.connect(ctx, nil)
		switch {
		case err == nil:
			return ls, nil
		case busy != nil && ctx.Err() != nil:
			return nil, busy // still busy when ctx ended
		case !errors.Is(err, ErrGatewayBusy) || ctx.Err() != nil:
			return nil, err
		}
		busy = err
		wait := backoff(attempt, k.l.cfg.MaxBackoff)
		k.log.Warn("gateway busy, retrying", "in", wait.Round(time.Millisecond), "attempt", attempt+1)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, busy
		}
	}
}

// connect dials the gateway over the configured transports in turn and
// logs in. prev holds the tunnels of an earlier session: their ports are
// asked for again as hints, so a restarted gateway gives the same ports
// back when it can.
func (k *link) connect(ctx context.Context, prev []Tunnel) (*linkSession, error) {
	return k.connectOver(ctx, transportOrder(k.l.cfg.Transport), prev, true)
}

// autoAttemptTimeout bounds one transport's attempt when there are others
// to fall back on: a blocked port usually answers with silence.
const autoAttemptTimeout = 4 * time.Second

// connectOver tries the transports in order; only a transport failure
// moves on to the next one (a refusal by the gateway, or a gateway that
// cannot be trusted, ends the attempt). announce logs the tunnels.
func (k *link) connectOver(ctx context.Context, order []string, prev []Tunnel, announce bool) (*linkSession, error) {
	var failed []string
	var last error
	for _, via := range order {
		timeout := k.l.cfg.DialTimeout
		if len(order) > 1 {
			timeout = min(timeout, autoAttemptTimeout)
		}
		actx, cancel := context.WithTimeout(ctx, timeout)
		sess, err := k.dial(actx, via)
		if err != nil {
			cancel()
			var te *trustError
			if errors.As(err, &te) {
				return nil, te
			}
			if errors.Is(err, ErrNotGateway) {
				return nil, err // the address answered: the other transports go there too
			}
			if errors.Is(err, ErrGatewayBusy) {
				return nil, err // a refusal: the other transports would get it too
			}
			if ctx.Err() != nil {
				return nil, err
			}
			if errors.Is(err, context.DeadlineExceeded) {
				err = fmt.Errorf("no answer within %v", timeout)
			}
			failed = append(failed, via+": "+err.Error())
			last = err
			continue
		}
		ls, err := k.handshake(actx, sess, via, prev)
		cancel()
		if err != nil {
			if closedBusy(sess, err) {
				err = fmt.Errorf("connect to gateway %s over %s: %w", k.gateway, via, ErrGatewayBusy)
			}
			sess.Close()
			return nil, err
		}
		if len(failed) > 0 {
			k.log.Info("connected over "+via, "because", strings.Join(failed, "; "))
		} else {
			k.log.Debug("connected over " + via)
		}
		if announce && k.index == 0 {
			for _, t := range ls.tunnels {
				k.log.Info("tunnel ready", "tunnel", t.Name, "urls", t.URLs(), "transport", via)
			}
		}
		return ls, nil
	}
	if len(order) == 1 {
		return nil, fmt.Errorf("%w: %w", ErrGatewayUnreachable, last)
	}
	return nil, fmt.Errorf("connect to gateway %s: %w: every transport failed: %s", k.gateway, ErrGatewayUnreachable, strings.Join(failed, "; "))
}
