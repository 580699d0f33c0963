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
// The listener keeps Config.Connections sessions to each gateway, over QUIC,
// TLS over TCP or WebSocket over TLS (Config.Transport; by default the first
// of them that works), and the gateway is always authenticated: by a
// CA-signed certificate, by an explicit fingerprint, or by the key pinned on
// first use in the known_gateways file. When a session drops, it is
// reconnected with exponential backoff and the same names registered again;
// the gateway keeps them (and their ports) leased for the agent's identity
// meanwhile, and sends visitors to the other sessions. Accept returns an
// error only when the listener is closed or a fatal error stops it (see
// IsFatal).
//
// With Config.UDP the names are UDP tunnels: the gateway publishes a
// public UDP port for each, and every Conn the listener accepts is one
// visitor address's flow of datagrams, read and written like a connected
// UDP socket (one datagram per Read and per Write; see Conn). Forward
// relays each flow to a UDP socket of its own to the backend.
package diglett

import (
	"context"
	crand "crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/diglett/diglett/internal/identity"
	"github.com/diglett/diglett/internal/protocol"
)

// Config configures Listen. Zero values take the documented defaults.
type Config struct {
	// Gateway is the gateway's agent address, host:port. Required.
	Gateway string
	// Gateways are further gateways, host:port, that publish the same
	// names: the agent keeps Connections sessions to each, and their
	// visitors arrive on the same Listener.
	Gateways []string
	// Transport is how sessions reach the gateway: TransportAuto (the
	// default: TLS over TCP, else QUIC, else WebSocket, trying the faster
	// ones again later), TransportQUIC, TransportTCP or
	// TransportWebSocket.
	Transport string
	// Connections is how many sessions the agent keeps to each gateway;
	// the gateway spreads visitors over them, and one dying loses only its
	// own connections. Default 2.
	Connections int
	// WebSocketAddr is where WebSocket sessions go when the gateway's agent
	// port cannot be reached: the host:port of the gateway's HTTPS port.
	// Default port 443 of the gateway's host.
	WebSocketAddr string
	// Proxy is the HTTP proxy WebSocket sessions go through (CONNECT; basic
	// auth from the URL's user info). Nil: HTTPS_PROXY and NO_PROXY from
	// the environment.
	Proxy *url.URL
	// UpgradeInterval is how often a session on a slower transport than
	// the best one tries the faster ones again (TransportAuto only).
	// Default 5m.
	UpgradeInterval time.Duration
	// Name is the tunnel name to register, a DNS label. Required.
	Name string
	// Names are further names registered on the same connection; their
	// visitors arrive on the same Listener and Conn.Name tells them apart.
	Names []string
	// Token authenticates the agent; empty for gateways that allow all.
	Token string
	// TokenFunc, when set, is asked for a token at every login in place
	// of Token: gateway is the host:port being dialed and names the names
	// the agent is about to register. A signer of short-lived tokens with
	// the agent's identity key is one (see package auth/jwt). An error
	// fails that login, which is retried later.
	TokenFunc func(ctx context.Context, gateway string, names []string) (string, error)
	// User and Password log the agent in to gateways that take a user
	// and password.
	User, Password string
	// Port asks for a specific public TCP port for Name (0: any); a UDP
	// port with UDP.
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
	// KeepAlivePeriod is how long a session may be silent before the agent
	// sends a keepalive. Default 5s.
	KeepAlivePeriod time.Duration
	// MaxIdleTimeout bounds dead-peer detection: a gateway that stopped
	// answering is noticed, and the session replaced, within this time.
	// Default 15s.
	MaxIdleTimeout time.Duration
	// KeepAlive is MaxIdleTimeout's former name.
	//
	// Deprecated: use MaxIdleTimeout.
	KeepAlive time.Duration
	// DialTimeout bounds one connection attempt, TLS and login included.
	// Default 10s.
	DialTimeout time.Duration
	// MaxBackoff caps the wait between reconnection attempts. Default 30s.
	MaxBackoff time.Duration
	// Backlog is how many visitor connections may wait for Accept; each
	// one beyond it waits up to half a second for room, and is then
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
	// UDP makes every name of the listener a UDP tunnel: the gateway
	// publishes a public UDP port for each (Port asks for one) and no
	// HTTP address, and each Conn the listener accepts is one visitor
	// address's flow of datagrams (see Conn). It takes no BasicAuth or
	// H2C. A gateway that predates UDP tunnels is refused with
	// ErrUDPUnsupported.
	UDP bool
}

// Defaults for Config.
const (
	DefaultDialTimeout     = 10 * time.Second
	DefaultMaxBackoff      = 30 * time.Second
	DefaultBacklog         = 256
	DefaultConnections     = 2
	DefaultUpgradeInterval = 5 * time.Minute
)

// Transports, for Config.Transport.
const (
	TransportAuto      = "auto"
	TransportQUIC      = "quic"
	TransportTCP       = "tcp"
	TransportWebSocket = "ws"
)

// Validate reports the first problem with c.
func (c *Config) Validate() error {
	if c.Gateway == "" {
		return errors.New("no gateway address")
	}
	for _, g := range c.gateways() {
		if err := validAddr("gateway address", g); err != nil {
			return err
		}
	}
	if c.WebSocketAddr != "" {
		if err := validAddr("WebSocket address", c.WebSocketAddr); err != nil {
			return err
		}
	}
	switch c.Transport {
	case "", TransportAuto, TransportQUIC, TransportTCP, TransportWebSocket:
	default:
		return fmt.Errorf("transport %q: want auto, quic, tcp or ws", c.Transport)
	}
	if c.Connections < 0 || c.Connections > 16 {
		return fmt.Errorf("connections %d: want 1 to 16", c.Connections)
	}
	if c.Proxy != nil && c.Proxy.Scheme != "http" && c.Proxy.Scheme != "https" {
		return fmt.Errorf("proxy %s: want an http:// or https:// URL", c.Proxy.Redacted())
	}
	for _, n := range c.names() {
		if err := protocol.ValidateName(n); err != nil {
			return fmt.Errorf("tunnel name: %w", err)
		}
	}
	if len(c.names()) > protocol.MaxNames {
		return fmt.Errorf("%d tunnel names: at most %d per agent", len(c.names()), protocol.MaxNames)
	}
	if len(c.Token) > protocol.MaxTokenLen {
		return fmt.Errorf("token longer than %d bytes", protocol.MaxTokenLen)
	}
	if len(c.User) > protocol.MaxCredLen || len(c.Password) > protocol.MaxCredLen {
		return fmt.Errorf("user or password longer than %d bytes", protocol.MaxCredLen)
	}
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("port %d out of range", c.Port)
	}
	if c.Fingerprint != "" {
		if err := identity.ValidFingerprint(c.Fingerprint); err != nil {
			return err
		}
	}
	if c.UDP && (c.BasicAuth != "" || c.H2C) {
		return errors.New("a UDP tunnel takes no basic auth or h2c: it has no HTTP address")
	}
	if _, err := c.register(c.Name); err != nil {
		return err
	}
	return nil
}

// register is the registration of name with the visitor options.
func (c *Config) register(name string) (*protocol.Register, error) {
	req := &protocol.Register{Name: name, AllowIPs: c.AllowIPs, H2C: c.H2C, UDP: c.UDP}
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

// gateways lists Gateway and Gateways without repeats.
func (c *Config) gateways() []string {
	var gs []string
	for _, g := range append([]string{c.Gateway}, c.Gateways...) {
		if !slices.Contains(gs, g) {
			gs = append(gs, g)
		}
	}
	return gs
}

func validAddr(what, a string) error {
	if _, port, err := net.SplitHostPort(a); err != nil {
		return fmt.Errorf("%s %q: want host:port", what, a)
	} else if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("%s %q: bad port", what, a)
	}
	return nil
}

func (c Config) withDefaults() Config {
	c.Name = protocol.NormalizeName(c.Name)
	names := make([]string, len(c.Names))
	for i, n := range c.Names {
		names[i] = protocol.NormalizeName(n)
	}
	c.Names = names
	if c.MaxIdleTimeout <= 0 {
		c.MaxIdleTimeout = c.KeepAlive
	}
	if c.Transport == "" {
		c.Transport = TransportAuto
	}
	if c.Connections <= 0 {
		c.Connections = DefaultConnections
	}
	if c.UpgradeInterval <= 0 {
		c.UpgradeInterval = DefaultUpgradeInterval
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
	// UDP says Port is a UDP port: the address of a UDP tunnel.
	UDP bool
}

// Network is "tcp", or "udp" for a UDP tunnel's address.
func (a Addr) Network() string {
	if a.UDP {
		return "udp"
	}
	return "tcp"
}

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

// URL is the tunnel's public TCP address as tcp://host:port, or its UDP
// address as udp://host:port.
func (t Tunnel) URL() string { return t.Addr.Network() + "://" + t.Addr.String() }

// URLs lists the tunnel's public addresses: HTTPS, HTTP, then TCP; a UDP
// tunnel has only its UDP address.
func (t Tunnel) URLs() []string {
	if t.Addr.UDP {
		return []string{t.URL()}
	}
	var urls []string
	for _, u := range []string{t.HTTPSURL, t.HTTPURL, t.URL()} {
		if u != "" {
			urls = append(urls, u)
		}
	}
	return urls
}

// Listener is a net.Listener whose connections come from the gateways.
type Listener struct {
	cfg    Config
	log    *slog.Logger
	conns  chan *Conn
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when every link has stopped
	wg     sync.WaitGroup
	links  []*link // Connections per gateway, the first gateway's first

	mu       sync.Mutex
	err      error // why the listener stopped
	draining atomic.Bool

	// instance names this process's sessions to the gateways (random):
	// a gateway tells the sessions of one Listener from another's.
	instance string
}

var _ net.Listener = (*Listener)(nil)

// Listen connects to the gateways and registers the configured names. It
// returns once they are live on one session to each gateway, or the first
// error: the agent fails fast at start (a wrong token, a refused name or an
// unreachable gateway), except when a gateway says it is busy
// (ErrGatewayBusy): then Listen logs "gateway busy, retrying" and retries
// with backoff until ctx ends. The other sessions connect in the
// background, and once started the listener reconnects on its own until
// Close. As with net.ListenConfig, ctx bounds only the initial connection,
// not the listener's life.
//
// Each accepted connection is a *Conn whose RemoteAddr is the visitor's
// own address (for HTTP(S) by Host, see Conn), so a server on the
// listener logs, limits or bans visitors by address with no PROXY
// protocol header to parse; Forward can send one to a separate backend
// (ForwardOptions.ProxyProtocol).
func Listen(ctx context.Context, cfg Config) (*Listener, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	lctx, cancel := context.WithCancel(context.Background())
	l := &Listener{
		cfg:    cfg,
		log:    cfg.Logger,
		conns:  make(chan *Conn, cfg.Backlog),
		ctx:    lctx,
		cancel: cancel,
		done:   make(chan struct{}),

		instance: crand.Text()[:16],
	}
	proxy := proxyFunc(cfg.Proxy)
	var firsts []*link
	for _, g := range cfg.gateways() {
		tc, err := cfg.tlsConfig(g, cfg.Logger)
		if err != nil {
			cancel()
			return nil, err
		}
		for i := range cfg.Connections {
			k := newLink(l, g, i, tc, proxy)
			l.links = append(l.links, k)
			if i == 0 {
				firsts = append(firsts, k)
			}
		}
	}
	// The first session to each gateway, all at once.
	sessions := make([]*linkSession, len(firsts))
	errs := make([]error, len(firsts))
	var wg sync.WaitGroup
	for i, k := range firsts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sessions[i], errs[i] = k.connectFirst(ctx)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, ls := range sessions {
			if ls != nil {
				ls.sess.Close()
			}
		}
		cancel()
		return nil, err
	}
	for i, k := range firsts {
		k.setCurrent(sessions[i])
	}
	var runs sync.WaitGroup
	for _, k := range l.links {
		var first *linkSession
		if i := slices.Index(firsts, k); i >= 0 {
			first = sessions[i]
		}
		runs.Add(1)
		go func() {
			defer runs.Done()
			k.run(first)
		}()
	}
	go func() {
		runs.Wait()
		l.wg.Wait()
		close(l.done)
	}()
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

// Drain asks the gateways to send this listener no new visitors and to
// close the idle HTTP connections they keep open to it; the connections in
// flight go on, and the listener no longer reconnects. Call it when
// stopping, before waiting for the open connections to end, then Close.
func (l *Listener) Drain() error {
	l.draining.Store(true)
	var errs []error
	for _, k := range l.links {
		if err := k.drain(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Sessions is how many of the listener's sessions to its gateways are up
// now (registered, and not yet ended by the gateway or the network), out
// of Config.Connections per gateway. It is 0 while every session is
// reconnecting: no visitor can reach the listener then.
func (l *Listener) Sessions() int {
	n := 0
	for _, k := range l.links {
		if k.live() {
			n++
		}
	}
	return n
}

// Addr is the public address of the tunnel for Config.Name on the first
// gateway.
func (l *Listener) Addr() net.Addr {
	if ts := l.Tunnels(); len(ts) > 0 {
		return ts[0].Addr
	}
	return Addr{}
}

// Tunnels lists the registered names and their public addresses on the
// first gateway.
func (l *Listener) Tunnels() []Tunnel {
	return l.tunnelsOf(l.cfg.Gateway)
}

// AllTunnels lists the registered names and their public addresses on
// every gateway, the first gateway's first.
func (l *Listener) AllTunnels() []Tunnel {
	var all []Tunnel
	for _, g := range l.cfg.gateways() {
		all = append(all, l.tunnelsOf(g)...)
	}
	return all
}

// tunnelsOf is what the first registered session to gateway was given.
func (l *Listener) tunnelsOf(gateway string) []Tunnel {
	for _, k := range l.links {
		if k.gateway != gateway {
			continue
		}
		if ts := k.tunnelList(); len(ts) > 0 {
			return ts
		}
	}
	return nil
}

// stop records why the listener stopped, if it is the first reason.
func (l *Listener) stop(err error) {
	l.mu.Lock()
	if l.err == nil {
		l.err = err
	}
	l.mu.Unlock()
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
