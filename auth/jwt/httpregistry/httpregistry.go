// Package httpregistry is a jwt.Registry served over HTTP: identity keys
// come from a JSON Web Key Set (RFC 7517) — an identity provider's, for
// OpenID Connect tokens, or one the operator publishes — and the owner of
// each name from a lookup URL. Both answers are cached with an expiry and
// a bound on size, so logins do not make a request each.
package httpregistry

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"

	"github.com/diglett/diglett/auth/jwt"
)

// Defaults and bounds.
const (
	// DefaultTTL is how long a key set and a name's answer are kept.
	DefaultTTL = 5 * time.Minute
	// DefaultMaxEntries bounds the cache of name answers.
	DefaultMaxEntries = 10000
	// DefaultTimeout bounds one request when Config.Client is nil.
	DefaultTimeout = 10 * time.Second
	// MaxBody bounds a response body: a key set or a name's answer.
	MaxBody = 1 << 20
	// MinRefetch is the least time between two fetches of the key set
	// made because a token named a key the cached set does not hold: a
	// flood of tokens with made-up key ids makes one fetch, not one each.
	MinRefetch = 10 * time.Second
	// retryAfterFailure is the least time between two fetches of a key
	// set that could not be fetched.
	retryAfterFailure = time.Second
	// minRSABits is the smallest RSA key taken from a key set.
	minRSABits = 2048
)

// Config configures a Registry. Zero values are the documented defaults.
type Config struct {
	// JWKSURL is where the JSON Web Key Set of identity keys is served
	// (required). A key's "kid" is the identity id a token names.
	JWKSURL string
	// NamesURL answers who owns a name: GET NamesURL?name=NAME answers
	// 200 with {"owner": "IDENTITY"}, or 404 when no identity owns it.
	// Empty: no name registry (OpenID Connect tokens, with the jwt
	// module's owners: false); Owner then fails.
	NamesURL string
	// TTL is how long the key set and each name's answer (an owner or
	// a 404) are kept. Default: DefaultTTL.
	TTL time.Duration
	// MaxEntries bounds how many names' answers are kept (the least
	// recently used go first). Default: DefaultMaxEntries.
	MaxEntries int
	// Client makes the requests. Default: a client with a timeout of
	// DefaultTimeout.
	Client *http.Client
	// Logger is where fetches that fail and keys that are skipped are
	// logged. Default: slog.Default().
	Logger *slog.Logger
}

// Validate reports whether c can build a Registry.
func (c Config) Validate() error {
	if c.JWKSURL == "" {
		return errors.New("no jwks url")
	}
	if err := checkURL(c.JWKSURL); err != nil {
		return fmt.Errorf("jwks url: %w", err)
	}
	if c.NamesURL != "" {
		if err := checkURL(c.NamesURL); err != nil {
			return fmt.Errorf("names url: %w", err)
		}
	}
	if c.TTL < 0 {
		return errors.New("negative ttl")
	}
	if c.MaxEntries < 0 {
		return errors.New("negative max entries")
	}
	return nil
}

// redacted is s with any password in it replaced, for logs.
func redacted(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return ""
	}
	return u.Redacted()
}

func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%q: not an http or https url", s)
	}
	if u.Host == "" {
		return fmt.Errorf("%q: no host", s)
	}
	return nil
}

// Registry answers jwt.Registry's questions from a key set and a name
// lookup URL. It is safe for concurrent use and holds no goroutine.
type Registry struct {
	jwks, names string
	jwksLog     string // jwks without a password, for logs
	namesLog    string
	ttl         time.Duration
	client      *http.Client
	log         *slog.Logger
	now         func() time.Time

	group singleflight.Group // "jwks" and "name/NAME" fetches

	mu          sync.Mutex
	keys        map[string]crypto.PublicKey // the last key set fetched
	fetched     time.Time                   // when keys was fetched
	lastAttempt time.Time                   // the last fetch, done or failed
	lastErr     error                       // why the last fetch failed, or nil

	owners *lru.Cache[string, answer] // name -> its owner, kept until expires
}

// answer is a name's cached answer: its owner, or "" for a 404.
type answer struct {
	owner   string
	expires time.Time
}

var _ jwt.Registry = (*Registry)(nil)

// New builds a Registry. Nothing is fetched until the first question.
func New(c Config) (*Registry, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	r := &Registry{
		jwks:     c.JWKSURL,
		names:    c.NamesURL,
		jwksLog:  redacted(c.JWKSURL),
		namesLog: redacted(c.NamesURL),
		ttl:      c.TTL,
		client:   c.Client,
		log:      c.Logger,
		now:      time.Now,
	}
	if r.ttl == 0 {
		r.ttl = DefaultTTL
	}
	if r.client == nil {
		r.client = &http.Client{Timeout: DefaultTimeout}
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	size := c.MaxEntries
	if size == 0 {
		size = DefaultMaxEntries
	}
	owners, err := lru.New[string, answer](size)
	if err != nil {
		return nil, fmt.Errorf("names cache: %w", err)
	}
	r.owners = owners
	return r, nil
}

// Key returns the public key whose "kid" is id in the key set. The set is
// fetched when it is older than the TTL, and again (at most once every
// MinRefetch) when it does not hold id, so a key the provider has just
// added is found.
func (r *Registry) Key(ctx context.Context, id string) (crypto.PublicKey, error) {
	if id == "" {
		return nil, fmt.Errorf("%w: no key id", jwt.ErrUnknownIdentity)
	}
	now := r.now()
	r.mu.Lock()
	keys, fresh := r.keys, r.keys != nil && now.Sub(r.fetched) < r.ttl
	lastAttempt, lastErr := r.lastAttempt, r.lastErr
	r.mu.Unlock()

	if fresh {
		if k, ok := keys[id]; ok {
			return k, nil
		}
		if now.Sub(lastAttempt) < MinRefetch {
			return nil, jwt.ErrUnknownIdentity
		}
	} else if lastErr != nil && now.Sub(lastAttempt) < retryAfterFailure {
		return nil, fmt.Errorf("jwks: %w", lastErr)
	}

	keys, err := r.fetchKeys(ctx)
	if err != nil {
		return nil, err
	}
	if k, ok := keys[id]; ok {
		return k, nil
	}
	return nil, jwt.ErrUnknownIdentity
}

// fetchKeys fetches the key set once for all the callers waiting on it.
// The fetch outlives a caller that gives up (it is bounded by the
// client's timeout), so the others still get its answer.
func (r *Registry) fetchKeys(ctx context.Context) (map[string]crypto.PublicKey, error) {
	ch := r.group.DoChan("jwks", func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.timeout())
		defer cancel()
		keys, err := r.getKeys(fctx)
		r.mu.Lock()
		defer r.mu.Unlock()
		r.lastAttempt, r.lastErr = r.now(), err
		if err != nil {
			r.log.Warn("jwt registry: fetch of the key set failed", "url", r.jwksLog, "err", err)
			return nil, err
		}
		r.keys, r.fetched = keys, r.lastAttempt
		return keys, nil
	})
	select {
	case <-ctx.Done():
		return nil, fmt.Errorf("jwks: %w", context.Cause(ctx))
	case res := <-ch:
		if res.Err != nil {
			return nil, fmt.Errorf("jwks: %w", res.Err)
		}
		return res.Val.(map[string]crypto.PublicKey), nil
	}
}

// timeout bounds one fetch that no caller's context bounds any more.
func (r *Registry) timeout() time.Duration {
	if r.client.Timeout > 0 {
		return r.client.Timeout
	}
	return DefaultTimeout
}

// getKeys GETs and parses the key set. Keys it cannot use (another key
// type, a key for encryption, no kid, a weak RSA key) are skipped, so one
// odd key does not take the others with it.
func (r *Registry) getKeys(ctx context.Context) (map[string]crypto.PublicKey, error) {
	body, status, err := r.get(ctx, r.jwks)
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("status %d", status)
	}
	return parseKeys(body, r.log.With("url", r.jwksLog))
}

// parseKeys reads a key set.
func parseKeys(body []byte, log *slog.Logger) (map[string]crypto.PublicKey, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("not a key set: %w", err)
	}
	keys := make(map[string]crypto.PublicKey, len(set.Keys))
	for i, raw := range set.Keys {
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(raw); err != nil {
			log.Debug("jwt registry: key set: key skipped", "index", i, "err", err)
			continue
		}
		pub, err := usable(k)
		if err != nil {
			log.Debug("jwt registry: key set: key skipped", "index", i, "kid", k.KeyID, "err", err)
			continue
		}
		keys[k.KeyID] = pub
	}
	return keys, nil
}

// usable returns the public key of k if a token may be verified with it.
func usable(k jose.JSONWebKey) (crypto.PublicKey, error) {
	if k.KeyID == "" {
		return nil, errors.New("no kid")
	}
	if k.Use != "" && k.Use != "sig" {
		return nil, fmt.Errorf("use %q, not sig", k.Use)
	}
	if !k.IsPublic() {
		k = k.Public() // a set should not hold private keys; use only the public half
	}
	switch pub := k.Key.(type) {
	case ed25519.PublicKey:
		return pub, nil
	case *rsa.PublicKey:
		if pub.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("rsa key of %d bits", pub.N.BitLen())
		}
		return pub, nil
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() {
			return nil, fmt.Errorf("curve %s, not P-256", pub.Curve.Params().Name)
		}
		return pub, nil
	default:
		return nil, fmt.Errorf("key type %T", k.Key)
	}
}

// Owner returns the identity that owns name, as the names URL answers,
// from the cache while the answer is younger than the TTL.
func (r *Registry) Owner(ctx context.Context, name string) (string, error) {
	if r.names == "" {
		return "", errors.New("no name registry configured (names url)")
	}
	if a, ok := r.owners.Get(name); ok && r.now().Before(a.expires) {
		return a.result()
	}
	ch := r.group.DoChan("name/"+name, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.timeout())
		defer cancel()
		a, err := r.getOwner(fctx, name)
		if err != nil {
			r.log.Warn("jwt registry: name lookup failed", "url", r.namesLog, "name", name, "err", err)
			return nil, err
		}
		r.owners.Add(name, a)
		return a, nil
	})
	select {
	case <-ctx.Done():
		return "", fmt.Errorf("names: %w", context.Cause(ctx))
	case res := <-ch:
		if res.Err != nil {
			return "", fmt.Errorf("names: %w", res.Err)
		}
		return res.Val.(answer).result()
	}
}

func (a answer) result() (string, error) {
	if a.owner == "" {
		return "", jwt.ErrNoOwner
	}
	return a.owner, nil
}

// getOwner asks the names URL who owns name. Anything but a 200 with an
// owner or a 404 is a failure of the registry, which is not cached.
func (r *Registry) getOwner(ctx context.Context, name string) (answer, error) {
	u, err := url.Parse(r.names)
	if err != nil {
		return answer{}, err
	}
	q := u.Query()
	q.Set("name", name)
	u.RawQuery = q.Encode()
	body, status, err := r.get(ctx, u.String())
	if err != nil {
		return answer{}, err
	}
	a := answer{expires: r.now().Add(r.ttl)}
	switch status {
	case http.StatusOK:
		var v struct {
			Owner string `json:"owner"`
		}
		if err := json.Unmarshal(body, &v); err != nil {
			return answer{}, fmt.Errorf("bad answer: %w", err)
		}
		if v.Owner == "" {
			return answer{}, errors.New("bad answer: no owner")
		}
		a.owner = v.Owner
		return a, nil
	case http.StatusNotFound:
		return a, nil
	default:
		return answer{}, fmt.Errorf("status %d", status)
	}
}

// get GETs u and reads at most MaxBody bytes of its body.
func (r *Registry) get(ctx context.Context, u string) ([]byte, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody+1))
	if err != nil {
		return nil, 0, fmt.Errorf("read body: %w", err)
	}
	if len(body) > MaxBody {
		return nil, 0, fmt.Errorf("body larger than %d bytes", MaxBody)
	}
	return body, resp.StatusCode, nil
}
