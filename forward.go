package diglett

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/relay"
)

// ForwardOptions tunes Forward. Zero values take the documented defaults.
type ForwardOptions struct {
	// Backends maps a tunnel name to the address (host:port, over TCP) its
	// visitors are forwarded to; a name missing from it uses Forward's
	// backend argument. It lets one listener serving several names send
	// each to its own backend. Forward only reads it.
	Backends map[string]string
	// Dial, when set, connects a visitor of the named tunnel to its
	// backend instead of dialing an address, and Backends and Forward's
	// backend argument are not used. It is called from many goroutines at
	// once; ctx carries DialTimeout and ends early when Forward stops. An
	// error refuses the visitor (HTTP visitors get 502, or 504 when the
	// error is a timeout, as a net.Error). For a UDP tunnel's flow it must
	// return a connected UDP socket (net.Dial("udp", ...)), or a net.Conn
	// that keeps datagram boundaries as one does: one for each call.
	Dial func(ctx context.Context, tunnel string) (net.Conn, error)
	// DialTimeout bounds the connection to a backend. Default 10s;
	// negative: no bound but the system's.
	DialTimeout time.Duration
	// DrainTimeout is how long Forward waits for the open connections to
	// end once its context is done, before it resets them. Default 10s;
	// negative: reset them at once.
	DrainTimeout time.Duration
	// HalfCloseTimeout ends a connection that one side has half-closed
	// when the other sends nothing for this long. Default 60s; negative:
	// no bound.
	HalfCloseTimeout time.Duration
	// Logger receives Forward's logs. Default: the listener's logger
	// (Config.Logger).
	Logger *slog.Logger
	// Inspect, when set, observes what each visitor's relay copies, to
	// record HTTP requests, say. It is called once the visitor's backend
	// is connected; what the visitor sends is also written to fromVisitor
	// and what the backend answers to fromBackend, in order, as it is
	// relayed (a nil writer observes nothing). Both are closed once the
	// relay has ended. The writes happen on the relay's goroutines, so
	// they should return at once, and their errors are ignored. The bytes
	// relayed are the same with or without Inspect.
	Inspect func(c *Conn) (fromVisitor, fromBackend io.WriteCloser)
	// ProxyProtocol, when ProxyProtocolV1 (1) or ProxyProtocolV2 (2),
	// makes Forward send each TCP backend a PROXY protocol header of that
	// version (text or binary) before the visitor's first byte (UDP flows
	// get none), so that a backend that reads it (nginx's "listen ...
	// proxy_protocol", say) sees the visitor's address, Conn.RemoteAddr,
	// as the connection's source; the destination is the backend
	// connection's remote address.
	// The header goes in one write once the backend is connected, Dial's
	// connections included, and before any relayed byte; a header that
	// cannot be written refuses the visitor as a failed dial does. A
	// visitor address that is not an IP address and port (the gateway
	// never sends one) gets a header without addresses (v1 UNKNOWN, v2
	// LOCAL). Default 0: no header. Other values make Forward return an
	// error at once.
	ProxyProtocol int
	// ProxyProtocols overrides ProxyProtocol for the tunnels it names (0:
	// no header for that tunnel's backend), as Backends does backend.
	// Forward only reads it.
	ProxyProtocols map[string]int
	// UDPIdleTimeout ends a UDP flow (forward_udp.go) after this long
	// without a datagram either way. Default 60s; negative: no bound.
	UDPIdleTimeout time.Duration
	// MaxUDPFlows caps the UDP flows of one tunnel open at once; the
	// gateway's next visitor address is refused (StatusBusy). Default
	// 1024.
	MaxUDPFlows int
}

// Defaults for ForwardOptions (Config.DialTimeout, DefaultDialTimeout, is
// the gateway's).
const (
	DefaultBackendDialTimeout = 10 * time.Second
	DefaultDrainTimeout       = 10 * time.Second
	DefaultHalfCloseTimeout   = 60 * time.Second
)

// withDefaults returns o with its zero fields set to the defaults and its
// negative bounds made explicit: zero for the drain, none for the others.
func (o ForwardOptions) withDefaults(ln *Listener) ForwardOptions {
	o.DialTimeout = orDefault(o.DialTimeout, DefaultBackendDialTimeout)
	o.DrainTimeout = orDefault(o.DrainTimeout, DefaultDrainTimeout)
	o.HalfCloseTimeout = orDefault(o.HalfCloseTimeout, DefaultHalfCloseTimeout)
	if o.Logger == nil {
		o.Logger = ln.log
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// orDefault is d for zero, zero (which means "no bound" or "at once" to
// the users of the result) for a negative v, and v otherwise.
func orDefault(v, d time.Duration) time.Duration {
	switch {
	case v == 0:
		return d
	case v < 0:
		return 0
	}
	return v
}

// errNoBackend refuses a visitor of a tunnel that has no backend.
var errNoBackend = errors.New("no backend for the tunnel")

// Forward serves every visitor of ln by connecting it to its backend and
// copying bytes both ways, half-close kept, as the diglett agent does. It
// returns when ctx ends, when ln is closed (nil) or when ln stops on a fatal
// error (that error, see IsFatal); ln is closed when it returns.
//
// A visitor whose backend cannot be reached is refused with Conn.Abort. A
// connection whose session to the gateway ends is reset at once. When ctx
// ends, Forward drains: it tells the gateways to send no new visitors
// (Listener.Drain), waits up to DrainTimeout for the open connections to
// end, resets both sides of those still open, then closes ln.
//
// The visitor's tunnel picks its backend: Dial when set, otherwise
// Backends[name], otherwise backend. With ProxyProtocol (or
// ProxyProtocols) set, each backend connection starts with a PROXY
// protocol header carrying the visitor's address.
func Forward(ctx context.Context, ln *Listener, backend string, opts ForwardOptions) error {
	if err := opts.checkProxyProtocol(); err != nil {
		ln.Close()
		return err
	}
	o := opts.withDefaults(ln)
	log := o.Logger
	var (
		rs      = newRelays()
		wg      sync.WaitGroup
		drained = make(chan struct{})
	)
	stop := context.AfterFunc(ctx, func() {
		defer close(drained)
		if err := ln.Drain(); err != nil {
			log.Debug("could not tell the gateway to send no more visitors", "err", err)
		}
		log.Info("shutting down: waiting for open connections", "connections", rs.len(), "timeout", o.DrainTimeout)
		if !rs.wait(o.DrainTimeout) {
			log.Warn("drain time is up: closing the connections still open", "connections", rs.len())
		}
		rs.abortAll()
		ln.Close()
	})
	defer stop()
	f := &forwarder{backend: backend, o: o, d: net.Dialer{Timeout: o.DialTimeout}, drain: ctx}
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				<-drained
				wg.Wait()
				return nil
			}
			ln.Close()
			rs.abortAll()
			wg.Wait()
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		vc := c.(*Conn)
		r := rs.add(vc)
		if r == nil { // draining
			vc.Abort(nil)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer rs.remove(r)
			f.run(r, log)
		}()
	}
}

// forwarder is what every relay of one Forward call shares.
type forwarder struct {
	backend string
	o       ForwardOptions
	d       net.Dialer
	flows   flowCounts      // UDP flows per tunnel
	drain   context.Context // ends when Forward starts draining
}

// dial connects a visitor of tunnel to its backend; addr names it in logs.
func (f *forwarder) dial(ctx context.Context, tunnel string) (c net.Conn, addr string, err error) {
	if f.o.Dial != nil {
		if f.o.DialTimeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, f.o.DialTimeout)
			defer cancel()
		}
		c, err = f.o.Dial(ctx, tunnel)
		if err == nil && c == nil {
			err = fmt.Errorf("dial %s: no connection and no error", tunnel)
		}
		return c, tunnel, err
	}
	addr = f.backend
	if a, ok := f.o.Backends[tunnel]; ok {
		addr = a
	}
	if addr == "" {
		return nil, addr, errNoBackend
	}
	c, err = f.d.DialContext(ctx, "tcp", addr)
	return c, addr, err
}

// run dials the backend of p's visitor and relays both ways until both
// sides are done or the pair is aborted.
func (f *forwarder) run(p *relayPair, log *slog.Logger) {
	vc := p.vc
	l := log.With("tunnel", vc.Name(), "visitor", vc.RemoteAddr().String())
	if vc.udp != nil {
		f.runUDP(p, l)
		return
	}
	bc, backend, err := f.dial(p.ctx, vc.Name())
	if err != nil {
		if p.ctx.Err() == nil {
			l.Warn("backend refused the connection", "backend", backend, "err", err)
		}
		vc.Abort(err)
		return
	}
	if !p.setBackend(bc) {
		bc.Close()
		return
	}
	if v := f.o.proxyProtocol(vc.Name()); v != 0 {
		if err := writeProxyHeader(bc, vc, v, f.o.DialTimeout, l); err != nil {
			if p.ctx.Err() == nil {
				l.Warn("could not send the backend the PROXY protocol header", "backend", backend, "err", err)
			}
			vc.Abort(err)
			bc.Close()
			return
		}
	}
	l.Debug("visitor connected")
	var a, b net.Conn = vc, bc
	if f.o.Inspect != nil {
		fromVisitor, fromBackend := f.o.Inspect(vc)
		defer closeAll(fromVisitor, fromBackend)
		a, b = observed(vc, fromVisitor), observed(bc, fromBackend)
	}
	up, down, err := relay.PipeWith(a, b, relay.Options{HalfCloseTimeout: f.o.HalfCloseTimeout})
	l.Debug("visitor disconnected", "sent", up, "received", down, "err", err)
}

// SetSink lets the stream write the visitor's bytes straight to the
// backend's socket c (see internal/relay); reading accepts the connection,
// so this does too. A UDP flow has none.
func (c *Conn) SetSink(dst *net.TCPConn) {
	sk, ok := c.st.(interface{ SetSink(*net.TCPConn) })
	if !ok || c.udp != nil {
		return
	}
	if dst != nil && c.sendStatus(protocol.StatusOK) != nil {
		return
	}
	sk.SetSink(dst)
}

// SinkWritten reports the bytes the stream wrote to the sink.
func (c *Conn) SinkWritten() int64 {
	if sk, ok := c.st.(interface{ SinkWritten() int64 }); ok {
		return sk.SinkWritten()
	}
	return 0
}

// observedConn is a connection whose reads are also written to w (see
// ForwardOptions.Inspect). It keeps what the relay needs of the
// connection it wraps: half-close and reset.
type observedConn struct {
	net.Conn
	w io.Writer
}

// observed is c with its reads also written to w; c itself when w is nil.
func observed(c net.Conn, w io.Writer) net.Conn {
	if w == nil {
		return c
	}
	return &observedConn{Conn: c, w: w}
}

func (c *observedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.w.Write(p[:n])
	}
	return n, err
}

// CloseWrite half-closes the connection, or closes it when it cannot.
func (c *observedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// Reset ends the connection the way a failed one ends: a TCP connection
// with a reset.
func (c *observedConn) Reset() error {
	switch x := c.Conn.(type) {
	case interface{ Reset() error }:
		return x.Reset()
	case *net.TCPConn:
		x.SetLinger(0)
	}
	return c.Conn.Close()
}

// closeAll closes the writers that are not nil.
func closeAll(ws ...io.WriteCloser) {
	for _, w := range ws {
		if w != nil {
			w.Close()
		}
	}
}

// relayPair is a visitor's connection and, once dialed, its backend's.
type relayPair struct {
	vc        *Conn
	ctx       context.Context // ends when the pair is aborted: bounds the dial
	cancel    context.CancelFunc
	stopWatch func() bool // stops watching the visitor's session

	mu      sync.Mutex
	bc      net.Conn
	aborted bool
}

// setBackend records the backend connection; false when the pair was
// aborted meanwhile.
func (p *relayPair) setBackend(bc net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.aborted {
		return false
	}
	p.bc = bc
	return true
}

// abort resets both sides, which ends the relay's goroutines at once.
func (p *relayPair) abort() {
	p.mu.Lock()
	p.aborted = true
	bc := p.bc
	p.mu.Unlock()
	p.cancel()
	p.vc.Reset()
	if bc != nil {
		if tc, ok := bc.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		bc.Close()
	}
}

// relays are the relays of one Forward call.
type relays struct {
	mu     sync.Mutex
	pairs  map[*relayPair]struct{}
	closed bool          // no more relays: Forward is stopping
	empty  chan struct{} // closed when pairs empties; made by wait
}

func newRelays() *relays { return &relays{pairs: make(map[*relayPair]struct{})} }

// add starts tracking vc's relay; nil once the relays are closed. The
// relay is aborted as soon as vc's session to the gateway ends.
func (rs *relays) add(vc *Conn) *relayPair {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.closed {
		return nil
	}
	p := &relayPair{vc: vc}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.stopWatch = context.AfterFunc(vc.SessionContext(), p.abort)
	rs.pairs[p] = struct{}{}
	return p
}

func (rs *relays) remove(p *relayPair) {
	p.stopWatch()
	p.cancel()
	rs.mu.Lock()
	defer rs.mu.Unlock()
	delete(rs.pairs, p)
	if len(rs.pairs) == 0 && rs.empty != nil {
		close(rs.empty)
		rs.empty = nil
	}
}

func (rs *relays) len() int {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return len(rs.pairs)
}

// wait waits until no relay is left, for at most d; it reports whether
// none is.
func (rs *relays) wait(d time.Duration) bool {
	rs.mu.Lock()
	if len(rs.pairs) == 0 {
		rs.mu.Unlock()
		return true
	}
	if rs.empty == nil {
		rs.empty = make(chan struct{})
	}
	empty := rs.empty
	rs.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-empty:
		return true
	case <-t.C:
		return false
	}
}

// abortAll takes no more relays and aborts those still open.
func (rs *relays) abortAll() {
	rs.mu.Lock()
	rs.closed = true
	pairs := make([]*relayPair, 0, len(rs.pairs))
	for p := range rs.pairs {
		pairs = append(pairs, p)
	}
	rs.mu.Unlock()
	for _, p := range pairs {
		p.abort()
	}
}
