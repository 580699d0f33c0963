package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diglett/diglett/gateway"
)

// call is one request an endpoint received.
type call struct {
	header http.Header
	body   []byte
}

// endpoint is a test webhook: it records each call and answers with the
// next of its answers (the last one once they run out).
type endpoint struct {
	*httptest.Server
	mu      sync.Mutex
	calls   []call
	answers []func(w http.ResponseWriter, r *http.Request)
}

func newEndpoint(t *testing.T, tls bool, answers ...func(w http.ResponseWriter, r *http.Request)) *endpoint {
	t.Helper()
	e := &endpoint{answers: answers}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		e.mu.Lock()
		e.calls = append(e.calls, call{r.Header.Clone(), body})
		answer := func(http.ResponseWriter, *http.Request) {}
		if n := len(e.calls); len(e.answers) > 0 {
			answer = e.answers[min(n, len(e.answers))-1]
		}
		e.mu.Unlock()
		if r.Method != http.MethodPost {
			http.Error(w, "want POST", http.StatusMethodNotAllowed)
			return
		}
		answer(w, r)
	})
	if tls {
		e.Server = httptest.NewTLSServer(h)
	} else {
		e.Server = httptest.NewServer(h)
	}
	t.Cleanup(e.Close)
	return e
}

func (e *endpoint) Calls() []call {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]call(nil), e.calls...)
}

func status(code int, body string) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(code)
		io.WriteString(w, body)
	}
}

func newWebhook(t *testing.T, c Config) *Webhook {
	t.Helper()
	c.Logger = slog.New(slog.DiscardHandler)
	w, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	w.now = func() time.Time { return time.Date(2026, 12, 2, 3, 4, 5, 6, time.FixedZone("x", 3600)) }
	return w
}

// verify checks c's signature with secret, as an endpoint would.
func verify(secret []byte, c call) bool {
	m := hmac.New(sha256.New, secret)
	m.Write(c.body)
	want := "sha256=" + hex.EncodeToString(m.Sum(nil))
	return hmac.Equal([]byte(c.header.Get("X-Diglett-Signature")), []byte(want))
}

// TestEvents: register, unregister and sweep are POSTed as JSON with the
// event in a header, signed with the secret; a route is unregistered
// once.
func TestEvents(t *testing.T) {
	t.Parallel()
	e := newEndpoint(t, false, status(http.StatusNoContent, ""))
	secret := []byte("s3cret key")
	w := newWebhook(t, Config{URL: e.URL + "/hook", Secret: secret})

	c, err := w.Register(context.Background(), gateway.Route{Name: "web", Port: 33605, Identity: "alice", Hosts: []string{"web.example.test", "www.example.org"}})
	if err != nil {
		t.Fatal(err)
	}
	cc, ok := c.(gateway.ContextCloser)
	if !ok {
		t.Fatalf("Register returned a %T, want a gateway.ContextCloser", c)
	}
	if err := cc.CloseContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Register(context.Background(), gateway.Route{Name: "tcp", Port: 1, Identity: "bob"}); err != nil {
		t.Fatal(err)
	}
	const at = `"time":"2026-12-02T02:04:05.000000006Z"`
	want := []struct{ event, body string }{
		{"register", `{"event":"register","name":"web","hosts":["web.example.test","www.example.org"],"port":33605,"identity":"alice",` + at + `}`},
		{"unregister", `{"event":"unregister","name":"web","hosts":["web.example.test","www.example.org"],"port":33605,"identity":"alice",` + at + `}`},
		{"sweep", `{"event":"sweep","name":"","hosts":[],"port":0,"identity":"",` + at + `}`},
		{"register", `{"event":"register","name":"tcp","hosts":[],"port":1,"identity":"bob",` + at + `}`},
	}
	calls := e.Calls()
	if len(calls) != len(want) {
		t.Fatalf("%d calls, want %d (unregister once)", len(calls), len(want))
	}
	for i, c := range calls {
		if string(c.body) != want[i].body {
			t.Errorf("call %d: body\n%s\nwant\n%s", i, c.body, want[i].body)
		}
		if got := c.header.Get("X-Diglett-Event"); got != want[i].event {
			t.Errorf("call %d: X-Diglett-Event %q, want %q", i, got, want[i].event)
		}
		if got := c.header.Get("Content-Type"); got != "application/json" {
			t.Errorf("call %d: Content-Type %q", i, got)
		}
		if !verify(secret, c) {
			t.Errorf("call %d: signature %q does not verify", i, c.header.Get("X-Diglett-Signature"))
		}
		if verify([]byte("another key"), c) {
			t.Errorf("call %d: signature verifies with another key", i)
		}
		var ev Event
		if err := json.Unmarshal(c.body, &ev); err != nil || ev.Event != want[i].event {
			t.Errorf("call %d: the body does not decode as an Event: %+v, %v", i, ev, err)
		}
	}

	// No secret, no signature.
	plain := newWebhook(t, Config{URL: e.URL})
	if err := plain.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	calls = e.Calls()
	if h := calls[len(calls)-1].header; h.Get("X-Diglett-Signature") != "" {
		t.Errorf("signed with no secret: %q", h.Get("X-Diglett-Signature"))
	}
}

// TestFailures: any answer but 2xx is an error with its status and the
// first line of its body, bounded; a later 2xx succeeds.
func TestFailures(t *testing.T) {
	t.Parallel()
	e := newEndpoint(t, false,
		status(http.StatusInternalServerError, "\n  database down\x1b[2J\nsecond line\n"),
		status(http.StatusBadGateway, strings.Repeat("x", 1<<20)),
		status(http.StatusOK, strings.Repeat("ok\n", 1<<20)),
		status(http.StatusServiceUnavailable, ""),
	)
	w := newWebhook(t, Config{URL: e.URL})
	route := gateway.Route{Name: "web", Port: 1}
	_, err := w.Register(context.Background(), route)
	if want := `webhook register: 500 Internal Server Error: database down\x1b[2J`; err == nil || err.Error() != want {
		t.Errorf("error %v\nwant  %s", err, want)
	}
	_, err = w.Register(context.Background(), route)
	if err == nil || !strings.HasPrefix(err.Error(), "webhook register: 502 Bad Gateway: xxx") || len(err.Error()) > 300 {
		t.Errorf("error %.400v, want 502 and the start of the body", err)
	}
	c, err := w.Register(context.Background(), route)
	if err != nil {
		t.Fatalf("a 200 with a long body: %v", err)
	}
	for range 2 {
		if err := c.Close(); err == nil || err.Error() != "webhook unregister: 503 Service Unavailable" {
			t.Errorf("unregister: %v, want 503", err)
		}
	}
	if n := len(e.Calls()); n != 5 {
		t.Errorf("%d calls, want 5: a failed unregister is tried again", n)
	}
}

// TestTimeout: an endpoint that does not answer costs the timeout, and
// the error says so.
func TestTimeout(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	e := newEndpoint(t, false, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	defer close(release)
	w := newWebhook(t, Config{URL: e.URL, Timeout: 300 * time.Millisecond})
	done := make(chan error, 1)
	go func() {
		_, err := w.Register(context.Background(), gateway.Route{Name: "web"})
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || err.Error() != "webhook register: timed out after 300ms" {
			t.Errorf("error %v, want timed out after 300ms", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a webhook that does not answer was not given up")
	}

	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(errors.New("gateway closing"))
	if err := w.Sweep(ctx); err == nil || err.Error() != "webhook sweep: stopped: gateway closing" {
		t.Errorf("error %v, want stopped: gateway closing", err)
	}
}

// TestRedirect: a redirect is a failure, and the event is not sent on.
func TestRedirect(t *testing.T) {
	t.Parallel()
	other := newEndpoint(t, false, status(http.StatusOK, ""))
	e := newEndpoint(t, false, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/elsewhere", http.StatusTemporaryRedirect)
	})
	w := newWebhook(t, Config{URL: e.URL, Secret: []byte("k")})
	_, err := w.Register(context.Background(), gateway.Route{Name: "web"})
	want := "webhook register: 307 Temporary Redirect: redirect to " + other.URL + "/elsewhere not followed"
	if err == nil || err.Error() != want {
		t.Errorf("error %v\nwant  %s", err, want)
	}
	if n := len(other.Calls()); n != 0 {
		t.Errorf("the redirect was followed: %d calls", n)
	}
}

// TestTLS: an https endpoint is verified with the configured roots.
func TestTLS(t *testing.T) {
	t.Parallel()
	e := newEndpoint(t, true, status(http.StatusOK, ""))
	if err := newWebhook(t, Config{URL: e.URL}).Sweep(context.Background()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("an endpoint of an unknown authority: %v, want a certificate error", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(e.Certificate())
	if err := newWebhook(t, Config{URL: e.URL, RootCAs: roots}).Sweep(context.Background()); err != nil {
		t.Errorf("with its CA: %v", err)
	}
}

// TestConfig: what New refuses, and its defaults.
func TestConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		c    Config
		want string
	}{
		{Config{}, "url: want an http:// or https:// URL"},
		{Config{URL: "ftp://x/"}, "url: want"},
		{Config{URL: "http:///path"}, "url: want"},
		{Config{URL: "http://x/", Secret: []byte{}}, "secret: empty"},
		{Config{URL: "http://x/", Timeout: -1}, "timeout cannot be negative"},
	} {
		if _, err := New(tc.c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want %q", tc.c, err, tc.want)
		}
	}
	w, err := New(Config{URL: "https://user:pw@hooks.internal/diglett"})
	if err != nil || w.timeout != DefaultTimeout || w.String() != "webhook https://user:xxxxx@hooks.internal/diglett" {
		t.Errorf("New = %v, %v", w, err)
	}
	if got := Sign([]byte("key"), []byte("body")); !bytes.HasPrefix([]byte(got), []byte("sha256=")) || len(got) != len("sha256=")+64 {
		t.Errorf("Sign = %q", got)
	}
}
