package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diglett/diglett/gateway"
)

// fakeGateway records what the API asked of it.
type fakeGateway struct {
	mu           sync.Mutex
	disconnected []string // "id:reason"
	released     []string
}

var since = time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC)

func (f *fakeGateway) Tunnels() []gateway.TunnelInfo {
	return []gateway.TunnelInfo{{
		Name: "web", Hosts: []string{"web.example.org"}, Port: 30001, Identity: "alice", State: gateway.StateLive,
		Members:  []gateway.MemberInfo{{Session: 7, Address: "192.0.2.1:5000", Transport: "quic", Since: since}},
		Visitors: 2,
	}, {
		Name: "old", Hosts: []string{}, Port: 30002, Identity: "bob", State: gateway.StateLeased,
		LeaseEnds: since.Add(time.Minute), Members: []gateway.MemberInfo{},
	}}
}

func (f *fakeGateway) Agents() []gateway.AgentInfo {
	return []gateway.AgentInfo{{ID: 7, Identity: "alice", Address: "192.0.2.1:5000", Transport: "quic", Since: since, Names: []string{"web"}}}
}

func (f *fakeGateway) Leases() []gateway.LeaseInfo {
	return []gateway.LeaseInfo{{Name: "old", Identity: "bob", Port: 30002, Ends: since.Add(time.Minute)}}
}

func (f *fakeGateway) Disconnect(id uint64, reason string) error {
	if id != 7 {
		return fmt.Errorf("%w: %d", gateway.ErrNoSession, id)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.disconnected = append(f.disconnected, fmt.Sprintf("%d:%s", id, reason))
	return nil
}

func (f *fakeGateway) ReleaseLease(name string) error {
	switch name {
	case "old":
		f.mu.Lock()
		defer f.mu.Unlock()
		f.released = append(f.released, name)
		return nil
	case "web":
		return fmt.Errorf("%w: %q", gateway.ErrTunnelLive, name)
	}
	return fmt.Errorf("%w: %q", gateway.ErrNoTunnel, name)
}

var _ Gateway = (*fakeGateway)(nil)

func newTestServer(t *testing.T, cfg Config) (*httptest.Server, *fakeGateway) {
	t.Helper()
	fg := &fakeGateway{}
	if cfg.Gateway == nil {
		cfg.Gateway = fg
	}
	h, err := Handler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, fg
}

type response struct {
	code   int
	header http.Header
	body   string
}

func do(t *testing.T, srv *httptest.Server, method, path, token, body string) response {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{code: resp.StatusCode, header: resp.Header, body: string(b)}
}

// errorOf is the error field of a JSON error body, or fails.
func errorOf(t *testing.T, r response) string {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("error body is %q, want JSON: %s", ct, r.body)
	}
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(r.body), &e); err != nil || e.Error == "" {
		t.Fatalf("error body %q: want {\"error\": ...}", r.body)
	}
	return e.Error
}

func TestEndpoints(t *testing.T) {
	t.Parallel()
	srv, fg := newTestServer(t, Config{
		Reload: func(context.Context) (map[string]any, error) {
			return map[string]any{"added": []string{"carol"}}, nil
		},
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "m 1\n") }),
		Extra:   map[string]http.Handler{"/extra/": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "extra") })},
	})
	tests := []struct {
		method, path, body string
		code               int
		want               string // in the body
	}{
		{"GET", "/healthz", "", 200, "ok"},
		{"GET", "/readyz", "", 200, "ready"},
		{"GET", "/debug/pprof/", "", 200, "goroutine"},
		{"GET", "/metrics", "", 200, "m 1"},
		{"GET", "/extra/x", "", 200, "extra"},
		{"GET", "/api/v1/tunnels", "", 200, `"lease_ends": "2026-12-02T01:01:00Z"`},
		{"GET", "/api/v1/tunnels", "", 200, `"members": [
        {
          "session": 7,
          "address": "192.0.2.1:5000",
          "transport": "quic",
          "since": "2026-12-02T01:00:00Z"
        }
      ],
      "visitors": 2`},
		{"GET", "/api/v1/agents", "", 200, `"names": [
        "web"
      ]`},
		{"GET", "/api/v1/leases", "", 200, `"ends": "2026-12-02T01:01:00Z"`},
		{"POST", "/api/v1/agents/7/disconnect", `{"reason": "maintenance"}`, 200, `"disconnected": 7`},
		{"POST", "/api/v1/agents/7/disconnect", "", 200, `"disconnected": 7`},
		{"DELETE", "/api/v1/leases/old", "", 200, `"released": "old"`},
		{"POST", "/api/v1/reload", "", 200, `"added": [`},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			r := do(t, srv, tc.method, tc.path, "", tc.body)
			if r.code != tc.code || !strings.Contains(r.body, tc.want) {
				t.Fatalf("got %d %s\nwant %d with %s", r.code, r.body, tc.code, tc.want)
			}
		})
	}
	fg.mu.Lock()
	defer fg.mu.Unlock()
	if got := strings.Join(fg.disconnected, ","); got != "7:maintenance,7:" {
		t.Errorf("disconnected %q", got)
	}
	if got := strings.Join(fg.released, ","); got != "old" {
		t.Errorf("released %q", got)
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	srv, _ := newTestServer(t, Config{})
	tests := []struct {
		method, path, body string
		code               int
		want               string // in the error
	}{
		{"POST", "/api/v1/tunnels", "", 405, "use GET"},
		{"DELETE", "/api/v1/agents", "", 405, "use GET"},
		{"GET", "/api/v1/agents/7/disconnect", "", 405, "use POST"},
		{"POST", "/api/v1/leases/old", "", 405, "use DELETE"},
		{"GET", "/api/v1/reload", "", 405, "use POST"},
		{"POST", "/healthz", "", 405, "use GET"},
		{"POST", "/api/v1/agents/x/disconnect", "", 400, `agent id "x"`},
		{"POST", "/api/v1/agents/-1/disconnect", "", 400, `agent id "-1"`},
		{"POST", "/api/v1/agents/0/disconnect", "", 400, `agent id "0"`},
		{"POST", "/api/v1/agents/99999999999999999999/disconnect", "", 400, "agent id"},
		{"POST", "/api/v1/agents/8/disconnect", "", 404, "no such agent session: 8"},
		{"POST", "/api/v1/agents/7/disconnect", "{", 400, "want JSON"},
		{"POST", "/api/v1/agents/7/disconnect", `{"reason": "` + strings.Repeat("x", maxBodyBytes) + `"}`, 400, "larger than 65536 bytes"},
		{"DELETE", "/api/v1/leases/nope", "", 404, `no such tunnel: "nope"`},
		{"DELETE", "/api/v1/leases/web", "", 409, "tunnel is live"},
		{"POST", "/api/v1/reload", "", 501, "cannot reload"},
		{"GET", "/api/v1/nothing", "", 404, "no such endpoint"},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			r := do(t, srv, tc.method, tc.path, "", tc.body)
			if r.code != tc.code {
				t.Fatalf("got %d %s, want %d", r.code, r.body, tc.code)
			}
			if msg := errorOf(t, r); !strings.Contains(msg, tc.want) {
				t.Fatalf("error %q, want %q in it", msg, tc.want)
			}
			if r.code == 405 && r.header.Get("Allow") == "" {
				t.Error("405 without an Allow header")
			}
		})
	}
}

func TestReloadErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err  error
		code int
		want string
	}{
		{fmt.Errorf("no --tokens or --config file: %w", ErrNothingToReload), 409, "nothing to reload"},
		{errors.New("tokens.yaml:3: bad token"), 422, "reload refused, the configuration in force stays: tokens.yaml:3: bad token"},
		{fmt.Errorf("recheck: %w", context.DeadlineExceeded), 503, "deadline exceeded"},
	}
	for _, tc := range tests {
		t.Run(tc.want, func(t *testing.T) {
			srv, _ := newTestServer(t, Config{Reload: func(context.Context) (map[string]any, error) { return nil, tc.err }})
			r := do(t, srv, "POST", "/api/v1/reload", "", "")
			if r.code != tc.code {
				t.Fatalf("got %d %s, want %d", r.code, r.body, tc.code)
			}
			if msg := errorOf(t, r); !strings.Contains(msg, tc.want) {
				t.Fatalf("error %q, want %q in it", msg, tc.want)
			}
		})
	}
}

func TestToken(t *testing.T) {
	t.Parallel()
	srv, _ := newTestServer(t, Config{Token: "s3cret", Metrics: http.NotFoundHandler()})
	for _, path := range []string{"/api/v1/tunnels", "/api/v1/agents", "/debug/pprof/", "/metrics", "/api/v1/nothing"} {
		for _, token := range []string{"", "wrong", "s3cre", "s3cretx", "S3CRET"} {
			r := do(t, srv, "GET", path, token, "")
			if r.code != 401 {
				t.Fatalf("%s with token %q: got %d, want 401", path, token, r.code)
			}
			if msg := errorOf(t, r); !strings.Contains(msg, "bearer token") {
				t.Fatalf("%s: error %q", path, msg)
			}
			if r.header.Get("WWW-Authenticate") == "" {
				t.Fatalf("%s: 401 without WWW-Authenticate", path)
			}
			if strings.Contains(r.body, "s3cret") {
				t.Fatalf("%s: the token is in the answer: %s", path, r.body)
			}
		}
	}
	// The right token opens the API; the probes need none.
	if r := do(t, srv, "GET", "/api/v1/tunnels", "s3cret", ""); r.code != 200 {
		t.Fatalf("with the token: %d %s", r.code, r.body)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if r := do(t, srv, "GET", path, "", ""); r.code != 200 {
			t.Fatalf("%s without a token: %d %s", path, r.code, r.body)
		}
	}
}

func TestReady(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var state error = errors.New("starting")
	srv, _ := newTestServer(t, Config{Ready: func() error {
		mu.Lock()
		defer mu.Unlock()
		return state
	}})
	set := func(err error) {
		mu.Lock()
		state = err
		mu.Unlock()
	}
	if r := do(t, srv, "GET", "/readyz", "", ""); r.code != 503 || !strings.Contains(r.body, "not ready: starting") {
		t.Fatalf("starting: %d %s", r.code, r.body)
	}
	set(nil)
	if r := do(t, srv, "GET", "/readyz", "", ""); r.code != 200 {
		t.Fatalf("ready: %d %s", r.code, r.body)
	}
	set(errors.New("shutting down"))
	if r := do(t, srv, "GET", "/readyz", "", ""); r.code != 503 || !strings.Contains(r.body, "shutting down") {
		t.Fatalf("shutting down: %d %s", r.code, r.body)
	}
	// Health stays up while the process serves.
	if r := do(t, srv, "GET", "/healthz", "", ""); r.code != 200 || r.body != "ok\n" {
		t.Fatalf("healthz: %d %q", r.code, r.body)
	}
}

func TestHandlerConfig(t *testing.T) {
	t.Parallel()
	if _, err := Handler(Config{}); err == nil {
		t.Error("no gateway: no error")
	}
	_, err := Handler(Config{Gateway: &fakeGateway{}, Extra: map[string]http.Handler{"/api/v1/tunnels": http.NotFoundHandler()}})
	if err == nil || !strings.Contains(err.Error(), `extra handler "/api/v1/tunnels"`) {
		t.Errorf("clashing extra handler: %v", err)
	}
	if _, err := Handler(Config{Gateway: &fakeGateway{}, Extra: map[string]http.Handler{"/x/": nil}}); err == nil {
		t.Error("nil extra handler: no error")
	}
}
