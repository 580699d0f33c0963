// Package gateway is the embeddable diglett gateway. It is handed its
// listeners: Serve takes agents over TLS and WebSocket on TCP, ServeQUIC
// over QUIC, and an HTTP ingress (package ingress) reaches the tunnels by
// host name through Tunnel and its companions (httproutes.go). It
// authenticates agents through an Authenticator, keeps the
// registry of tunnels with their public ports, leases and quotas, tells
// its Registerer when tunnels go live and away, and forwards each visitor
// to an agent of the tunnel as a stream.
//
// Authenticator and Registerer are its extension points; the modules that
// come with diglett live in the packages under auth/ and register/.
package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/diglett/diglett/internal/accept"
	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/readiness"
	"github.com/diglett/diglett/internal/source"
	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/wstransport"
)

// Config configures a Server. Zero values take the documented defaults.
type Config struct {
	// TLS holds the gateway's certificate. Required. The server forces
	// TLS 1.3 and the diglett ALPN on a copy.
	TLS *tls.Config
	// Auth authenticates agents and authorizes names. Required. It can be
	// replaced while the server runs with SetAuthenticator.
	Auth Authenticator
	// Registerer is told when tunnels go live and away. Optional.
	Registerer Registerer
	// Registerers are further registerers, told as Registerer is. Every
	// registerer is reconciled on its own, off the agents' path: an agent
	// gets its reply before any registerer is called, and a slow or failing
	// registerer delays no agent and no other registerer. A failed Register
	// or Close is logged at Warn and retried, 1s after the first failure,
	// doubling up to 1m with jitter, until the registerer agrees with the
	// tunnel's latest state (a route that was published after its tunnel
	// went away is closed at once).
	Registerers []Registerer
	// RegisterTimeout bounds each Register call (its context ends then),
	// and how long Close waits for the registerers to take down the routes
	// of the tunnels it removes. Default 30s.
	RegisterTimeout time.Duration
	// PortMin and PortMax bound the public ports: TCP, or UDP for UDP
	// tunnels. Default 30000-40000.
	PortMin, PortMax int
	// PublicHost is the address public TCP listeners and UDP sockets bind
	// to. Default all interfaces.
	PublicHost string
	// ProxyProtocolFrom are the load balancers in front of the gateway:
	// a connection from one of them to a tunnel's public TCP port (or to
	// a listener wrapped by AcceptProxyProtocol, such as the HTTP and
	// HTTPS ports) must open with a PROXY protocol header (v1 or v2)
	// within FirstByteTimeout, and its visitor is the header's source. A
	// PROXY header from any other source is refused. Default none: no
	// header is read, and one is passed on as the visitor's data.
	ProxyProtocolFrom []netip.Prefix
	// Lease is how long a disconnected agent's names and ports stay
	// reserved for its identity. Default 60s.
	Lease time.Duration
	// HandshakeTimeout bounds TLS, hello and login. Default 10s.
	HandshakeTimeout time.Duration
	// Transport tunes agent sessions on every transport: keepalive period,
	// dead-peer detection and windows. Zero fields take the transport
	// package's defaults. MaxIncomingStreams is always 1: an agent opens
	// only its control stream, and the transport itself refuses any other.
	Transport transport.Config
	// StatusTimeout bounds how long the gateway waits for an agent to say
	// whether it reached its backend. Default 30s.
	StatusTimeout time.Duration
	// HalfCloseTimeout bounds a TCP-port visitor's connection once one
	// side has half-closed it (sent EOF): the other direction must carry
	// data at least this often, or both sides are reset. A connection open
	// both ways has no such bound. Default 60s.
	HalfCloseTimeout time.Duration
	// MaxVisitors caps the visitor connections open at once on the whole
	// gateway: TCP-port visitors and HTTP(S) connections. Beyond it a TCP
	// visitor is reset and an HTTP(S) connection closed at accept.
	// Default 65536.
	MaxVisitors int
	// MaxVisitorsPerTunnel caps, per tunnel, its TCP-port visitors plus
	// its HTTP requests in flight. Beyond it a TCP visitor is reset and an
	// HTTP request answered 503 with Retry-After. Default 16384.
	MaxVisitorsPerTunnel int
	// MaxHandshakes caps the agent connections in their handshake at once
	// (TLS, hello and login). When they are all taken, a newcomer from a
	// source holding at least two fewer than the largest holder takes the
	// place of that holder's oldest handshake; otherwise it is refused at
	// once: its agent reports "gateway busy" and retries. Default 1024.
	MaxHandshakes int
	// MaxHandshakesPerSource caps the agent connections in their
	// handshake from one source address (an IPv4 address, an IPv6 /64);
	// more are refused at once. Default 32, at most MaxHandshakes.
	MaxHandshakesPerSource int
	// FirstByteTimeout bounds how long a new TCP agent connection may
	// stay silent: its TLS ClientHello must start within it, the rest of
	// the handshake has HandshakeTimeout; it bounds the PROXY protocol
	// header of a connection from ProxyProtocolFrom too. Default 3s.
	FirstByteTimeout time.Duration
	// LoginFailureLimit is how many failed logins (wrong tokens) from one
	// source address (IPv6: per /64) within LoginFailureWindow lock that
	// source out for LoginLockout: its logins are then refused at once
	// (code too_many_failures), without asking Auth. A successful login
	// from the source forgets its failures. Default 10.
	LoginFailureLimit int
	// LoginFailureWindow is the time over which failed logins are counted.
	// Default 10m.
	LoginFailureWindow time.Duration
	// LoginLockout is how long a source that reached LoginFailureLimit is
	// refused. Default 5m.
	LoginLockout time.Duration
	// LoginFailureDelay slows down guessing: a source's first three failed
	// logins are answered at once, the next one after this delay, and each
	// further one after twice the previous delay, up to 32 times it.
	// Default 250ms (so up to 8s).
	LoginFailureDelay time.Duration
	// MaxNamesPerSession caps the names one agent session registers.
	// Default protocol.MaxNames.
	MaxNamesPerSession int
	// UDPIdleTimeout ends a UDP tunnel's flow (the datagrams of one
	// visitor address) when no datagram went either way for this long.
	// Default 60s.
	UDPIdleTimeout time.Duration
	// UDPMaxFlows caps the flows of one UDP tunnel at once; a datagram
	// from a new visitor address beyond it is dropped and counted.
	// Default 1024.
	UDPMaxFlows int
	// UDPMaxFlowsPerSource caps the flows of one UDP tunnel from one
	// visitor IP address (each of its ports is a flow). Default 64, at
	// most UDPMaxFlows.
	UDPMaxFlowsPerSource int
	// Logger receives the gateway's logs. Default slog.Default().
	Logger *slog.Logger
	// AccessLog receives one Info line per TCP visitor connection, when it
	// ends ("tcp visitor": tunnel, visitor, session, bytes_in, bytes_out,
	// duration), and one per UDP flow that reached an agent ("udp
	// visitor": the same, with datagrams_in, datagrams_out and dropped).
	// Default nil: none.
	AccessLog *slog.Logger
	// Observer is told what the gateway does, for metrics. Default none.
	Observer Observer

	// Domain is the domain of the tunnels' host names: tunnel NAME is
	// NAME.Domain for an HTTP ingress (package ingress), for the URLs
	// sent to agents and for certificates (HostAllowed). "" for none.
	Domain string
	// registerBackoff bounds the wait between two attempts of a
	// registerer: the defaults, or shorter ones in tests.
	registerBackoff [2]time.Duration

	// Hosts are further host names a tunnel answers on, beside
	// NAME.Domain (a tunnel group's own hosts): HTTP(S) requests for them
	// reach the tunnel, and certificates may be ordered for them. See
	// SetHosts.
	Hosts Hosts
	// VisitorAccess is the gateway's policy on the visitor rules agents set
	// at registration (basic auth, IP allow-lists). Default VisitorAccessAllow.
	VisitorAccess VisitorAccess

	// Quota is every identity's default quota: names and public ports
	// held (live or leased), sessions logged in at once, and certificate
	// orders per hour. An Authenticator may override it per identity
	// (Identity.Quota). Zero fields take the Default* quotas;
	// negative ones mean no limit.
	Quota Quota
	// LeaseFile, if set, is where the registry keeps every tunnel's name,
	// identity, port and lease, written atomically on each change, so that
	// after a restart the names and ports stay reserved for their owners
	// until their leases end. The CLI sets DATA_DIR/leases.json. Not with
	// Cluster: a cluster keeps its names and ports in its store.
	LeaseFile string
	// Cluster, if set, makes the gateway a node of a cluster whose nodes
	// share one namespace: a name belongs to one identity and has one
	// public port on every node (see Cluster).
	Cluster Cluster
}

// VisitorAccess is a policy on the visitor rules of tunnels.
type VisitorAccess string

// Visitor access policies.
const (
	// VisitorAccessAllow lets agents set visitor rules, or none.
	VisitorAccessAllow VisitorAccess = "allow"
	// VisitorAccessDeny refuses registrations with visitor rules, for a
	// gateway whose operator controls access elsewhere.
	VisitorAccessDeny VisitorAccess = "deny"
	// VisitorAccessRequire refuses registrations without basic auth or an
	// IP allow-list: nothing is published open to everyone.
	VisitorAccessRequire VisitorAccess = "require"
)

// Defaults for Config.
const (
	DefaultPortMin          = 30000
	DefaultPortMax          = 40000
	DefaultLease            = 60 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultStatusTimeout    = 30 * time.Second

	DefaultMaxHandshakes          = 1024
	DefaultMaxHandshakesPerSource = 32
	DefaultFirstByteTimeout       = 3 * time.Second
	DefaultLoginFailureLimit      = 10
	DefaultLoginFailureWindow     = 10 * time.Minute
	DefaultLoginLockout           = 5 * time.Minute
	DefaultLoginFailureDelay      = 250 * time.Millisecond

	DefaultUDPIdleTimeout       = 60 * time.Second
	DefaultUDPMaxFlows          = 1024
	DefaultUDPMaxFlowsPerSource = 64
)

// Validate reports the first problem with c.
func (c *Config) Validate() error {
	if c.TLS == nil || (len(c.TLS.Certificates) == 0 && c.TLS.GetCertificate == nil) {
		return errors.New("gateway: no TLS certificate")
	}
	if c.Auth == nil {
		return errors.New("gateway: no authenticator")
	}
	if c.PortMin < 0 || c.PortMax > 65535 || c.PortMin > c.PortMax {
		return fmt.Errorf("gateway: bad port range %d-%d", c.PortMin, c.PortMax)
	}
	if c.Lease < 0 {
		return errors.New("gateway: negative lease")
	}
	if c.UDPIdleTimeout < 0 || c.UDPMaxFlows < 0 || c.UDPMaxFlowsPerSource < 0 {
		return errors.New("gateway: negative UDP idle timeout or flow cap")
	}
	if err := validatePrefixes(c.ProxyProtocolFrom); err != nil {
		return err
	}
	switch c.VisitorAccess {
	case "", VisitorAccessAllow, VisitorAccessDeny, VisitorAccessRequire:
	default:
		return fmt.Errorf("gateway: visitor access policy %q: want allow, deny or require", c.VisitorAccess)
	}
	if c.Domain != "" {
		d := strings.TrimSuffix(strings.ToLower(c.Domain), ".")
		for _, label := range strings.Split(d, ".") {
			if protocol.ValidateName(label) != nil {
				return fmt.Errorf("gateway: domain %q: want a DNS name such as gateway.example.com", c.Domain)
			}
		}
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.PortMin == 0 && c.PortMax == 0 {
		c.PortMin, c.PortMax = DefaultPortMin, DefaultPortMax
	}
	if c.registerBackoff == [2]time.Duration{} {
		c.registerBackoff = [2]time.Duration{registerBackoffMin, registerBackoffMax}
	}
	if c.Lease == 0 {
		c.Lease = DefaultLease
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	c.Transport = c.Transport.WithDefaults()
	c.Transport.MaxIncomingStreams = 1
	if c.StatusTimeout <= 0 {
		c.StatusTimeout = DefaultStatusTimeout
	}
	if c.HalfCloseTimeout <= 0 {
		c.HalfCloseTimeout = DefaultHalfCloseTimeout
	}
	if c.MaxVisitors <= 0 {
		c.MaxVisitors = DefaultMaxVisitors
	}
	if c.MaxVisitorsPerTunnel <= 0 {
		c.MaxVisitorsPerTunnel = DefaultMaxVisitorsPerTunnel
	}
	if c.MaxHandshakes <= 0 {
		c.MaxHandshakes = DefaultMaxHandshakes
	}
	if c.MaxHandshakesPerSource <= 0 {
		c.MaxHandshakesPerSource = DefaultMaxHandshakesPerSource
	}
	c.MaxHandshakesPerSource = min(c.MaxHandshakesPerSource, c.MaxHandshakes)
	if c.FirstByteTimeout <= 0 {
		c.FirstByteTimeout = DefaultFirstByteTimeout
	}
	if c.LoginFailureLimit <= 0 {
		c.LoginFailureLimit = DefaultLoginFailureLimit
	}
	if c.LoginFailureWindow <= 0 {
		c.LoginFailureWindow = DefaultLoginFailureWindow
	}
	if c.LoginLockout <= 0 {
		c.LoginLockout = DefaultLoginLockout
	}
	if c.LoginFailureDelay <= 0 {
		c.LoginFailureDelay = DefaultLoginFailureDelay
	}
	if c.MaxNamesPerSession <= 0 {
		c.MaxNamesPerSession = protocol.MaxNames
	}
	if c.UDPIdleTimeout <= 0 {
		c.UDPIdleTimeout = DefaultUDPIdleTimeout
	}
	if c.UDPMaxFlows <= 0 {
		c.UDPMaxFlows = DefaultUDPMaxFlows
	}
	if c.UDPMaxFlowsPerSource <= 0 {
		c.UDPMaxFlowsPerSource = DefaultUDPMaxFlowsPerSource
	}
	c.UDPMaxFlowsPerSource = min(c.UDPMaxFlowsPerSource, c.UDPMaxFlows)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Observer == nil {
		c.Observer = NopObserver{}
	}
	if c.RegisterTimeout <= 0 {
		c.RegisterTimeout = DefaultRegisterTimeout
	}
	c.Domain = strings.TrimSuffix(strings.ToLower(c.Domain), ".")
	if c.VisitorAccess == "" {
		c.VisitorAccess = VisitorAccessAllow
	}
	c.Quota = quotaDefaults(c.Quota)
	return c
}

// Server is a diglett gateway.
type Server struct {
	cfg    Config
	tls    *tls.Config
	log    *slog.Logger
	obs    Observer // never nil
	reg    *registry
	regs   *reconciler     // the registerers
	ctx    context.Context // ends when the server closes
	cancel context.CancelFunc
	hs     *handshakes   // handshake slots
	logins *loginLimiter // failed logins by source
	nextID atomic.Uint64 // session ids
	quotas *quotas
	limits *visitorLimits

	httpPort, httpsPort atomic.Int32 // the HTTP ingress's, for URLs; see SetIngressPorts

	agentWS *wsServer // WebSocket agents, on the agent port and the HTTPS port

	auth     atomic.Pointer[authState] // the Authenticator in force; see SetAuthenticator
	hosts    atomic.Pointer[Hosts]     // further hosts of tunnels; see SetHosts
	reloadMu sync.Mutex                // serializes SetAuthenticator

	mu        sync.Mutex
	listeners map[io.Closer]struct{} // agent listeners, TCP and QUIC
	sessions  map[*session]struct{}
	closed    bool
	wg        sync.WaitGroup // session and listener goroutines
	visitors  sync.WaitGroup // visitor connections being relayed

	publishAll atomic.Bool // see SetPublishAll (remote.go)

	// Idle sessions and ports (idle.go); idle and idleFailed under mu.
	idle       *readiness.Poller
	idleFailed bool
	parkAfter  time.Duration // defaultParkAfter; tests set it before Serve
}

// New returns a server for cfg.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	tc := cfg.TLS.Clone()
	tc.MinVersion = tls.VersionTLS13
	tc.NextProtos = []string{protocol.ALPN, wstransport.ALPN}
	// Full-size records from the first, as the agent sends them: a TLS
	// connection keeps its record buffer for its life, and records that
	// grow a little at a time make it double past one record.
	tc.DynamicRecordSizingDisabled = true
	hosts, err := checkHosts(cfg.Domain, cfg.Hosts)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:       cfg,
		tls:       tc,
		log:       cfg.Logger,
		obs:       cfg.Observer,
		ctx:       ctx,
		cancel:    cancel,
		hs:        newHandshakes(cfg.MaxHandshakes, cfg.MaxHandshakesPerSource, cfg.Logger),
		logins:    newLoginLimiter(cfg, cfg.Logger),
		listeners: make(map[io.Closer]struct{}),
		sessions:  make(map[*session]struct{}),
		parkAfter: defaultParkAfter,
	}
	s.auth.Store(&authState{a: cfg.Auth})
	s.hosts.Store(&hosts)
	s.quotas = newQuotas()
	s.regs = newReconciler(ctx, cfg)
	s.reg = newRegistry(s)
	s.limits = newVisitorLimits(cfg)
	if cfg.LeaseFile != "" && cfg.Cluster != nil {
		cancel()
		return nil, errors.New("gateway: a lease file and a cluster exclude each other: a cluster keeps its names in its store")
	}
	if cfg.LeaseFile != "" {
		if err := s.reg.keepLeases(time.Now()); err != nil {
			cancel()
			return nil, err
		}
	}
	s.startAgentWS()
	return s, nil
}

// ErrServerClosed is returned by Serve after Close or Shutdown.
var ErrServerClosed = errors.New("gateway: server closed")

// Serve accepts agent connections on ln until the server is closed. It
// always closes ln.
func (s *Server) Serve(ln net.Listener) error {
	if !s.track(ln) {
		return ErrServerClosed
	}
	defer s.untrack(ln)
	for {
		conn, err := accept.Next(ln, s.ctx.Done(), s.log, "accept agent connection")
		if err != nil {
			if s.shuttingDown() || s.ctx.Err() != nil {
				return ErrServerClosed
			}
			return fmt.Errorf("gateway: accept: %w", err)
		}
		slot := s.hs.acquire(source.OfAddr(conn.RemoteAddr()))
		if slot == nil {
			refuseBusy(conn)
			continue
		}
		if !s.goTracked(func() { s.serveConn(conn, slot) }) {
			slot.release()
			conn.Close()
			return ErrServerClosed
		}
	}
}

// enter counts a goroutine that Close waits for, unless the server is
// closed. The count is taken under s.mu, where Close marks the server
// closed before it waits: a count taken from zero while Close waits
// would be a misuse of the group, and the goroutine would outlive Close.
func (s *Server) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

// goTracked runs f in a goroutine that Close waits for; after Close it
// runs nothing and returns false.
func (s *Server) goTracked(f func()) bool {
	if !s.enter() {
		return false
	}
	go func() {
		defer s.wg.Done()
		f()
	}()
	return true
}

// track records an agent listener, to be closed with the server; when the
// server is already closed it closes ln and returns false.
func (s *Server) track(ln io.Closer) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		ln.Close()
		return false
	}
	s.listeners[ln] = struct{}{}
	return true
}

// untrack forgets and closes a listener recorded by track.
func (s *Server) untrack(ln io.Closer) {
	s.mu.Lock()
	delete(s.listeners, ln)
	s.mu.Unlock()
	ln.Close()
}

// Close stops the server at once: listeners, public ports and sessions.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	sessions := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()
	s.cancel()
	s.agentWS.close()
	for _, ss := range sessions {
		ss.close()
	}
	s.reg.close()
	if !s.regs.wait(s.cfg.RegisterTimeout) {
		s.log.Warn("registerers still busy at close, not waiting longer", "waited", s.cfg.RegisterTimeout)
	}
	s.wg.Wait()
	s.visitors.Wait()
	s.hs.summary.Close()
	s.logins.close()
	s.closePoller()
	return nil
}

// Shutdown stops accepting agents and visitors, waits for the visitor
// connections in flight to end or for ctx, then closes everything.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()
	s.reg.closeListeners()
	done := make(chan struct{})
	go func() {
		s.visitors.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	s.Close()
	return err
}

func (s *Server) shuttingDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Server) addSession(ss *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.sessions[ss] = struct{}{}
	return true
}

func (s *Server) removeSession(ss *session) {
	s.mu.Lock()
	delete(s.sessions, ss)
	s.mu.Unlock()
}
