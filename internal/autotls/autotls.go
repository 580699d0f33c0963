// Package autotls gives the gateway publicly trusted TLS certificates,
// obtained on demand from an ACME CA (Let's Encrypt by default) through
// certmagic: a Manager orders a certificate for a host the first time a
// client asks for it, if the gateway allows that host, answers the CA's
// HTTP-01 and TLS-ALPN-01 challenges on the gateway's own listeners, keeps
// account and certificates in a directory (or a storage shared by a
// cluster of gateways), and renews them. With a DNS provider it also
// obtains, at start and through the DNS-01 challenge, a fixed list of
// names, wildcards included, and keeps them renewed.
package autotls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"go.uber.org/zap"
)

// Config configures a Manager. Zero values take the documented defaults.
type Config struct {
	// Email is the ACME account's contact address. Optional. Using a
	// Manager means agreeing to the CA's subscriber agreement.
	Email string
	// CA is the ACME directory URL. Default Let's Encrypt production, or
	// Let's Encrypt staging when Staging is set.
	CA string
	// Staging selects Let's Encrypt's staging directory when CA is empty.
	Staging bool
	// Dir is where the ACME account, the certificates and their keys are
	// stored, e.g. <data-dir>/certs. Required without Storage; created if
	// missing.
	Dir string
	// Storage, when set, holds the ACME account, the certificates, their
	// keys and the challenge tokens instead of Dir, for both on-demand
	// orders and Names: e.g. the etcd storage a gateway cluster shares,
	// where its locks make one node order what all nodes then serve.
	Storage certmagic.Storage
	// RootCAs is the trust for the CA's own HTTPS endpoint. Default the
	// system roots.
	RootCAs *x509.CertPool
	// Allow decides whether a certificate may be ordered for host, a
	// lowercase DNS name (IDNs in punycode): nil means yes. It is asked
	// before every order and renewal, never for empty, IP or wildcard
	// names, which are always refused. A certificate already obtained is
	// served until its renewal is due; a refusal then drops it. Allow runs
	// in TLS handshakes, for every unknown name: keep it fast. Required.
	Allow func(ctx context.Context, host string) error

	// HTTPAddr is the address the gateway's plain HTTP listener is bound
	// to, the listener that serves HTTPChallengeHandler: the address given
	// to net.Listen or the listener's Addr().String(). Default ":80".
	//
	// When a challenge starts, certmagic tries to bind the challenge
	// address itself and, when that address is already in use, trusts its
	// owner to answer. Naming the gateway's own bound address here makes
	// that attempt always collide, so certmagic never opens a challenge
	// listener of its own. The gateway therefore binds its listeners before
	// it serves TLS handshakes and keeps them bound while the Manager is
	// open, or disables the challenge whose listener it does not have.
	HTTPAddr string
	// HTTPSAddr is the address the gateway's HTTPS listener is bound to,
	// the listener that uses TLSConfig; see HTTPAddr. Default ":443".
	HTTPSAddr string
	// DisableHTTP01 turns the HTTP-01 challenge off, for a gateway without
	// a plain HTTP listener reachable on port 80.
	DisableHTTP01 bool
	// DisableTLSALPN01 turns the TLS-ALPN-01 challenge off, for a gateway
	// whose port 443 is reached through a proxy that terminates TLS.
	DisableTLSALPN01 bool

	// Logger receives one line per certificate obtained or failed, and
	// certmagic's own logs at Debug level. Default slog.Default().
	Logger *slog.Logger
	// OnCertificate, if set, is told of each order that ends, renewals
	// included: ok when a certificate for host was obtained, not ok when
	// the order failed. It runs on the order's goroutine: keep it fast.
	OnCertificate func(host string, ok bool)

	// DNS01, when set, answers the DNS-01 challenge by writing TXT records
	// under _acme-challenge.NAME in the name's zone. Names are ordered
	// through it, and only through it. On-demand orders keep HTTP-01 and
	// TLS-ALPN-01; when both are disabled they use DNS-01 instead.
	DNS01 certmagic.DNSProvider
	// DNSResolvers are the DNS servers (host or host:port, port 53 by
	// default) asked for the zone of a name and whether a challenge
	// record is visible yet, before the CA is told to look. Default the
	// system's resolvers, which find the zone's authoritative servers and
	// ask those.
	DNSResolvers []string
	// Names are obtained at start, in the background, through DNS-01, and
	// kept renewed, whatever Allow says: e.g. "*.example.com" and
	// "example.com". A wildcard (only as the whole first label) is allowed
	// here and nowhere else. A TLS handshake for a name one of them covers
	// (a.example.com under *.example.com) is served that certificate, and
	// nothing is ordered on demand for it. Requires DNS01.
	Names []string
}

// Defaults for Config.
const (
	DefaultHTTPAddr  = ":80"
	DefaultHTTPSAddr = ":443"
)

// Validate reports the first problem with c.
func (c *Config) Validate() error {
	if c.Dir == "" && c.Storage == nil {
		return errors.New("autotls: no storage directory")
	}
	if c.Allow == nil {
		return errors.New("autotls: no allow function")
	}
	if c.CA != "" {
		if c.Staging {
			return errors.New("autotls: both a CA and staging are set")
		}
		u, err := url.Parse(c.CA)
		if err != nil {
			return fmt.Errorf("autotls: bad CA URL: %w", err)
		}
		if u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("autotls: CA URL %q is not an https URL", c.CA)
		}
	}
	if c.Email != "" && (!strings.Contains(c.Email, "@") || strings.ContainsAny(c.Email, " \t\r\n")) {
		return fmt.Errorf("autotls: bad email %q", c.Email)
	}
	if c.DisableHTTP01 && c.DisableTLSALPN01 && c.DNS01 == nil {
		return errors.New("autotls: both challenges are disabled")
	}
	if len(c.Names) > 0 && c.DNS01 == nil {
		return errors.New("autotls: names to obtain at start need a DNS-01 provider")
	}
	if c.DNS01 != nil && len(c.Names) == 0 && !(c.DisableHTTP01 && c.DisableTLSALPN01) {
		return errors.New("autotls: the DNS-01 provider is unused: give names to obtain, or disable both HTTP-01 and TLS-ALPN-01")
	}
	for _, n := range c.Names {
		if err := checkManagedName(n); err != nil {
			return err
		}
	}
	for _, r := range c.DNSResolvers {
		host := r
		if h, _, err := net.SplitHostPort(r); err == nil {
			host = h
		}
		if host == "" || strings.ContainsAny(host, " /") {
			return fmt.Errorf("autotls: bad DNS resolver %q", r)
		}
	}
	for _, a := range []struct{ name, addr string }{{"HTTP", c.HTTPAddr}, {"HTTPS", c.HTTPSAddr}} {
		if a.addr == "" {
			continue
		}
		if _, _, err := splitAddr(a.addr); err != nil {
			return fmt.Errorf("autotls: bad %s address: %w", a.name, err)
		}
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.CA == "" {
		c.CA = certmagic.LetsEncryptProductionCA
		if c.Staging {
			c.CA = certmagic.LetsEncryptStagingCA
		}
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = DefaultHTTPAddr
	}
	if c.HTTPSAddr == "" {
		c.HTTPSAddr = DefaultHTTPSAddr
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// splitAddr splits a listener address into its host and numeric port.
func splitAddr(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	return host, port, nil
}

// ErrClosed is returned by the TLS configuration's GetCertificate after the
// Manager is closed.
var ErrClosed = errors.New("autotls: manager closed")

// Manager obtains, stores, renews and serves certificates. Its methods are
// safe for concurrent use.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	cache  *certmagic.Cache
	magic  *certmagic.Config
	issuer *certmagic.ACMEIssuer
	ctx    context.Context // ends when the manager closes
	cancel context.CancelFunc

	// managed obtains and renews Names through DNS-01; nil without
	// Names. names holds them, normalized.
	managed *certmagic.Config
	names   map[string]bool
	manages sync.WaitGroup // the goroutines obtaining Names

	mu      sync.Mutex
	closed  bool
	pending sync.WaitGroup // GetCertificate calls in progress
}

// New returns a Manager for cfg. Call Close when done with it.
func New(cfg Config) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	storage := cfg.Storage
	if storage == nil {
		if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("autotls: create storage directory: %w", err)
		}
		storage = &certmagic.FileStorage{Path: cfg.Dir}
	}
	httpHost, httpPort, err := splitAddr(cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("autotls: bad HTTP address: %w", err)
	}
	httpsHost, httpsPort, err := splitAddr(cfg.HTTPSAddr)
	if err != nil {
		return nil, fmt.Errorf("autotls: bad HTTPS address: %w", err)
	}
	// certmagic has one bind host for both challenges. The listener's own
	// host makes the collision certain, and certmagic's follow-up probe
	// (a plain connect) reaches the gateway. When the two listeners' hosts
	// differ, the wildcard host collides with any listener on the port.
	listenHost := httpsHost
	if cfg.DisableTLSALPN01 {
		listenHost = httpHost
	} else if !cfg.DisableHTTP01 && httpHost != httpsHost {
		listenHost = ""
	}

	ctx, cancel := context.WithCancel(context.Background())
	m := &Manager{cfg: cfg, log: cfg.Logger, ctx: ctx, cancel: cancel}
	zl := zap.New(newSlogCore(cfg.Logger))

	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(c certmagic.Certificate) (*certmagic.Config, error) {
			if m.managed != nil && slices.ContainsFunc(c.Names, m.isManagedName) {
				return m.managed, nil // renewed by its maintenance, through DNS-01
			}
			return m.magic, nil
		},
		Logger: zl,
	})
	// On-demand only: nothing is managed up front, and a certificate is
	// ordered during a handshake only when decide says yes. certmagic
	// renews on-demand certificates during handshakes (its maintenance
	// loop skips them); while a renewal fails, it keeps serving the
	// current certificate until that expires. Nothing here defeats that:
	// no cache capacity (no eviction), the default renewal window, and
	// decide refuses only names that can never be in the cache.
	m.magic = certmagic.New(m.cache, certmagic.Config{
		Storage:        storage,
		OnDemand:       &certmagic.OnDemandConfig{DecisionFunc: m.decide},
		OnEvent:        m.onEvent,
		ShouldEmitFunc: shouldEmit,
		Logger:         zl,
	})
	m.issuer = certmagic.NewACMEIssuer(m.magic, certmagic.ACMEIssuer{
		CA:           cfg.CA,
		Email:        cfg.Email,
		Agreed:       true,
		TrustedRoots: cfg.RootCAs,
		// The challenges are answered by the gateway's listeners through
		// HTTPChallengeHandler and TLSConfig; see Config.HTTPAddr.
		DisableHTTPChallenge:    cfg.DisableHTTP01,
		DisableTLSALPNChallenge: cfg.DisableTLSALPN01,
		ListenHost:              listenHost,
		AltHTTPPort:             httpPort,
		AltTLSALPNPort:          httpsPort,
		// Distributed solving stays on: challenge tokens also go through
		// the storage (so a node sharing it answers a challenge another
		// node's order started), and the HTTP handler answers only
		// challenges it knows. With it off, certmagic answers any
		// well-formed token "blindly", loading (or generating) an
		// account key for each such request.
		Logger: zl,
	})
	m.magic.Issuers = []certmagic.Issuer{m.issuer}

	if cfg.DNS01 != nil {
		solver := &certmagic.DNS01Solver{DNSManager: certmagic.DNSManager{
			DNSProvider: cfg.DNS01,
			Resolvers:   cfg.DNSResolvers,
			Logger:      zl,
		}}
		if cfg.DisableHTTP01 && cfg.DisableTLSALPN01 {
			// certmagic then uses DNS-01 alone for on-demand orders.
			m.issuer.DNS01Solver = solver
		}
		if len(cfg.Names) > 0 {
			m.startManaged(storage, solver, zl)
		}
	}
	return m, nil
}

// startManaged sets up the configuration that obtains and renews Names
// through DNS-01 only, and starts obtaining them. It has no on-demand
// decision: certmagic's maintenance renews its certificates on a timer.
func (m *Manager) startManaged(storage certmagic.Storage, solver *certmagic.DNS01Solver, zl *zap.Logger) {
	m.names = make(map[string]bool, len(m.cfg.Names))
	for _, n := range m.cfg.Names {
		m.names[normalizeName(n)] = true
	}
	m.managed = certmagic.New(m.cache, certmagic.Config{
		Storage:        storage,
		OnEvent:        m.onEvent,
		ShouldEmitFunc: shouldEmit,
		Logger:         zl,
	})
	m.managed.Issuers = []certmagic.Issuer{certmagic.NewACMEIssuer(m.managed, certmagic.ACMEIssuer{
		CA:           m.cfg.CA,
		Email:        m.cfg.Email,
		Agreed:       true,
		TrustedRoots: m.cfg.RootCAs,
		DNS01Solver:  solver, // DNS-01 alone: no listener needed
		Logger:       zl,
	})}
	for n := range m.names {
		m.manages.Add(1)
		go m.manage(n)
	}
}

// manage obtains the certificate for name unless storage has it, retrying
// with backoff until the manager closes, then loads it into the cache,
// where certmagic's maintenance renews it.
func (m *Manager) manage(name string) {
	defer m.manages.Done()
	m.log.Info("managing certificate through DNS-01", "host", name)
	if err := m.managed.ObtainCertAsync(m.ctx, name); err != nil {
		if m.ctx.Err() == nil {
			m.log.Error("certificate order abandoned", "host", name, "err", err)
		}
		return
	}
	if err := m.managed.ManageSync(m.ctx, []string{name}); err != nil && m.ctx.Err() == nil {
		m.log.Error("certificate not loaded", "host", name, "err", err)
	}
}

// isManagedName reports whether name is one of Names.
func (m *Manager) isManagedName(name string) bool { return m.names[normalizeName(name)] }

// covered reports whether a TLS handshake for server name is served by a
// certificate of Names: the name itself or the wildcard of its parent.
func (m *Manager) covered(name string) bool {
	if m.managed == nil {
		return false
	}
	name = normalizeName(name)
	if m.names[name] {
		return true
	}
	if _, parent, ok := strings.Cut(name, "."); ok && m.names["*."+parent] {
		return true
	}
	return false
}

func normalizeName(name string) string {
	return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(name), "."))
}

// checkManagedName refuses a name of Names that no certificate can be
// ordered for: empty, an IP address, a wildcard anywhere but as the whole
// first label, or a wildcard of a top-level name.
func checkManagedName(name string) error {
	n := normalizeName(name)
	rest := strings.TrimPrefix(n, "*.")
	switch {
	case n == "":
		return errors.New("autotls: empty name to obtain")
	case net.ParseIP(strings.Trim(n, "[]")) != nil:
		return fmt.Errorf("autotls: name to obtain %s is an IP address", name)
	case strings.Contains(rest, "*"):
		return fmt.Errorf("autotls: name to obtain %s: a wildcard is only a whole first label", name)
	case rest != n && !strings.Contains(rest, "."):
		return fmt.Errorf("autotls: name to obtain %s: a wildcard needs a domain under a top-level one", name)
	case strings.ContainsAny(n, " /:@") || strings.HasPrefix(rest, ".") || strings.Contains(n, ".."):
		return fmt.Errorf("autotls: bad name to obtain %q", name)
	}
	return nil
}

// decide is certmagic's on-demand decision: it refuses names no certificate
// can be ordered for, and asks Allow about the rest.
func (m *Manager) decide(ctx context.Context, name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := m.cfg.Allow(ctx, name); err != nil {
		return fmt.Errorf("host not allowed: %w", err)
	}
	return nil
}

// checkName refuses empty, IP and wildcard server names.
func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("autotls: no server name")
	case net.ParseIP(strings.Trim(name, "[]")) != nil:
		return fmt.Errorf("autotls: server name %s is an IP address", name)
	case strings.Contains(name, "*"):
		return fmt.Errorf("autotls: server name %s is a wildcard", name)
	}
	return nil
}

// TLSConfig returns a new TLS configuration that serves the managed
// certificates, orders missing ones on demand for hosts Allow accepts, and
// answers TLS-ALPN-01 challenges. Its NextProtos are "h2", "http/1.1" and
// "acme-tls/1"; a connection that negotiates "acme-tls/1" is the CA's
// challenge and has nothing more to say, so the server may close it after
// the handshake.
func (m *Manager) TLSConfig() *tls.Config {
	protos := []string{"h2", "http/1.1"}
	if !m.cfg.DisableTLSALPN01 {
		protos = append(protos, acmez.ACMETLS1Protocol)
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: m.getCertificate,
		NextProtos:     protos,
	}
}

func (m *Manager) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	// Refuse here what may never get a certificate, before certmagic:
	// without SNI it would look for a certificate for the local IP.
	if err := checkName(hello.ServerName); err != nil {
		return nil, err
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrClosed
	}
	m.pending.Add(1)
	m.mu.Unlock()
	defer m.pending.Done()

	ctx := hello.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(m.ctx, cancel) // Close aborts an order in progress
	defer stop()
	magic := m.magic
	if m.covered(hello.ServerName) {
		// Served from the certificates of Names only, never ordered on
		// demand.
		magic = m.managed
	}
	cert, err := magic.GetCertificateWithContext(ctx, hello)
	if err != nil {
		return nil, fmt.Errorf("autotls: %w", err)
	}
	return cert, nil
}

// HTTPChallengeHandler returns a handler that answers the CA's HTTP-01
// challenges under /.well-known/acme-challenge/ and passes every other
// request to next. It belongs on the gateway's plain HTTP listener.
func (m *Manager) HTTPChallengeHandler(next http.Handler) http.Handler {
	return m.issuer.HTTPChallengeHandler(next)
}

// Close stops certificate maintenance and aborts orders in progress, in
// TLS handshakes and for Names, and waits for them to end. Afterwards
// GetCertificate returns ErrClosed. It always returns nil.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	m.cancel()
	m.pending.Wait()
	m.manages.Wait()
	m.cache.Stop()
	return nil
}

// The certmagic events onEvent reports.
const (
	eventObtained = "cert_obtained"
	eventFailed   = "cert_failed"
	eventRevoked  = "cert_ocsp_revoked"
)

func shouldEmit(event string) bool {
	return event == eventObtained || event == eventFailed || event == eventRevoked
}

// onEvent logs one line for each certificate obtained, renewed or failed,
// and tells OnCertificate.
func (m *Manager) onEvent(ctx context.Context, event string, data map[string]any) error {
	host, _ := data["identifier"].(string)
	renewal, _ := data["renewal"].(bool)
	if f := m.cfg.OnCertificate; f != nil && (event == eventObtained || event == eventFailed) {
		f(host, event == eventObtained)
	}
	switch event {
	case eventObtained:
		if renewal {
			m.log.Info("certificate renewed", "host", host, "issuer", data["issuer"])
		} else {
			m.log.Info("certificate obtained", "host", host, "issuer", data["issuer"])
		}
	case eventFailed:
		if renewal {
			m.log.Warn("certificate renewal failed; the current certificate is served until it expires",
				"host", host, "remaining", data["remaining"], "err", data["error"])
		} else {
			m.log.Error("certificate order failed", "host", host, "err", data["error"])
		}
	case eventRevoked:
		m.log.Warn("certificate revoked; replacing it", "hosts", data["subjects"], "revoked_at", data["revoked_at"])
	}
	return nil
}
