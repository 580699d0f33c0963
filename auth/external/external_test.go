package external

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/testutil"
)

// hook is a test webhook: it answers with the function the test sets,
// and records what it was asked.
type hook struct {
	srv    *httptest.Server
	calls  atomic.Int64
	mu     sync.Mutex
	auth   string
	body   map[string]any
	answer func(w http.ResponseWriter, r *http.Request)
}

func newHook(t *testing.T, answer func(w http.ResponseWriter, r *http.Request)) *hook {
	h := &hook{answer: answer}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.calls.Add(1)
		var body map[string]any
		data, _ := io.ReadAll(r.Body)
		json.Unmarshal(data, &body)
		h.mu.Lock()
		h.auth, h.body = r.Header.Get("Authorization"), body
		h.mu.Unlock()
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "want a JSON POST", http.StatusBadRequest)
			return
		}
		h.answer(w, r)
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func reply(status int, body string) func(w http.ResponseWriter, r *http.Request) {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

func newWebhook(t *testing.T, c Config) (*Webhook, *testutil.Buffer) {
	t.Helper()
	var logs testutil.Buffer
	c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	w, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w, &logs
}

// checkLeaks fails t if goroutines it started outlive it and its
// cleanups.
func checkLeaks(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

var remote = &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 40000}

func creds(token string, names ...string) gateway.Credentials {
	return gateway.Credentials{Token: token, User: "alice", Names: names, Remote: remote}
}

func TestAllow(t *testing.T) {
	checkLeaks(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		body     string
		identity string
		allowed  []string
		denied   []string
	}{
		{"empty answer", "", "external:", []string{"web", "api"}, []string{"www"}},
		{"identity only", `{"identity": "alice"}`, "alice", []string{"web", "api"}, []string{"www"}},
		{"names from the answer", `{"identity": "alice", "names": ["alice-*"]}`, "alice", []string{"alice-1"}, []string{"web", "api"}},
		{"no names at all", `{"names": []}`, "external:", nil, []string{"web"}},
		{"unknown fields", `{"identity": "bob", "ttl": 3}`, "bob", []string{"web"}, []string{"www"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHook(t, reply(http.StatusOK, tc.body))
			w, _ := newWebhook(t, Config{URL: h.srv.URL, Scheme: "Token"})
			id, err := w.Authenticate(ctx, creds("tok-1", "web", "api"))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(id.Name, tc.identity) || tc.identity == "external:" && len(id.Name) != len("external:")+12 {
				t.Errorf("identity %q, want %q", id.Name, tc.identity)
			}
			for _, n := range tc.allowed {
				if err := w.Authorize(ctx, id, n); err != nil {
					t.Errorf("Authorize(%s): %v", n, err)
				}
			}
			for _, n := range tc.denied {
				if err := w.Authorize(ctx, id, n); !errors.Is(err, gateway.ErrForbidden) {
					t.Errorf("Authorize(%s): err = %v, want ErrForbidden", n, err)
				}
			}
			h.mu.Lock()
			defer h.mu.Unlock()
			if h.auth != "Token tok-1" {
				t.Errorf("Authorization header %q", h.auth)
			}
			want := map[string]any{"names": []any{"web", "api"}, "remote": "192.0.2.7:40000", "user": "alice"}
			if fmt.Sprint(h.body) != fmt.Sprint(want) {
				t.Errorf("body %v, want %v", h.body, want)
			}
		})
	}
}

func TestRefuse(t *testing.T) {
	checkLeaks(t)
	ctx := context.Background()
	long := strings.Repeat("é", 300)
	for _, tc := range []struct {
		name      string
		answer    func(w http.ResponseWriter, r *http.Request)
		refusal   string // the text after "login refused: ", for refusals
		failure   string // a part of the error, for failures
		logReason string
		timeout   time.Duration
	}{
		{name: "401 with a reason", answer: reply(401, "  token expired  \nsecond line"), refusal: "token expired"},
		{name: "403 with a reason", answer: reply(403, "not in group ops"), refusal: "not in group ops"},
		{name: "403 without", answer: reply(403, ""), refusal: "refused by the authentication webhook"},
		{name: "401 escapes", answer: reply(401, "bad\x1b[31m token"), refusal: `bad\x1b[31m token`},
		{name: "401 long", answer: reply(401, long), refusal: strings.Repeat("é", MaxReason-1) + "…"},
		{name: "500", answer: reply(500, "database down"), failure: "status 500", logReason: "reason=\"status 500\""},
		{name: "500 echoing the token", answer: func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "bad header: "+r.Header.Get("Authorization"), 500)
		}, failure: "bad header: Bearer [token]", logReason: "reason=\"status 500\""},
		{name: "401 echoing the token", answer: func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "unknown token "+r.Header.Get("Authorization"), 401)
		}, refusal: "unknown token Bearer [token]"},
		{name: "503", answer: reply(503, ""), failure: "status 503", logReason: "reason=\"status 503\""},
		{name: "400", answer: reply(400, "what"), failure: "status 400", logReason: "reason=\"status 400\""},
		{name: "redirect", answer: func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "http://192.0.2.1/", http.StatusFound)
		}, failure: "status 302"},
		{name: "not json", answer: reply(200, "ok"), failure: "bad answer", logReason: `reason="bad answer"`},
		{name: "too long", answer: reply(200, `{"identity": "`+strings.Repeat("a", MaxAnswer)+`"}`), failure: "bad answer"},
		{name: "bad identity", answer: reply(200, `{"identity": "a\nb"}`), failure: "bad answer"},
		{name: "long identity", answer: reply(200, `{"identity": "`+strings.Repeat("a", MaxIdentity+1)+`"}`), failure: "bad answer"},
		{name: "bad names", answer: reply(200, `{"names": ["Not A Name"]}`), failure: "bad answer"},
		{name: "timeout", answer: func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }, timeout: 100 * time.Millisecond, failure: "timeout", logReason: "reason=timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHook(t, tc.answer)
			w, logs := newWebhook(t, Config{URL: h.srv.URL, Timeout: tc.timeout})
			_, err := w.Authenticate(ctx, creds("tok-secret", "web"))
			if err == nil {
				t.Fatal("allowed")
			}
			if tc.refusal != "" {
				if !errors.Is(err, gateway.ErrUnauthorized) || err.Error() != "login refused: "+tc.refusal {
					t.Fatalf("err = %q, want ErrUnauthorized with %q", err, tc.refusal)
				}
				return
			}
			if errors.Is(err, gateway.ErrUnauthorized) || !strings.Contains(err.Error(), tc.failure) {
				t.Fatalf("err = %q, want a failure (not a refusal) with %q", err, tc.failure)
			}
			if !strings.Contains(logs.String(), "auth webhook failed") || !strings.Contains(logs.String(), tc.logReason) {
				t.Errorf("log %q, want the reason %s", logs, tc.logReason)
			}
			if strings.Contains(logs.String()+err.Error(), "tok-secret") {
				t.Errorf("the token is in the log or the error: %s %v", logs, err)
			}
		})
	}
}

func TestUnreachable(t *testing.T) {
	checkLeaks(t)
	w, logs := newWebhook(t, Config{URL: "http://" + testutil.RefusedAddr(t) + "/check"})
	_, err := w.Authenticate(context.Background(), creds("tok"))
	if err == nil || errors.Is(err, gateway.ErrUnauthorized) || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("err = %v, want an unreachable failure", err)
	}
	if !strings.Contains(logs.String(), "reason=unreachable") {
		t.Errorf("log %q", logs)
	}
}

// TestTLS: the webhook's certificate is verified against ca_file's roots.
func TestTLS(t *testing.T) {
	checkLeaks(t)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, `{"identity": "tls"}`)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake
	srv.StartTLS()
	defer srv.Close()
	w, _ := newWebhook(t, Config{URL: srv.URL, RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs})
	if id, err := w.Authenticate(context.Background(), creds("tok")); err != nil || id.Name != "tls" {
		t.Fatalf("with the CA: %v, %v", id, err)
	}
	untrusting, _ := newWebhook(t, Config{URL: srv.URL})
	if _, err := untrusting.Authenticate(context.Background(), creds("tok")); err == nil || errors.Is(err, gateway.ErrUnauthorized) {
		t.Fatalf("without the CA: err = %v, want a failure", err)
	}
}

func TestNoRequest(t *testing.T) {
	h := newHook(t, reply(200, ""))
	w, _ := newWebhook(t, Config{URL: h.srv.URL})
	for _, c := range []gateway.Credentials{{}, {User: "alice", Password: "pw"}, {Token: "a\nb"}, {Token: "a\x00b"}} {
		if _, err := w.Authenticate(context.Background(), c); !errors.Is(err, gateway.ErrUnauthorized) {
			t.Errorf("%+v: err = %v, want a refusal", c, err)
		}
	}
	if n := h.calls.Load(); n != 0 {
		t.Fatalf("%d requests, want none", n)
	}
}

func TestCache(t *testing.T) {
	checkLeaks(t)
	ctx := context.Background()
	status := atomic.Int64{}
	status.Store(200)
	h := newHook(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(int(status.Load()))
		if status.Load() == 401 {
			io.WriteString(w, "revoked")
		}
	})
	w, _ := newWebhook(t, Config{URL: h.srv.URL, CacheTTL: time.Minute, CacheSize: 2})
	now := time.Now()
	w.now = func() time.Time { return now }
	expect := func(what string, c gateway.Credentials, calls int64, refused bool) {
		t.Helper()
		_, err := w.Authenticate(ctx, c)
		if refused != errors.Is(err, gateway.ErrUnauthorized) || !refused && err != nil {
			t.Fatalf("%s: err = %v, want refused %v", what, err, refused)
		}
		if n := h.calls.Load(); n != calls {
			t.Fatalf("%s: %d requests, want %d", what, n, calls)
		}
	}
	expect("first", creds("a", "web"), 1, false)
	expect("same again", creds("a", "web"), 1, false)
	expect("other names", creds("a", "www"), 2, false)
	expect("other user", gateway.Credentials{Token: "a", User: "bob", Names: []string{"web"}}, 3, false)
	expect("other token", creds("b", "web"), 4, false) // evicts the oldest: size 2
	expect("evicted", creds("a", "web"), 5, false)
	status.Store(401)
	expect("cached allow outlives a revocation", creds("a", "web"), 5, false)
	now = now.Add(time.Minute)
	expect("expired", creds("a", "web"), 6, true)
	status.Store(200)
	expect("cached refusal", creds("a", "web"), 6, true)
	status.Store(500)
	now = now.Add(time.Minute)
	for i := range 2 {
		_, err := w.Authenticate(ctx, creds("a", "web"))
		if err == nil || errors.Is(err, gateway.ErrUnauthorized) {
			t.Fatalf("failure %d: err = %v, want a failure", i, err)
		}
	}
	if n := h.calls.Load(); n != 8 {
		t.Fatalf("failures: %d requests, want 8: a failure is not cached", n)
	}
}

func TestNoCache(t *testing.T) {
	h := newHook(t, reply(200, ""))
	w, _ := newWebhook(t, Config{URL: h.srv.URL})
	for range 3 {
		if _, err := w.Authenticate(context.Background(), creds("a", "web")); err != nil {
			t.Fatal(err)
		}
	}
	if n := h.calls.Load(); n != 3 {
		t.Fatalf("%d requests, want 3: no cache by default", n)
	}
}

func TestConfigErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		c    Config
		want string
	}{
		"no url":        {Config{}, "url"},
		"not http":      {Config{URL: "ftp://x/"}, "url"},
		"no host":       {Config{URL: "https:///check"}, "url"},
		"bad scheme":    {Config{URL: "https://x/", Scheme: "Bear er"}, "scheme"},
		"neg timeout":   {Config{URL: "https://x/", Timeout: -time.Second}, "negative"},
		"neg cache":     {Config{URL: "https://x/", CacheTTL: -time.Second}, "negative"},
		"neg cacheSize": {Config{URL: "https://x/", CacheSize: -1}, "negative"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := New(tc.c); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	var logs testutil.Buffer
	w, err := New(Config{URL: "http://auth.example/check", Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	if !strings.Contains(logs.String(), "plain http") {
		t.Errorf("no warning for a plain http webhook: %q", &logs)
	}
}

// FuzzAnswer feeds the readers of the webhook's answers arbitrary bodies:
// no panic, and what they pass on is printable and bounded.
func FuzzAnswer(f *testing.F) {
	f.Add([]byte(`{"identity": "alice", "names": ["web", "web-*"]}`))
	f.Add([]byte("token expired\nmore"))
	f.Add([]byte(`{"identity": "a\u202eb"}`))
	f.Add([]byte(""))
	w := &Webhook{}
	f.Fuzz(func(t *testing.T, body []byte) {
		if r := firstLine(body); len([]rune(r)) > MaxReason || strings.ContainsAny(r, "\n\r\x1b") {
			t.Fatalf("reason %q", r)
		}
		id, err := w.identity("tok", []string{"web"}, body)
		if err != nil {
			return
		}
		if id.Name == "" || len(id.Name) > MaxIdentity || strings.ContainsAny(id.Name, "\n\r\x1b") {
			t.Fatalf("identity %q", id.Name)
		}
	})
}
