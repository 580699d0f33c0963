// Package gateway is the public side of diglett: it accepts agent sessions,
// authenticates them, keeps the registry of tunnels and their leases, and
// forwards public TCP connections to agents as streams.
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

	"github.com/diglett/diglett/internal/auth"
	"github.com/diglett/diglett/internal/expose"
	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/wstransport"
)

// Config configures a Server. Zero values take the documented defaults.
type Config struct {
	// TLS holds the gateway's certificate. Required. The server forces
	// TLS 1.3 and the diglett ALPN on a copy.
	TLS *tls.Config
	// Auth authenticates agents and authorizes names. Required.
	Auth auth.Authenticator
	// Registerer is told when tunnels go live and away. Optional.
	Registerer expose.Registerer
	// PortMin and PortMax bound the public TCP ports. Default 30000-40000.
	PortMin, PortMax int
	// PublicHost is the address public TCP listeners bind to. Default all
	// interfaces.
	PublicHost string
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
	// MaxHandshakes caps the agent connections in their handshake at once;
	// more are closed at once. Default 1024.
	MaxHandshakes int
	// MaxNamesPerSession caps the names one agent session registers.
	// Default protocol.MaxNames.
	MaxNamesPerSession int
	// Logger receives the gateway's logs. Default slog.Default().
	Logger *slog.Logger

	// Domain enables the HTTP ingress: a request for NAME.Domain goes to
	// tunnel NAME (see ServeHTTPIngress and ServeHTTPSIngress).
	Domain string
	// TrustedProxies are the peers whose X-Forwarded-* and Forwarded
	// headers are kept (and whose X-Forwarded-For names the visitor);
	// those headers from anyone else are dropped.
	TrustedProxies []netip.Prefix
	// ResponseTimeout bounds how long a backend may take to start its
	// response once it has the whole request; visitors then get 504.
	// Default 60s.
	ResponseTimeout time.Duration
	// ReadHeaderTimeout bounds a visitor's TLS handshake and request
	// headers. Default 10s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a visitor's keep-alive connection after this long
	// without a request. Default 120s.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a visitor's request headers. Default 64 KiB.
	MaxHeaderBytes int
	// VisitorAccess is the gateway's policy on the visitor rules agents set
	// at registration (basic auth, IP allow-lists). Default VisitorAccessAllow.
	VisitorAccess VisitorAccess
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
	if c.MaxHandshakes <= 0 {
		c.MaxHandshakes = 1024
	}
	if c.MaxNamesPerSession <= 0 {
		c.MaxNamesPerSession = protocol.MaxNames
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Domain = strings.TrimSuffix(strings.ToLower(c.Domain), ".")
	if c.ResponseTimeout <= 0 {
		c.ResponseTimeout = DefaultResponseTimeout
	}
	if c.ReadHeaderTimeout <= 0 {
		c.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if c.VisitorAccess == "" {
		c.VisitorAccess = VisitorAccessAllow
	}
	return c
}

// Server is a diglett gateway.
type Server struct {
	cfg    Config
	tls    *tls.Config
	log    *slog.Logger
	reg    *registry
	ctx    context.Context // ends when the server closes
	cancel context.CancelFunc
	hs     chan struct{} // handshake slots
	nextID atomic.Uint64 // session ids
	http   *ingress

	agentWS *wsServer // WebSocket agents, on the agent port and the HTTPS port

	mu        sync.Mutex
	listeners map[io.Closer]struct{} // agent listeners, TCP and QUIC
	sessions  map[*session]struct{}
	closed    bool
	wg        sync.WaitGroup // session and listener goroutines
	visitors  sync.WaitGroup // visitor connections being relayed
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
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:       cfg,
		tls:       tc,
		log:       cfg.Logger,
		ctx:       ctx,
		cancel:    cancel,
		hs:        make(chan struct{}, cfg.MaxHandshakes),
		listeners: make(map[io.Closer]struct{}),
		sessions:  make(map[*session]struct{}),
	}
	s.reg = newRegistry(s)
	s.http = newIngress(s)
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
		conn, err := accept(ln, s.ctx.Done(), s.log, "accept agent connection")
		if err != nil {
			if s.shuttingDown() || s.ctx.Err() != nil {
				return ErrServerClosed
			}
			return fmt.Errorf("gateway: accept: %w", err)
		}
		release, ok := s.trySlot()
		if !ok {
			s.log.Debug("agent connection refused: too many handshakes in progress", "agent", conn.RemoteAddr())
			conn.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveConn(conn, release)
		}()
	}
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

// accept waits for ln's next connection. Accept errors that are timeouts
// (the process is out of file descriptors, say) are retried after a pause
// that doubles up to a second, until done is closed; any other error is
// returned.
func accept(ln net.Listener, done <-chan struct{}, log *slog.Logger, what string) (net.Conn, error) {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err == nil {
			return c, nil
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return nil, err
		}
		backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
		log.Warn(what, "err", err, "retry_in", backoff)
		select {
		case <-time.After(backoff):
		case <-done:
			return nil, err
		}
	}
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
	s.http.shutdown(nil)
	s.agentWS.close()
	for _, ss := range sessions {
		ss.close()
	}
	s.reg.close()
	s.wg.Wait()
	s.visitors.Wait()
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
	s.http.shutdown(ctx)
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
