// Package traefik publishes tunnels to a traefik reverse proxy in front
// of the gateway, in the proxy's dynamic configuration format, two ways
// at once:
//
//   - the file provider: one file per tunnel, diglett-NAME.yaml, in a
//     directory the proxy watches, written atomically when the tunnel goes
//     live and deleted when it goes away;
//   - the http provider: the whole current configuration of every tunnel
//     as JSON, from Handler (or the module's own loopback listener), for
//     a proxy that polls it.
//
// Each tunnel gets a router diglett-NAME on its host names (an HTTP
// router on Host, or with TLSPassthrough a TCP router on HostSNI) and a
// service diglett-NAME that sends to the tunnel's public port on the
// gateway.
package traefik

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/protocol"
)

// DefaultUpstream is the host the proxy reaches the gateway's tunnel
// ports on when Config.Upstream is empty: the proxy runs on the gateway's
// host.
const DefaultUpstream = "127.0.0.1"

// ProviderPath is where the module's own listener (Config.HTTPProvider)
// serves the http provider's JSON.
const ProviderPath = "/traefik"

// Config configures a Registerer.
type Config struct {
	// Dir is the directory the proxy's file provider watches (required,
	// absolute). It need not exist yet: writing to a missing directory
	// fails, and the gateway retries.
	Dir string
	// EntryPoints are the proxy's entry points the routers take traffic
	// from. Empty: the proxy's default entry points (all of them, unless
	// some are marked as default in its static configuration).
	EntryPoints []string
	// Middlewares are applied by each router, in order (names the proxy
	// knows, such as "auth@file"; TCP middlewares with TLSPassthrough).
	// Empty: none.
	Middlewares []string
	// CertResolver is the certificate resolver of each HTTP router: the
	// proxy then serves it over TLS with a certificate it obtains. Empty:
	// no tls section (plain HTTP, or TLS as the entry point says).
	CertResolver string
	// Upstream is the host the proxy reaches the gateway's tunnel ports
	// on. Empty: DefaultUpstream.
	Upstream string
	// TLSPassthrough publishes each tunnel as a TCP router on the TLS
	// server name (HostSNI) that passes TLS through untouched to the
	// tunnel, for backends that terminate TLS themselves, instead of an
	// HTTP router.
	TLSPassthrough bool
	// HTTPProvider is a loopback address (host:port) where the module
	// serves the http provider's JSON at ProviderPath, from its first
	// Register or Sweep until Close. Empty: no listener of its own (Handler
	// can still be mounted elsewhere).
	HTTPProvider string
	// Logger is where the module logs. Default: slog.Default().
	Logger *slog.Logger
}

// Validate reports what is wrong with c.
func (c *Config) Validate() error {
	var errs []error
	if c.Dir == "" {
		errs = append(errs, errors.New("no dir: give the directory the proxy's file provider watches"))
	} else if !filepath.IsAbs(c.Dir) {
		errs = append(errs, fmt.Errorf("dir %q: want an absolute path", c.Dir))
	}
	for _, l := range []struct {
		key   string
		names []string
	}{{"entry_points", c.EntryPoints}, {"middlewares", c.Middlewares}} {
		for _, n := range l.names {
			if err := checkName(n); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", l.key, err))
			}
		}
	}
	if c.CertResolver != "" {
		if err := checkName(c.CertResolver); err != nil {
			errs = append(errs, fmt.Errorf("cert_resolver: %w", err))
		}
		if c.TLSPassthrough {
			errs = append(errs, errors.New("cert_resolver: has no use with tls_passthrough, where the proxy does not terminate TLS"))
		}
	}
	if c.Upstream != "" && (strings.ContainsAny(c.Upstream, "/ \t@") || net.ParseIP(c.Upstream) == nil && gateway.ValidateHost(c.Upstream) != nil && protocol.ValidateName(c.Upstream) != nil) {
		errs = append(errs, fmt.Errorf("upstream %q: want a host name or an IP address, with no port", c.Upstream))
	}
	if c.HTTPProvider != "" {
		if err := checkLoopback(c.HTTPProvider); err != nil {
			errs = append(errs, fmt.Errorf("http_provider: %w", err))
		}
	}
	return errors.Join(errs...)
}

// checkName checks the name of an entry point, middleware or resolver.
func checkName(n string) error {
	if n == "" {
		return errors.New("empty name")
	}
	for _, r := range n {
		if r <= ' ' || r == 0x7f || r == '`' || r == '"' {
			return fmt.Errorf("%q: no spaces, quotes or control characters in a name", n)
		}
	}
	return nil
}

// checkLoopback checks that addr is host:port on a loopback host.
func checkLoopback(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want a loopback address such as 127.0.0.1:8081", addr)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("%q: bad port", addr)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("%q: want a loopback address such as 127.0.0.1:8081 (the JSON is not for the public)", addr)
	}
	return nil
}

func (c *Config) upstream() string {
	if c.Upstream == "" {
		return DefaultUpstream
	}
	return c.Upstream
}

// Registerer publishes routes to the proxy. Make one with New; it is safe
// for concurrent use. Close it once its routes are closed, to stop its
// listener.
type Registerer struct {
	cfg Config
	log *slog.Logger

	noHostsOnce sync.Once

	mu       sync.Mutex
	routes   map[string]*entry // published, by tunnel name
	provider *provider         // the listener of Config.HTTPProvider; nil until first use
	closed   bool

	json atomic.Pointer[snapshot] // the http provider's answer
}

// entry is one published tunnel.
type entry struct {
	name string
	conf dynamic
}

var (
	_ gateway.Registerer = (*Registerer)(nil)
	_ gateway.Sweeper    = (*Registerer)(nil)
	_ io.Closer          = (*Registerer)(nil)
	_ fmt.Stringer       = (*Registerer)(nil)
)

// New returns a Registerer for cfg. It neither touches the directory nor
// listens: that happens at the first Register or Sweep.
func New(cfg Config) (*Registerer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.EntryPoints = clone(cfg.EntryPoints)
	cfg.Middlewares = clone(cfg.Middlewares)
	r := &Registerer{cfg: cfg, log: cfg.Logger, routes: map[string]*entry{}}
	if r.log == nil {
		r.log = slog.Default()
	}
	r.log = r.log.With("registerer", "traefik")
	r.publishLocked()
	return r, nil
}

func clone(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return append([]string(nil), s...)
}

// String names the registerer in the gateway's logs.
func (r *Registerer) String() string { return "traefik" }

// Register writes the tunnel's file and adds it to the http provider's
// configuration. A route with no host names (the gateway has no domain
// and the tunnel no group hosts) cannot be routed by name: nothing is
// published for it.
func (r *Registerer) Register(ctx context.Context, rt gateway.Route) (io.Closer, error) {
	if err := protocol.ValidateName(rt.Name); err != nil {
		return nil, fmt.Errorf("tunnel %w", err)
	}
	for _, h := range rt.Hosts {
		if err := gateway.ValidateHost(h); err != nil {
			return nil, err
		}
	}
	if rt.Port <= 0 || rt.Port > 65535 {
		return nil, fmt.Errorf("tunnel %s: bad port %d", rt.Name, rt.Port)
	}
	if err := r.startProvider(); err != nil {
		return nil, err
	}
	if len(rt.Hosts) == 0 {
		logged := false
		r.noHostsOnce.Do(func() {
			logged = true
			r.log.Info("tunnels without host names are not published: give the gateway a domain, or the tunnel's group hosts", "tunnel", rt.Name)
		})
		if !logged {
			r.log.Debug("tunnel without host names not published", "tunnel", rt.Name)
		}
		return nopCloser{}, nil
	}
	e := &entry{name: rt.Name, conf: r.cfg.tunnelConfig(rt.Name, rt.Hosts, rt.Port)}
	data, err := render(rt.Name, e.conf)
	if err != nil {
		return nil, fmt.Errorf("tunnel %s: %w", rt.Name, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if err := writeFile(r.cfg.Dir, fileName(rt.Name), data); err != nil {
		return nil, fmt.Errorf("write %s: %w", fileName(rt.Name), err)
	}
	// A newer route of the same name replaces an older one, whose Close
	// then leaves it alone.
	r.routes[rt.Name] = e
	r.publishLocked()
	return &closer{r: r, e: e}, nil
}

// closer unregisters one route.
type closer struct {
	r *Registerer
	e *entry
}

var _ gateway.ContextCloser = (*closer)(nil)

func (c *closer) Close() error { return c.CloseContext(context.Background()) }

// CloseContext deletes the tunnel's file and takes it out of the http
// provider's configuration. A route already gone, or replaced by a newer
// one of the same name, is left alone.
func (c *closer) CloseContext(ctx context.Context) error {
	r := c.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.routes[c.e.name] != c.e {
		return nil
	}
	if err := removeFile(r.cfg.Dir, fileName(c.e.name)); err != nil {
		return fmt.Errorf("remove %s: %w", fileName(c.e.name), err)
	}
	delete(r.routes, c.e.name)
	r.publishLocked()
	return nil
}

// Sweep deletes the files an earlier life of the gateway left in the
// directory: every regular file named as this module names its files
// (diglett-NAME.yaml, and temporary files of a write cut short), except
// those of the routes this Registerer publishes now. Other files are never
// touched.
func (r *Registerer) Sweep(ctx context.Context) error {
	if err := r.startProvider(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	ents, err := readDir(r.cfg.Dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, de := range ents {
		base := de.Name()
		if !de.Type().IsRegular() || !isOurs(base) {
			continue
		}
		if m := ourFile.FindStringSubmatch(base); m != nil && r.routes[m[1]] != nil {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := removeFile(r.cfg.Dir, base); err != nil {
			errs = append(errs, fmt.Errorf("remove stale %s: %w", base, err))
			continue
		}
		r.log.Info("removed a stale file", "file", base, "dir", r.cfg.Dir)
	}
	return errors.Join(errs...)
}

// Close stops the module's http provider listener, if it runs. The files
// of routes still published stay (the gateway closes routes first; Sweep
// clears what a crash left).
func (r *Registerer) Close() error {
	r.mu.Lock()
	p := r.provider
	r.closed = true
	r.provider = nil
	r.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.close()
}

// startProvider starts the listener of Config.HTTPProvider if it is set
// and not started yet.
func (r *Registerer) startProvider() error {
	if r.cfg.HTTPProvider == "" {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errors.New("registerer closed")
	}
	if r.provider != nil {
		return nil
	}
	p, err := listenProvider(r.cfg.HTTPProvider, r.Handler(), r.log)
	if err != nil {
		return err
	}
	r.provider = p
	r.log.Info("serving the http provider's configuration", "url", "http://"+p.addr()+ProviderPath)
	return nil
}

// ProviderAddr is the address the module's own http provider listener is
// bound to; "" while it does not run.
func (r *Registerer) ProviderAddr() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.provider == nil {
		return ""
	}
	return r.provider.addr()
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }
