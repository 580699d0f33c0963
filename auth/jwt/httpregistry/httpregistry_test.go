package httpregistry

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"go.uber.org/goleak"

	"github.com/diglett/diglett/auth/jwt"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a fake time the tests move by hand.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// server serves a key set (or whatever body/status a test sets) and a
// names lookup, counting requests.
type server struct {
	*httptest.Server
	jwksHits, nameHits atomic.Int64

	mu      sync.Mutex
	body    []byte         // the key set's response
	status  int            // its status
	owners  map[string]int // name -> status: 200 answers "owner-NAME"
	gate    chan struct{}  // when set, the key set waits for it to close
	lastReq string         // the last name asked
}

func newServer(t *testing.T) *server {
	s := &server{status: http.StatusOK, owners: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, r *http.Request) {
		s.jwksHits.Add(1)
		s.mu.Lock()
		body, status, gate := s.body, s.status, s.gate
		s.mu.Unlock()
		if gate != nil {
			select {
			case <-gate:
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		w.Write(body)
	})
	mux.HandleFunc("GET /names", func(w http.ResponseWriter, r *http.Request) {
		s.nameHits.Add(1)
		name := r.URL.Query().Get("name")
		s.mu.Lock()
		s.lastReq = name
		status, ok := s.owners[name]
		s.mu.Unlock()
		if !ok {
			status = http.StatusNotFound
		}
		w.WriteHeader(status)
		switch {
		case status == http.StatusOK && strings.HasPrefix(name, "bad"):
			w.Write([]byte(`{"owner": `))
		case status == http.StatusOK && strings.HasPrefix(name, "empty"):
			w.Write([]byte(`{"owner": ""}`))
		case status == http.StatusOK:
			json.NewEncoder(w).Encode(map[string]string{"owner": "owner-" + name})
		}
	})
	s.Server = httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

func (s *server) setKeys(t *testing.T, keys ...jose.JSONWebKey) {
	t.Helper()
	body, err := json.Marshal(jose.JSONWebKeySet{Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	s.setBody(http.StatusOK, body)
}

func (s *server) setBody(status int, body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status, s.body = status, body
}

func (s *server) setOwner(name string, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.owners[name] = status
}

// keys are one key of each kind a key set may hold.
type keys struct {
	ed  ed25519.PublicKey
	rsa *rsa.PrivateKey
	ec  *ecdsa.PrivateKey
}

func newKeys(t *testing.T) keys {
	t.Helper()
	ed, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return keys{ed: ed, rsa: rk, ec: ek}
}

func (k keys) jwks() []jose.JSONWebKey {
	return []jose.JSONWebKey{
		{Key: k.ed, KeyID: "ed", Algorithm: "EdDSA", Use: "sig"},
		{Key: &k.rsa.PublicKey, KeyID: "rsa", Algorithm: "RS256", Use: "sig"},
		{Key: &k.ec.PublicKey, KeyID: "ec", Algorithm: "ES256"},
	}
}

func newRegistry(t *testing.T, s *server, c Config) (*Registry, *clock) {
	t.Helper()
	if c.JWKSURL == "" {
		c.JWKSURL = s.URL + "/jwks"
	}
	r, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{now: time.Unix(1_800_000_000, 0)}
	r.now = clk.Now
	return r, clk
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestKey(t *testing.T) {
	s := newServer(t)
	k := newKeys(t)
	set := k.jwks()
	// Keys a token may not be verified with are skipped, not fatal.
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edEnc, _, _ := ed25519.GenerateKey(rand.Reader)
	set = append(set,
		jose.JSONWebKey{Key: &weak.PublicKey, KeyID: "weak-rsa"},
		jose.JSONWebKey{Key: &p384.PublicKey, KeyID: "p384"},
		jose.JSONWebKey{Key: edEnc, KeyID: "enc", Use: "enc"},
		jose.JSONWebKey{Key: []byte("0123456789abcdef0123456789abcdef"), KeyID: "hmac"},
		jose.JSONWebKey{Key: k.ed}, // no kid
		jose.JSONWebKey{Key: k.rsa, KeyID: "rsa-private"},
	)
	body, err := json.Marshal(jose.JSONWebKeySet{Keys: set})
	if err != nil {
		t.Fatal(err)
	}
	// A key of a type no library knows.
	body = []byte(strings.Replace(string(body), `"keys":[`, `"keys":[{"kty":"XYZ","kid":"odd"},`, 1))
	s.setBody(http.StatusOK, body)
	r, _ := newRegistry(t, s, Config{})

	found := []struct {
		id   string
		want crypto.PublicKey
	}{
		{"ed", k.ed},
		{"rsa", &k.rsa.PublicKey},
		{"ec", &k.ec.PublicKey},
		{"rsa-private", &k.rsa.PublicKey},
	}
	for _, tt := range found {
		t.Run(tt.id, func(t *testing.T) {
			got, err := r.Key(ctx(t), tt.id)
			if err != nil {
				t.Fatal(err)
			}
			if !got.(interface{ Equal(crypto.PublicKey) bool }).Equal(tt.want) {
				t.Fatalf("key %s: got %v", tt.id, got)
			}
		})
	}
	for _, id := range []string{"", "nope", "weak-rsa", "p384", "enc", "hmac", "odd"} {
		t.Run("unknown/"+id, func(t *testing.T) {
			if _, err := r.Key(ctx(t), id); !errors.Is(err, jwt.ErrUnknownIdentity) {
				t.Fatalf("Key(%q) = %v, want ErrUnknownIdentity", id, err)
			}
		})
	}
	if n := s.jwksHits.Load(); n != 1 {
		t.Fatalf("%d fetches of the key set, want 1", n)
	}
}

func TestKeyRefetchRateLimit(t *testing.T) {
	s := newServer(t)
	k := newKeys(t)
	s.setKeys(t, k.jwks()[0])
	r, clk := newRegistry(t, s, Config{})
	if _, err := r.Key(ctx(t), "ed"); err != nil {
		t.Fatal(err)
	}
	// The provider adds a key; tokens naming it, and a flood of made-up
	// key ids, arrive at once.
	s.setKeys(t, k.jwks()...)
	for i := range 200 {
		if _, err := r.Key(ctx(t), "made-up-"+string(rune('a'+i%26))); !errors.Is(err, jwt.ErrUnknownIdentity) {
			t.Fatalf("made-up kid: %v", err)
		}
	}
	if _, err := r.Key(ctx(t), "rsa"); !errors.Is(err, jwt.ErrUnknownIdentity) {
		t.Fatalf("rsa before MinRefetch: %v", err)
	}
	if n := s.jwksHits.Load(); n != 1 {
		t.Fatalf("%d fetches during the flood, want 1", n)
	}
	// After MinRefetch, one unknown kid refetches the set once.
	clk.Add(MinRefetch)
	if _, err := r.Key(ctx(t), "rsa"); err != nil {
		t.Fatalf("rsa after MinRefetch: %v", err)
	}
	for range 50 {
		r.Key(ctx(t), "made-up")
	}
	if n := s.jwksHits.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}
}

func TestKeyExpiry(t *testing.T) {
	s := newServer(t)
	k := newKeys(t)
	s.setKeys(t, k.jwks()...)
	r, clk := newRegistry(t, s, Config{TTL: time.Minute})
	if _, err := r.Key(ctx(t), "ec"); err != nil {
		t.Fatal(err)
	}
	// The provider removes a key: the cached set still has it until it
	// is older than the TTL.
	s.setKeys(t, k.jwks()[:2]...)
	clk.Add(time.Minute - time.Second)
	if _, err := r.Key(ctx(t), "ec"); err != nil {
		t.Fatalf("before the ttl: %v", err)
	}
	clk.Add(time.Second)
	if _, err := r.Key(ctx(t), "ec"); !errors.Is(err, jwt.ErrUnknownIdentity) {
		t.Fatalf("after the ttl: %v, want ErrUnknownIdentity", err)
	}
	if _, err := r.Key(ctx(t), "ed"); err != nil {
		t.Fatal(err)
	}
	if n := s.jwksHits.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}
}

func TestKeyFetchFailures(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   []byte
		want   string
	}{
		{"5xx", http.StatusInternalServerError, []byte("oops"), "status 500"},
		{"404", http.StatusNotFound, nil, "status 404"},
		{"oversize", http.StatusOK, []byte(`{"keys":[],"pad":"` + strings.Repeat("x", MaxBody) + `"}`), "larger than"},
		{"not json", http.StatusOK, []byte("<html>"), "not a key set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t)
			s.setBody(tt.status, tt.body)
			r, clk := newRegistry(t, s, Config{})
			_, err := r.Key(ctx(t), "ed")
			if err == nil || errors.Is(err, jwt.ErrUnknownIdentity) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Key = %v, want a failure with %q", err, tt.want)
			}
			// A failing set is not asked again at once...
			if _, err := r.Key(ctx(t), "ed"); err == nil || errors.Is(err, jwt.ErrUnknownIdentity) {
				t.Fatalf("second Key = %v, want the failure", err)
			}
			if n := s.jwksHits.Load(); n != 1 {
				t.Fatalf("%d fetches, want 1", n)
			}
			// ...but is once it serves again.
			s.setKeys(t, newKeys(t).jwks()...)
			clk.Add(retryAfterFailure)
			if _, err := r.Key(ctx(t), "ed"); err != nil {
				t.Fatalf("after recovery: %v", err)
			}
		})
	}
}

func TestKeyUnreachable(t *testing.T) {
	s := newServer(t)
	url := s.URL + "/jwks"
	s.Close()
	r, _ := newRegistry(t, s, Config{JWKSURL: url})
	if _, err := r.Key(ctx(t), "ed"); err == nil || errors.Is(err, jwt.ErrUnknownIdentity) {
		t.Fatalf("Key = %v, want a failure", err)
	}
}

func TestKeyConcurrentMisses(t *testing.T) {
	s := newServer(t)
	k := newKeys(t)
	s.setKeys(t, k.jwks()...)
	gate := make(chan struct{})
	s.mu.Lock()
	s.gate = gate
	s.mu.Unlock()
	r, _ := newRegistry(t, s, Config{})

	// A caller that gives up does not spoil the fetch for the others.
	short, cancel := context.WithCancel(ctx(t))
	errc := make(chan error, 1)
	go func() {
		_, err := r.Key(short, "ed")
		errc <- err
	}()
	if err := poll(func() bool { return s.jwksHits.Load() == 1 }); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller: %v", err)
	}

	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Go(func() {
			if _, err := r.Key(ctx(t), "rsa"); err != nil {
				errs <- err
			}
		})
	}
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := s.jwksHits.Load(); n != 1 {
		t.Fatalf("%d fetches for concurrent misses, want 1", n)
	}
}

func poll(cond func() bool) error {
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("condition not met in 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

func TestOwner(t *testing.T) {
	s := newServer(t)
	s.setOwner("example", http.StatusOK)
	s.setOwner("broken", http.StatusInternalServerError)
	s.setOwner("teapot", http.StatusTeapot)
	s.setOwner("bad-json", http.StatusOK)
	s.setOwner("empty-owner", http.StatusOK)
	r, _ := newRegistry(t, s, Config{NamesURL: s.URL + "/names?v=1"})

	tests := []struct {
		name      string
		owner     string
		noOwner   bool
		failure   string
		wantCalls int64 // lookups after asking twice
	}{
		{name: "example", owner: "owner-example", wantCalls: 1},
		{name: "nobody", noOwner: true, wantCalls: 1},
		{name: "broken", failure: "status 500", wantCalls: 2},
		{name: "teapot", failure: "status 418", wantCalls: 2},
		{name: "bad-json", failure: "bad answer", wantCalls: 2},
		{name: "empty-owner", failure: "no owner", wantCalls: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := s.nameHits.Load()
			for range 2 {
				owner, err := r.Owner(ctx(t), tt.name)
				switch {
				case tt.noOwner:
					if !errors.Is(err, jwt.ErrNoOwner) {
						t.Fatalf("Owner = %q, %v; want ErrNoOwner", owner, err)
					}
				case tt.failure != "":
					if err == nil || errors.Is(err, jwt.ErrNoOwner) || !strings.Contains(err.Error(), tt.failure) {
						t.Fatalf("Owner = %q, %v; want a failure with %q", owner, err, tt.failure)
					}
				default:
					if err != nil || owner != tt.owner {
						t.Fatalf("Owner = %q, %v; want %q", owner, err, tt.owner)
					}
				}
			}
			if n := s.nameHits.Load() - before; n != tt.wantCalls {
				t.Fatalf("%d lookups, want %d", n, tt.wantCalls)
			}
		})
	}
}

func TestOwnerExpiryAndBound(t *testing.T) {
	s := newServer(t)
	for _, n := range []string{"a", "b", "c"} {
		s.setOwner(n, http.StatusOK)
	}
	r, clk := newRegistry(t, s, Config{NamesURL: s.URL + "/names", TTL: time.Minute, MaxEntries: 2})
	ask := func(name string, want string) {
		t.Helper()
		got, err := r.Owner(ctx(t), name)
		if want == "" {
			if !errors.Is(err, jwt.ErrNoOwner) {
				t.Fatalf("Owner(%s) = %q, %v; want ErrNoOwner", name, got, err)
			}
			return
		}
		if err != nil || got != want {
			t.Fatalf("Owner(%s) = %q, %v; want %q", name, got, err, want)
		}
	}
	ask("a", "owner-a")
	ask("b", "owner-b")
	ask("a", "owner-a")
	if n := s.nameHits.Load(); n != 2 {
		t.Fatalf("%d lookups, want 2", n)
	}
	// A third name pushes out the least recently used ("b").
	ask("c", "owner-c")
	ask("a", "owner-a")
	ask("b", "owner-b")
	if n := s.nameHits.Load(); n != 4 {
		t.Fatalf("%d lookups after the bound, want 4", n)
	}
	// The owner is revoked: the answer is kept until the TTL, then gone.
	s.mu.Lock()
	delete(s.owners, "b")
	s.mu.Unlock()
	clk.Add(time.Minute - time.Second)
	ask("b", "owner-b")
	clk.Add(time.Second)
	ask("b", "")
	if n := s.nameHits.Load(); n != 5 {
		t.Fatalf("%d lookups after the ttl, want 5", n)
	}
}

func TestOwnerQuery(t *testing.T) {
	s := newServer(t)
	r, _ := newRegistry(t, s, Config{NamesURL: s.URL + "/names"})
	const name = "a&name=b c"
	if _, err := r.Owner(ctx(t), name); !errors.Is(err, jwt.ErrNoOwner) {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastReq != name {
		t.Fatalf("server was asked for %q, want %q", s.lastReq, name)
	}
}

func TestOwnerNoNamesURL(t *testing.T) {
	s := newServer(t)
	r, _ := newRegistry(t, s, Config{})
	_, err := r.Owner(ctx(t), "example")
	if err == nil || errors.Is(err, jwt.ErrNoOwner) || !strings.Contains(err.Error(), "no name registry") {
		t.Fatalf("Owner = %v, want a failure saying no name registry is configured", err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		c    Config
		want string
	}{
		{"no jwks", Config{}, "no jwks url"},
		{"jwks scheme", Config{JWKSURL: "ftp://x/jwks"}, "not an http"},
		{"jwks host", Config{JWKSURL: "https:///jwks"}, "no host"},
		{"jwks parse", Config{JWKSURL: "http://[::1"}, "jwks url"},
		{"names scheme", Config{JWKSURL: "https://x/jwks", NamesURL: "file:///etc/names"}, "names url"},
		{"ttl", Config{JWKSURL: "https://x/jwks", TTL: -time.Second}, "negative ttl"},
		{"entries", Config{JWKSURL: "https://x/jwks", MaxEntries: -1}, "negative max entries"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.c)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want an error with %q", err, tt.want)
			}
		})
	}
	if _, err := New(Config{JWKSURL: "https://idp.example/jwks", NamesURL: "http://127.0.0.1/names"}); err != nil {
		t.Fatal(err)
	}
}

// FuzzParseKeys feeds key sets of any shape to the parser: it must not
// panic, and every key it keeps must be one a token may be verified with.
func FuzzParseKeys(f *testing.F) {
	k := keys{}
	ed, _, _ := ed25519.GenerateKey(rand.Reader)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k.ed, k.ec = ed, ec
	set, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: k.ed, KeyID: "ed"}, {Key: &k.ec.PublicKey, KeyID: "ec"},
	}})
	f.Add(set)
	f.Add([]byte(`{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"EC","kid":"e","crv":"P-256","x":"","y":""}]}`))
	f.Add([]byte(`{"keys":[{"kty":"OKP","kid":"o","crv":"Ed25519","x":"AA"}]}`))
	f.Add([]byte(`{"keys":null}`))
	f.Add([]byte(`[]`))
	log := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := parseKeys(body, log)
		if err != nil {
			return
		}
		for kid, pub := range got {
			switch pub := pub.(type) {
			case ed25519.PublicKey:
				if len(pub) != ed25519.PublicKeySize {
					t.Fatalf("kid %q: Ed25519 key of %d bytes", kid, len(pub))
				}
			case *rsa.PublicKey:
				if pub.N.BitLen() < minRSABits {
					t.Fatalf("kid %q: RSA key of %d bits", kid, pub.N.BitLen())
				}
			case *ecdsa.PublicKey:
				if pub.Curve != elliptic.P256() {
					t.Fatalf("kid %q: curve %v", kid, pub.Curve)
				}
			default:
				t.Fatalf("kid %q: key of type %T", kid, pub)
			}
		}
	})
}
