// Package external is the authentication module that asks an HTTP(S)
// webhook of the operator's about each login: the gateway POSTs the
// agent's token (in the Authorization header), user, requested names and
// address; a 2xx answer allows, optionally naming the identity and the
// names it may publish; 401 and 403 refuse, with the first line of the
// answer shown to the agent. Any other outcome (timeout, 5xx, unreachable)
// refuses too, as a failure of the gateway that the agent retries later.
// Answers are cached for a short time.
package external

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"golang.org/x/net/http/httpguts"

	"github.com/diglett/diglett/auth/tokens"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/printable"
)

// Config configures a Webhook. Zero fields take the defaults documented
// on them.
type Config struct {
	// URL is where logins are POSTed: http or https.
	URL string
	// Scheme is the first word of the Authorization header, before the
	// token. Default: "Bearer".
	Scheme string
	// Timeout bounds each call of the webhook. Default: 5s.
	Timeout time.Duration
	// CacheTTL is how long an answer (allow or refusal) is reused for the
	// same token, user and names. Zero caches nothing.
	CacheTTL time.Duration
	// CacheSize bounds the answers kept. Default: 4096.
	CacheSize int
	// RootCAs verifies the webhook's certificate. Default: the system
	// roots.
	RootCAs *x509.CertPool
	// Logger is where failures of the webhook are logged. Default:
	// slog.Default().
	Logger *slog.Logger
}

// Defaults of Config.
const (
	DefaultScheme    = "Bearer"
	DefaultTimeout   = 5 * time.Second
	DefaultCacheSize = 4096
)

// Limits of what the webhook sends back.
const (
	// MaxAnswer bounds the body of an answer; a longer one is a failure.
	MaxAnswer = 64 << 10
	// MaxReason bounds the refusal reason shown to the agent, in runes.
	MaxReason = 200
	// MaxIdentity bounds the identity an answer names, in bytes.
	MaxIdentity = 200
)

// maxConns bounds the calls of the webhook in flight at once; more wait
// for one to end, within their timeout.
const maxConns = 64

// ClaimNames is the claim of the identities a Webhook authenticates that
// holds the name patterns the webhook allowed ([]string).
const ClaimNames = "external.names"

// Webhook authenticates agents by asking an HTTP(S) endpoint. Close it to
// drop its idle connections.
type Webhook struct {
	url       string
	scheme    string
	timeout   time.Duration
	ttl       time.Duration
	client    *http.Client
	transport *http.Transport
	log       *slog.Logger
	now       func() time.Time // for tests

	mu    sync.Mutex
	cache *simplelru.LRU[[sha256.Size]byte, answer]
}

// answer is a cached outcome: an identity and its names, or a refusal.
type answer struct {
	id      gateway.Identity
	refusal error
	expires time.Time
}

var (
	_ gateway.Authenticator = (*Webhook)(nil)
	_ io.Closer             = (*Webhook)(nil)
)

// New checks c and builds its Webhook.
func New(c Config) (*Webhook, error) {
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("url: want an http:// or https:// URL such as https://auth.internal/check")
	}
	if c.Scheme == "" {
		c.Scheme = DefaultScheme
	}
	if !httpguts.ValidHeaderFieldName(c.Scheme) {
		return nil, fmt.Errorf("scheme %q: want one word such as Bearer", c.Scheme)
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Timeout < 0 || c.CacheTTL < 0 || c.CacheSize < 0 {
		return nil, errors.New("timeout, cache and cache size cannot be negative")
	}
	if c.CacheSize == 0 {
		c.CacheSize = DefaultCacheSize
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	cache, err := simplelru.NewLRU[[sha256.Size]byte, answer](c.CacheSize, nil)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: c.RootCAs, MinVersion: tls.VersionTLS12}
	tr.MaxIdleConnsPerHost = 16
	tr.MaxConnsPerHost = maxConns
	w := &Webhook{
		url:       c.URL,
		scheme:    c.Scheme,
		timeout:   c.Timeout,
		ttl:       c.CacheTTL,
		transport: tr,
		client: &http.Client{
			Transport: tr,
			// A redirect is an answer like any other that is not 2xx,
			// 401 or 403: a failure, and the token goes nowhere else.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		log:   c.Logger.With("webhook", u.Redacted()),
		now:   time.Now,
		cache: cache,
	}
	if u.Scheme == "http" && !isLoopback(u.Hostname()) {
		w.log.Warn("auth webhook over plain http: agents' tokens cross the network in clear; use https")
	}
	return w, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Close drops the Webhook's idle connections.
func (w *Webhook) Close() error {
	w.transport.CloseIdleConnections()
	return nil
}

// request is the JSON body POSTed to the webhook; the token is in the
// Authorization header.
type request struct {
	Names  []string `json:"names"`
	Remote string   `json:"remote"`
	User   string   `json:"user"`
}

// response is the optional JSON body of a 2xx answer.
type response struct {
	Identity string   `json:"identity"`
	Names    []string `json:"names"`
}

// Authenticate asks the webhook, or reuses its answer for the same token,
// user and names. Credentials with no token are refused at once, so that a
// chain of modules moves on.
func (w *Webhook) Authenticate(ctx context.Context, c gateway.Credentials) (gateway.Identity, error) {
	if c.Token == "" {
		return gateway.Identity{}, fmt.Errorf("%w: no token given", gateway.ErrUnauthorized)
	}
	if !httpguts.ValidHeaderFieldValue(c.Token) {
		return gateway.Identity{}, fmt.Errorf("%w: the token has characters an HTTP header cannot carry", gateway.ErrUnauthorized)
	}
	names := c.Names
	if names == nil {
		names = []string{}
	}
	key := w.key(c.Token, c.User, names)
	if a, ok := w.cached(key); ok {
		return a.id, a.refusal
	}
	a, err := w.ask(ctx, c, names)
	if err != nil {
		return gateway.Identity{}, err
	}
	w.store(key, a)
	return a.id, a.refusal
}

// Authorize allows the names (or patterns) the webhook's answer gave.
func (w *Webhook) Authorize(_ context.Context, id gateway.Identity, name string) error {
	if names, ok := id.Claims[ClaimNames].([]string); ok && tokens.Match(names, name) {
		return nil
	}
	return fmt.Errorf("%w: %q", gateway.ErrForbidden, name)
}

// key is the cache key of a question: a hash, so that no token is kept
// in clear.
func (w *Webhook) key(token, user string, names []string) [sha256.Size]byte {
	h := sha256.New()
	for _, s := range append([]string{w.scheme, token, user}, names...) {
		fmt.Fprintf(h, "%d:%s", len(s), s)
	}
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

func (w *Webhook) cached(key [sha256.Size]byte) (answer, bool) {
	if w.ttl <= 0 {
		return answer{}, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	a, ok := w.cache.Get(key)
	if !ok {
		return answer{}, false
	}
	if !w.now().Before(a.expires) {
		w.cache.Remove(key)
		return answer{}, false
	}
	return a, true
}

func (w *Webhook) store(key [sha256.Size]byte, a answer) {
	if w.ttl <= 0 {
		return
	}
	a.expires = w.now().Add(w.ttl)
	w.mu.Lock()
	w.cache.Add(key, a)
	w.mu.Unlock()
}

// ask calls the webhook. It returns an answer (an identity or a refusal)
// or, when the webhook gave none, an error that is not a refusal.
func (w *Webhook) ask(ctx context.Context, c gateway.Credentials, names []string) (answer, error) {
	remote := ""
	if c.Remote != nil {
		remote = c.Remote.String()
	}
	log := w.log.With("remote", remote)
	body, err := json.Marshal(request{Names: names, Remote: remote, User: c.User})
	if err != nil {
		return answer{}, fmt.Errorf("auth webhook: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return answer{}, fmt.Errorf("auth webhook: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", w.scheme+" "+c.Token)
	fail := func(reason string, err error) (answer, error) {
		log.Warn("auth webhook failed: login refused until it answers", "reason", reason, "err", err)
		return answer{}, fmt.Errorf("auth webhook: %s: %w", reason, err)
	}
	resp, err := w.client.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // its URL is in the log already
		}
		var nerr net.Error
		if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &nerr) && nerr.Timeout() {
			return fail("timeout", fmt.Errorf("no answer within %v", w.timeout))
		}
		if ctx.Err() != nil {
			// The login itself ended (the agent left, the gateway closes).
			return answer{}, fmt.Errorf("auth webhook: %w", context.Cause(ctx))
		}
		return fail("unreachable", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxAnswer+1))
	if err != nil {
		if ctx.Err() != nil {
			return fail("timeout", fmt.Errorf("answer not read within %v", w.timeout))
		}
		return fail("unreachable", fmt.Errorf("read answer: %w", err))
	}
	if len(data) > MaxAnswer {
		return fail("bad answer", fmt.Errorf("status %d with a body over %d bytes", resp.StatusCode, MaxAnswer))
	}
	switch s := resp.StatusCode; {
	case s == http.StatusUnauthorized || s == http.StatusForbidden:
		reason := redact(firstLine(data), c.Token)
		log.Debug("auth webhook refused a login", "status", s, "reason", reason)
		if reason == "" {
			reason = "refused by the authentication webhook"
		}
		return answer{refusal: fmt.Errorf("%w: %s", gateway.ErrUnauthorized, reason)}, nil
	case s >= 200 && s <= 299:
		id, err := w.identity(c.Token, names, data)
		if err != nil {
			return fail("bad answer", err)
		}
		return answer{id: id}, nil
	default:
		return fail(fmt.Sprintf("status %d", s), fmt.Errorf("%s: %s", resp.Status, redact(firstLine(data), c.Token)))
	}
}

// identity reads a 2xx answer: an empty body, or a JSON object whose
// identity and names, each optional, default to a hash of the token and
// the names asked for.
func (w *Webhook) identity(token string, asked []string, body []byte) (gateway.Identity, error) {
	var r response
	if len(bytes.TrimSpace(body)) > 0 {
		if err := json.Unmarshal(body, &r); err != nil {
			return gateway.Identity{}, errors.New(`2xx answer is not the JSON expected ({"identity": "...", "names": ["..."]}) nor empty`)
		}
	}
	if r.Identity == "" {
		sum := sha256.Sum256([]byte(token))
		r.Identity = "external:" + hex.EncodeToString(sum[:6])
	}
	if len(r.Identity) > MaxIdentity || printable.String(r.Identity, MaxIdentity) != r.Identity {
		return gateway.Identity{}, fmt.Errorf("identity %q: want at most %d printable bytes", printable.String(r.Identity, 40), MaxIdentity)
	}
	if r.Names == nil {
		r.Names = asked
	}
	for _, p := range r.Names {
		if err := tokens.ValidatePattern(p); err != nil {
			return gateway.Identity{}, fmt.Errorf("names: %s", printable.String(err.Error(), 100))
		}
	}
	return gateway.Identity{Name: r.Identity, Claims: map[string]any{ClaimNames: r.Names}}, nil
}

// firstLine is the first line of an answer, trimmed and made printable,
// at most MaxReason runes.
func firstLine(data []byte) string {
	line, _, _ := bytes.Cut(data, []byte("\n"))
	return printable.String(strings.TrimSpace(string(line)), MaxReason)
}

// redact hides token in text from the webhook that is logged or shown (a
// service that echoes the request back, say). A token too short to tell
// from ordinary words is left: it is no secret worth the name.
func redact(text, token string) string {
	if len(token) < 6 {
		return text
	}
	return strings.ReplaceAll(text, printable.String(token, MaxReason), "[token]")
}
