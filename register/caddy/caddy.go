// Package caddy is the registerer that publishes tunnels through a caddy
// in front of the gateway, over caddy's admin API: one route per tunnel,
// identified by "@id": PREFIX+NAME, matching the tunnel's hosts and
// proxying to its public port on the gateway. Routes caddy lost (it was
// restarted empty) are put back by a periodic check, and Sweep removes
// the routes an earlier life of the gateway left behind.
package caddy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/diglett/diglett/gateway"
)

// Defaults of Config's zero fields.
const (
	DefaultAdmin    = "http://127.0.0.1:2019"
	DefaultServer   = "srv0"
	DefaultUpstream = "127.0.0.1"
	DefaultIDPrefix = "diglett-"
	DefaultCheck    = 10 * time.Second
)

// DefaultListen is where a server the module creates listens when
// Config.Listen is empty.
var DefaultListen = []string{":80"}

// Bounds of one exchange with the admin API.
const (
	requestTimeout = 10 * time.Second
	maxBody        = 16 << 20 // a GET of the server's routes
	maxErrorLine   = 200      // what an error quotes of caddy's answer
)

// ErrClosed is returned by Register once the Registerer is closed.
var ErrClosed = errors.New("caddy registerer closed")

// Config configures a Registerer. Zero fields take the defaults above.
type Config struct {
	// Admin is the base URL of caddy's admin API. Default DefaultAdmin.
	Admin string
	// Server is the name of the HTTP server (apps.http.servers.NAME) the
	// routes are added to. Default DefaultServer.
	Server string
	// Listen is where the server listens when the module creates it
	// (it does not exist yet); an existing server is left as it is.
	// Default DefaultListen. Caddy applies its own rules to it: a server
	// on a port other than the HTTP app's http_port gets automatic HTTPS.
	Listen []string
	// Upstream is the host caddy reaches the gateway's public ports on.
	// Default DefaultUpstream.
	Upstream string
	// IDPrefix starts the "@id" of every route the module publishes,
	// and tells Sweep which routes are ours. Default DefaultIDPrefix.
	IDPrefix string
	// Check is how often the routes published are checked and those
	// caddy lost put back (by a goroutine that runs while routes are
	// published, and ends with Close). Default DefaultCheck; negative:
	// never.
	Check time.Duration
	// Logger is where the module logs. Default slog.Default().
	Logger *slog.Logger
	// Client makes the requests to the admin API. Default: a client of
	// its own with a 10s timeout and no kept-alive connections (caddy
	// restarts its admin server on config changes).
	Client *http.Client
}

// Registerer publishes routes to caddy. It is safe for concurrent use.
type Registerer struct {
	admin    *url.URL
	server   string
	listen   []string
	upstream string
	prefix   string
	check    time.Duration
	log      *slog.Logger
	client   *http.Client

	// sem serializes the changes made to caddy's configuration, and the
	// check of one route with its restoration.
	sem chan struct{}

	mu        sync.Mutex
	published map[string]published // by @id
	gen       uint64               // numbers the routes published
	closed    bool
	stop      context.CancelFunc // ends the check; nil while it does not run
	done      chan struct{}      // closed when the check has ended
}

// published is a route the module put in caddy and keeps there.
type published struct {
	gen   uint64
	route gateway.Route
	obj   route
}

var (
	_ gateway.Sweeper       = (*Registerer)(nil)
	_ io.Closer             = (*Registerer)(nil)
	_ gateway.ContextCloser = (*routeCloser)(nil)
)

// New checks cfg and returns a Registerer. It does not contact caddy:
// that happens on the first Register or Sweep.
func New(cfg Config) (*Registerer, error) {
	if cfg.Admin == "" {
		cfg.Admin = DefaultAdmin
	}
	admin, err := url.Parse(strings.TrimSuffix(cfg.Admin, "/"))
	if err != nil || (admin.Scheme != "http" && admin.Scheme != "https") || admin.Host == "" {
		return nil, fmt.Errorf("admin %q: want the admin API's URL, such as %s", cfg.Admin, DefaultAdmin)
	}
	if cfg.Server == "" {
		cfg.Server = DefaultServer
	}
	if strings.ContainsAny(cfg.Server, "/?#") {
		return nil, fmt.Errorf("server %q: want a server's name, such as %s", cfg.Server, DefaultServer)
	}
	if len(cfg.Listen) == 0 {
		cfg.Listen = DefaultListen
	}
	if cfg.Upstream == "" {
		cfg.Upstream = DefaultUpstream
	}
	if cfg.IDPrefix == "" {
		cfg.IDPrefix = DefaultIDPrefix
	}
	if strings.ContainsAny(cfg.IDPrefix, "/?#") {
		return nil, fmt.Errorf("id_prefix %q: no /, ? or # in an id", cfg.IDPrefix)
	}
	if cfg.Check == 0 {
		cfg.Check = DefaultCheck
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{
			Timeout:   requestTimeout,
			Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
		}
	}
	return &Registerer{
		admin:     admin,
		server:    cfg.Server,
		listen:    append([]string(nil), cfg.Listen...),
		upstream:  cfg.Upstream,
		prefix:    cfg.IDPrefix,
		check:     cfg.Check,
		log:       cfg.Logger,
		client:    cfg.Client,
		sem:       make(chan struct{}, 1),
		published: make(map[string]published),
	}, nil
}

// String is what the gateway's logs call the registerer.
func (c *Registerer) String() string { return "caddy " + c.admin.String() }

// ID is the "@id" of the route of the tunnel name.
func (c *Registerer) ID(name string) string { return c.prefix + name }

// route is a route of caddy's HTTP app, as the module writes it.
type route struct {
	ID       string    `json:"@id"`
	Match    []match   `json:"match"`
	Handle   []handler `json:"handle"`
	Terminal bool      `json:"terminal"`
}

type match struct {
	Host []string `json:"host"`
}

type handler struct {
	Handler   string     `json:"handler"`
	Upstreams []upstream `json:"upstreams"`
}

type upstream struct {
	Dial string `json:"dial"`
}

// server is a server of caddy's HTTP app, as the module creates it.
type server struct {
	Listen []string `json:"listen"`
	Routes []route  `json:"routes"`
}

// Register publishes r: its route is added to the server, or replaces the
// route of the same @id. A route without hosts publishes nothing.
func (c *Registerer) Register(ctx context.Context, r gateway.Route) (io.Closer, error) {
	id := c.ID(r.Name)
	if len(r.Hosts) == 0 {
		c.log.InfoContext(ctx, "caddy: tunnel has no host name, no route published (give the gateway a domain)", "tunnel", r.Name, "id", id)
		return nopCloser{}, nil
	}
	obj := route{
		ID:       id,
		Match:    []match{{Host: append([]string(nil), r.Hosts...)}},
		Handle:   []handler{{Handler: "reverse_proxy", Upstreams: []upstream{{Dial: net.JoinHostPort(c.upstream, strconv.Itoa(r.Port))}}}},
		Terminal: true,
	}
	if err := c.lock(ctx); err != nil {
		return nil, err
	}
	defer c.unlock()
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	if err := c.put(ctx, obj); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	c.gen++
	c.published[id] = published{gen: c.gen, route: r, obj: obj}
	c.startCheck()
	return &routeCloser{c: c, id: id, gen: c.gen}, nil
}

// put adds obj to caddy, or replaces the route of the same @id; it
// creates the server when it is missing. A new route goes first in the
// server's list: it matches only the tunnel's hosts, and a catch-all
// route of the operator's, last, must not hide it. Called under sem.
func (c *Registerer) put(ctx context.Context, obj route) error {
	status, _, err := c.do(ctx, http.MethodPatch, c.idPath(obj.ID), obj, http.StatusNotFound)
	if err != nil || status != http.StatusNotFound {
		return err
	}
	routes := c.serverPath() + "/routes"
	status, body, err := c.do(ctx, http.MethodGet, routes, nil, http.StatusBadRequest)
	if err != nil {
		return err
	}
	if status == http.StatusBadRequest {
		if !missingPath(body) {
			return answerError(http.MethodGet, routes, status, body)
		}
		_, _, err = c.do(ctx, http.MethodPut, c.serverPath(), server{Listen: c.listen, Routes: []route{obj}})
		return err
	}
	// The admin API inserts at an index only into a list that has it,
	// and creates a list only where there is none.
	switch list := strings.TrimSpace(string(body)); {
	case list == "null":
		_, _, err = c.do(ctx, http.MethodPut, routes, []route{obj})
	case list == "[]":
		_, _, err = c.do(ctx, http.MethodPost, routes, obj)
	default:
		_, _, err = c.do(ctx, http.MethodPut, routes+"/0", obj)
	}
	return err
}

// missingPath reports whether caddy's answer says a path of the
// configuration does not exist.
func missingPath(body []byte) bool {
	return strings.Contains(string(body), "invalid traversal path")
}

// Sweep removes from the server every route whose @id has the module's
// prefix: what an earlier life of the gateway published.
func (c *Registerer) Sweep(ctx context.Context) error {
	if err := c.lock(ctx); err != nil {
		return err
	}
	defer c.unlock()
	status, body, err := c.do(ctx, http.MethodGet, c.serverPath()+"/routes", nil, http.StatusBadRequest)
	if err != nil {
		return err
	}
	if status == http.StatusBadRequest {
		if missingPath(body) {
			return nil // no server, no routes
		}
		return answerError(http.MethodGet, c.serverPath()+"/routes", status, body)
	}
	var routes []struct {
		ID string `json:"@id"`
	}
	if err := json.Unmarshal(body, &routes); err != nil {
		return fmt.Errorf("caddy admin: routes of server %s: %w", c.server, err)
	}
	for _, r := range routes {
		if !strings.HasPrefix(r.ID, c.prefix) {
			continue
		}
		c.mu.Lock()
		_, live := c.published[r.ID]
		c.mu.Unlock()
		if live {
			continue // published by this very registerer
		}
		if err := c.delete(ctx, r.ID); err != nil {
			return err
		}
		c.log.InfoContext(ctx, "caddy: stale route removed", "id", r.ID)
	}
	return nil
}

// delete removes the route id from caddy; a route already gone is no
// error.
func (c *Registerer) delete(ctx context.Context, id string) error {
	_, _, err := c.do(ctx, http.MethodDelete, c.idPath(id), nil, http.StatusNotFound)
	return err
}

// routeCloser unpublishes one route.
type routeCloser struct {
	c   *Registerer
	id  string
	gen uint64
}

// Close is CloseContext bounded by the client's timeout.
func (rc *routeCloser) Close() error { return rc.CloseContext(context.Background()) }

// CloseContext deletes the route from caddy and stops keeping it there.
// A route already gone is no error; a route of the same name registered
// since is left alone.
func (rc *routeCloser) CloseContext(ctx context.Context) error {
	c := rc.c
	if err := c.lock(ctx); err != nil {
		return err
	}
	defer c.unlock()
	c.mu.Lock()
	p, ok := c.published[rc.id]
	if ok && p.gen != rc.gen {
		// A late Close of an older route: the route in caddy is a newer
		// one of the same name, which stays.
		c.mu.Unlock()
		return nil
	}
	delete(c.published, rc.id)
	if len(c.published) == 0 {
		// Nothing left to check: the check ends (not waited for, as it
		// may be waiting for sem), and starts again with the next route.
		c.stopCheckLocked()
	}
	c.mu.Unlock()
	return c.delete(ctx, rc.id)
}

type nopCloser struct{}

func (nopCloser) Close() error                       { return nil }
func (nopCloser) CloseContext(context.Context) error { return nil }

// Close stops the check of the routes, and waits for it to end. Routes
// stay in caddy: closing each route's Closer removes it. Register fails
// after Close.
func (c *Registerer) Close() error {
	c.mu.Lock()
	c.closed = true
	done := c.stopCheckLocked()
	c.mu.Unlock()
	if done != nil {
		<-done
	}
	return nil
}

// startCheck starts the check of the routes unless it runs. Called
// under mu.
func (c *Registerer) startCheck() {
	if c.stop != nil || c.check < 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	c.stop, c.done = cancel, done
	go c.checkLoop(ctx, done)
}

// stopCheckLocked stops the check, if it runs, and returns the channel
// closed once it has ended. Called under mu.
func (c *Registerer) stopCheckLocked() chan struct{} {
	if c.stop == nil {
		return nil
	}
	c.stop()
	done := c.done
	c.stop, c.done = nil, nil
	return done
}

// checkLoop checks the routes every c.check until ctx ends.
func (c *Registerer) checkLoop(ctx context.Context, done chan struct{}) {
	defer close(done)
	ticker := time.NewTicker(c.check)
	defer ticker.Stop()
	down := false // the last check could not reach caddy
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		err := c.checkRoutes(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil && !down:
			c.log.Warn("caddy: cannot check the routes", "admin", c.admin.String(), "err", err)
		case err == nil && down:
			c.log.Info("caddy: routes checked again", "admin", c.admin.String())
		}
		down = err != nil
	}
}

// checkRoutes checks every route published, and puts back those caddy
// lost. It stops at the first error.
func (c *Registerer) checkRoutes(ctx context.Context) error {
	c.mu.Lock()
	ids := make([]string, 0, len(c.published))
	for id := range c.published {
		ids = append(ids, id)
	}
	c.mu.Unlock()
	for _, id := range ids {
		if err := c.checkRoute(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

// checkRoute checks the route id, and puts it back if caddy lost it.
func (c *Registerer) checkRoute(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	if err := c.lock(ctx); err != nil {
		return err
	}
	defer c.unlock()
	c.mu.Lock()
	p, ok := c.published[id]
	c.mu.Unlock()
	if !ok {
		return nil // closed meanwhile
	}
	status, _, err := c.do(ctx, http.MethodGet, c.idPath(id), nil, http.StatusNotFound)
	if err != nil || status != http.StatusNotFound {
		return err
	}
	if err := c.put(ctx, p.obj); err != nil {
		return err
	}
	c.log.Warn("route restored", "registerer", "caddy", "tunnel", p.route.Name, "id", id, "hosts", p.route.Hosts)
	return nil
}

// lock takes sem, or gives up when ctx ends.
func (c *Registerer) lock(ctx context.Context) error {
	select {
	case c.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("caddy admin: %w", context.Cause(ctx))
	}
}

func (c *Registerer) unlock() { <-c.sem }

func (c *Registerer) serverPath() string {
	return "/config/apps/http/servers/" + url.PathEscape(c.server)
}

func (c *Registerer) idPath(id string) string { return "/id/" + url.PathEscape(id) }

// do makes one request to the admin API with body as JSON (unless nil),
// and returns the status and the body of the answer, bounded. A status
// other than 200 and those in ok is an error quoting caddy's answer.
func (c *Registerer) do(ctx context.Context, method, path string, body any, ok ...int) (int, []byte, error) {
	var payload []byte
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, fmt.Errorf("caddy admin: %s %s: %w", method, path, err)
		}
		payload = b
	}
	var resp *http.Response
	for attempt := 0; ; attempt++ {
		var rd io.Reader
		if payload != nil {
			rd = bytes.NewReader(payload)
		}
		req, err := http.NewRequestWithContext(ctx, method, c.admin.String()+path, rd)
		if err != nil {
			return 0, nil, fmt.Errorf("caddy admin: %s %s: %w", method, path, err)
		}
		if payload != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err = c.client.Do(req)
		if err == nil {
			break
		}
		if attempt >= adminRetries || !retryable(method, err) {
			return 0, nil, fmt.Errorf("caddy admin: %w", err)
		}
		// The admin server restarts when a new configuration is
		// loaded: a request that meets the restart is made again.
		select {
		case <-ctx.Done():
			return 0, nil, fmt.Errorf("caddy admin: %w", err)
		case <-time.After(time.Duration(50<<attempt) * time.Millisecond):
		}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return 0, nil, fmt.Errorf("caddy admin: %s %s: read answer: %w", method, path, err)
	}
	if len(b) > maxBody {
		return 0, nil, fmt.Errorf("caddy admin: %s %s: answer larger than %d bytes", method, path, maxBody)
	}
	if resp.StatusCode == http.StatusOK {
		return resp.StatusCode, b, nil
	}
	for _, s := range ok {
		if resp.StatusCode == s {
			return resp.StatusCode, b, nil
		}
	}
	return resp.StatusCode, b, answerError(method, path, resp.StatusCode, b)
}

// adminRetries bounds the attempts made again after a connection error.
const adminRetries = 3

// retryable reports whether a request that failed with err may be made
// again: nothing reached the admin API (refused), or the connection was
// reset under a request that replaces or removes by id, which making
// again does not change (not a POST, which appends).
func retryable(method string, err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) ||
		(method != http.MethodPost && errors.Is(err, syscall.ECONNRESET))
}

// answerError says what the admin API answered: its status and the first
// line of its body, bounded.
func answerError(method, path string, status int, body []byte) error {
	line, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
	if len(line) > maxErrorLine {
		line = line[:maxErrorLine] + "..."
	}
	msg := fmt.Sprintf("caddy admin: %s %s: %d %s", method, path, status, http.StatusText(status))
	if line != "" {
		msg += ": " + line
	}
	return errors.New(msg)
}
