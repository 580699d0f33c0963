// Package diglett publishes services that live behind NAT through a public
// gateway that you own.
//
// Listen dials the gateway, authenticates, registers a name and returns a
// net.Listener whose connections are the gateway's visitors:
//
//	ln, err := diglett.Listen(ctx, diglett.Config{
//		Gateway: "gateway.example.com:20000",
//		Name:    "example",
//		Token:   os.Getenv("DIGLETT_TOKEN"),
//	})
//	if err != nil { ... }
//	fmt.Println("public address:", ln.Addr())
//	http.Serve(ln, handler)
//
// The connection to the gateway is TLS 1.3 and the gateway is always
// authenticated: by a CA-signed certificate, by an explicit fingerprint, or
// by the key pinned on first use in the known_gateways file. When the
// connection drops, the listener reconnects with exponential backoff and
// registers the same names again; the gateway keeps them (and their ports)
// leased for the agent's identity meanwhile. Accept returns an error only
// when the listener is closed or a fatal error stops it (see IsFatal).
package diglett

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/diglett/diglett/internal/identity"
	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/tlsmux"
)

// Config configures Listen. Zero values take the documented defaults.
type Config struct {
	// Gateway is the gateway's agent address, host:port. Required.
	Gateway string
	// Name is the tunnel name to register, a DNS label. Required.
	Name string
	// Names are further names registered on the same connection; their
	// visitors arrive on the same Listener and Conn.Name tells them apart.
	Names []string
	// Token authenticates the agent; empty for gateways that allow all.
	Token string
	// Port asks for a specific public TCP port for Name (0: any).
	Port int
	// Fingerprint pins the gateway's key ("SHA256:..."), bypassing both CA
	// verification and known_gateways.
	Fingerprint string
	// RootCAs verifies a gateway with a CA-issued certificate. When set,
	// only certificates from these CAs are accepted (no pinning on first
	// use). Nil: the system roots, then pinning on first use.
	RootCAs *x509.CertPool
	// KnownGateways is the file of pinned gateway keys. Default
	// known_gateways under the user's config dir.
	KnownGateways string
	// KeepAlive bounds dead-peer detection. Default 15s.
	KeepAlive time.Duration
	// DialTimeout bounds one connection attempt, TLS and login included.
	// Default 10s.
	DialTimeout time.Duration
	// MaxBackoff caps the wait between reconnection attempts. Default 30s.
	MaxBackoff time.Duration
	// Backlog is how many visitor connections may wait for Accept; more are
	// refused. Default 256.
	Backlog int
	// Logger receives the agent's logs. Default slog.Default().
	Logger *slog.Logger

	// BasicAuth, "user:password", makes the gateway ask HTTP visitors for
	// these credentials before any of their requests reach the agent. The
	// gateway then refuses visitors on the tunnels' public TCP ports, where
	// it cannot ask.
	BasicAuth string
	// AllowIPs lets only visitors from these addresses or CIDR prefixes
	// reach the tunnels; the gateway refuses the others. Empty: everyone.
	AllowIPs []string
	// H2C says the backend speaks HTTP/2 without TLS (a gRPC server, say),
	// so the gateway's HTTP ingress speaks HTTP/2 to it.
	H2C bool
}

// Defaults for Config.
const (
	DefaultDialTimeout = 10 * time.Second
	DefaultMaxBackoff  = 30 * time.Second
	DefaultBacklog     = 256
)

// Validate reports the first problem with c.
func (c *Config) Validate() error {
	if c.Gateway == "" {
		return errors.New("no gateway address")
	}
	if _, port, err := net.SplitHostPort(c.Gateway); err != nil {
		return fmt.Errorf("gateway address %q: want host:port", c.Gateway)
	} else if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("gateway address %q: bad port", c.Gateway)
	}
	for _, n := range c.names() {
		if err := protocol.ValidateName(n); err != nil {
			return fmt.Errorf("tunnel name: %w", err)
		}
	}
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("port %d out of range", c.Port)
	}
	if c.Fingerprint != "" {
		if err := identity.ValidFingerprint(c.Fingerprint); err != nil {
			return err
		}
	}
	if _, err := c.register(c.Name); err != nil {
		return err
	}
	return nil
}

// register is the registration of name with the visitor options.
func (c *Config) register(name string) (*protocol.Register, error) {
	req := &protocol.Register{Name: name, AllowIPs: c.AllowIPs, H2C: c.H2C}
	if c.BasicAuth != "" {
		user, pass, ok := strings.Cut(c.BasicAuth, ":")
		if !ok || user == "" || pass == "" {
			return nil, errors.New("basic auth: want user:password")
		}
		req.BasicAuth = &protocol.BasicAuth{User: user, Password: pass}
	}
	if _, err := protocol.ParseAllowIPs(c.AllowIPs); err != nil {
		return nil, err
	}
	if err := protocol.WriteMessage(io.Discard, req); err != nil {
		return nil, err
	}
	return req, nil
}

func (c *Config) names() []string {
	return append([]string{c.Name}, c.Names...)
}

func (c Config) withDefaults() Config {
	c.Name = protocol.NormalizeName(c.Name)
	names := make([]string, len(c.Names))
	for i, n := range c.Names {
		names[i] = protocol.NormalizeName(n)
	}
	c.Names = names
	if c.KeepAlive <= 0 {
		c.KeepAlive = tlsmux.DefaultKeepAlive
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.Backlog <= 0 {
		c.Backlog = DefaultBacklog
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Addr is a public address on the gateway.
type Addr struct {
	Host string
	Port int
}

// Network is "tcp".
func (a Addr) Network() string { return "tcp" }

func (a Addr) String() string {
	if a.Port == 0 {
		return a.Host
	}
	return net.JoinHostPort(a.Host, strconv.Itoa(a.Port))
}

// Tunnel is a registered name and its public addresses.
type Tunnel struct {
	Name string
	Addr Addr
	// HTTPURL and HTTPSURL are the tunnel's addresses on the gateway's
	// shared HTTP and HTTPS ports; empty when the gateway serves none.
	HTTPURL, HTTPSURL string
}

// URL is the tunnel's public TCP address as tcp://host:port.
func (t Tunnel) URL() string { return "tcp://" + t.Addr.String() }

// URLs lists the tunnel's public addresses: HTTPS, HTTP, then TCP.
func (t Tunnel) URLs() []string {
	var urls []string
	for _, u := range []string{t.HTTPSURL, t.HTTPURL, t.URL()} {
		if u != "" {
			urls = append(urls, u)
		}
	}
	return urls
}

// Listener is a net.Listener whose connections come from the gateway.
type Listener struct {
	cfg    Config
	log    *slog.Logger
	tls    *tls.Config
	host   string
	conns  chan *Conn
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when the run loop has ended
	wg     sync.WaitGroup

	mu       sync.Mutex
	err      error // why the listener stopped
	tunnels  []Tunnel
	ctrl     transport.Stream // control stream of the current session
	draining atomic.Bool
}

var _ net.Listener = (*Listener)(nil)

// Listen connects to the gateway and registers the configured names. It
// returns once they are live, or the first error: the agent fails fast at
// start (a wrong token, a refused name or an unreachable gateway), and once
// started it reconnects on its own until Close. As with net.ListenConfig,
// ctx bounds only the initial connection, not the listener's life.
func Listen(ctx context.Context, cfg Config) (*Listener, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	tc, err := cfg.tlsConfig(cfg.Logger)
	if err != nil {
		return nil, err
	}
	host, _, _ := net.SplitHostPort(cfg.Gateway)
	lctx, cancel := context.WithCancel(context.Background())
	l := &Listener{
		cfg:    cfg,
		tls:    tc,
		log:    cfg.Logger.With("gateway", cfg.Gateway),
		host:   host,
		conns:  make(chan *Conn, cfg.Backlog),
		ctx:    lctx,
		cancel: cancel,
		done:   make(chan struct{}),
	}
	sess, tunnels, err := l.connect(ctx, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	l.tunnels = tunnels
	for _, t := range tunnels {
		l.log.Info("tunnel ready", "tunnel", t.Name, "urls", t.URLs())
	}
	go l.run(sess)
	return l, nil
}

// Accept waits for the next visitor connection. The returned net.Conn is a
// *Conn.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		// Prefer queued connections over the close.
		select {
		case c := <-l.conns:
			return c, nil
		default:
		}
		return nil, l.Err()
	}
}

// Err is why the listener stopped: a fatal error from the gateway, or
// net.ErrClosed after Close. Nil while it
// runs.
func (l *Listener) Err() error {
	select {
	case <-l.done:
	default:
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return l.err
	}
	return net.ErrClosed
}

// Done is closed when the listener has stopped; Err says why.
func (l *Listener) Done() <-chan struct{} { return l.done }

// Close disconnects from the gateway and stops the listener. Connections
// already accepted travel over that connection and end with it: to let them
// finish, stop calling Accept and wait for them before calling Close.
func (l *Listener) Close() error {
	l.cancel()
	<-l.done
	// Refuse what is still queued.
	for {
		select {
		case c := <-l.conns:
			c.Abort(nil)
		default:
			return nil
		}
	}
}

// Drain asks the gateway to send this listener no new visitors and to close
// the idle HTTP connections it keeps open to it; the connections in flight
// go on, and the listener no longer reconnects. Call it when stopping,
// before waiting for the open connections to end, then Close.
func (l *Listener) Drain() error {
	l.draining.Store(true)
	l.mu.Lock()
	ctrl := l.ctrl
	l.mu.Unlock()
	if ctrl == nil {
		return nil
	}
	ctrl.SetWriteDeadline(time.Now().Add(l.cfg.DialTimeout))
	if err := protocol.WriteMessage(ctrl, &protocol.Drain{}); err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	return nil
}

// Addr is the public address of the tunnel for Config.Name.
func (l *Listener) Addr() net.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.tunnels[0].Addr
}

// Tunnels lists the registered names and their public addresses.
func (l *Listener) Tunnels() []Tunnel {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Tunnel(nil), l.tunnels...)
}

// publicAddr is the public address of the tunnel name, if this listener
// serves it.
func (l *Listener) publicAddr(name string) (Addr, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, t := range l.tunnels {
		if t.Name == name {
			return t.Addr, true
		}
	}
	return Addr{}, false
}

// run serves sessions and reconnects until the listener stops.
func (l *Listener) run(sess transport.Session) {
	defer close(l.done)
	defer l.wg.Wait()
	attempt := 0
	for {
		started := time.Now()
		l.serve(sess)
		if l.ctx.Err() != nil || l.draining.Load() {
			return
		}
		if time.Since(started) > l.cfg.MaxBackoff {
			attempt = 0
		}
		l.log.Warn("disconnected from gateway, reconnecting")
		for {
			d := backoff(attempt, l.cfg.MaxBackoff)
			attempt++
			select {
			case <-time.After(d):
			case <-l.ctx.Done():
				return
			}
			var tunnels []Tunnel
			var err error
			sess, tunnels, err = l.connect(l.ctx, l.Tunnels())
			if err == nil {
				l.mu.Lock()
				l.tunnels = tunnels
				l.mu.Unlock()
				for _, t := range tunnels {
					l.log.Info("tunnel ready", "tunnel", t.Name, "urls", t.URLs())
				}
				break
			}
			if l.ctx.Err() != nil {
				return
			}
			if IsFatal(err) {
				l.log.Error("giving up", "err", err)
				l.mu.Lock()
				l.err = err
				l.mu.Unlock()
				return
			}
			l.log.Warn("reconnect failed", "err", err, "attempt", attempt)
		}
	}
}

// backoff is exponential backoff with full jitter: a random wait between 0
// and min(max, 250ms·2^attempt).
func backoff(attempt int, max time.Duration) time.Duration {
	ceil := 250 * time.Millisecond << min(attempt, 16)
	if ceil > max || ceil <= 0 {
		ceil = max
	}
	return rand.N(ceil) + time.Millisecond
}

// serve accepts the gateway's streams on sess until it ends.
func (l *Listener) serve(sess transport.Session) {
	stop := context.AfterFunc(l.ctx, func() { sess.Close() })
	defer stop()
	defer sess.Close()
	for {
		st, err := sess.AcceptStream(l.ctx)
		if err != nil {
			return
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.handleStream(st)
		}()
	}
}

// streamHeaderTimeout bounds how long the gateway may take to send a
// stream's header.
const streamHeaderTimeout = 10 * time.Second

func (l *Listener) handleStream(st transport.Stream) {
	st.SetReadDeadline(time.Now().Add(streamHeaderTimeout))
	h, err := protocol.ReadStreamHeader(st)
	if err != nil {
		l.log.Warn("bad stream from gateway", "err", err)
		st.Close()
		return
	}
	st.SetReadDeadline(time.Time{})
	public, found := l.publicAddr(h.Name)
	c := &Conn{st: st, name: h.Name, visitor: visitorAddr(h.Visitor), public: public}
	if !found {
		l.log.Warn("gateway sent a connection for a name this agent does not serve", "tunnel", h.Name)
		c.sendStatus(protocol.StatusUnknownTunnel)
		st.Close()
		return
	}
	select {
	case l.conns <- c:
	default:
		l.log.Warn("visitor refused: accept backlog full", "tunnel", h.Name, "visitor", h.Visitor, "backlog", l.cfg.Backlog)
		c.sendStatus(protocol.StatusBusy)
		st.Close()
	}
}
