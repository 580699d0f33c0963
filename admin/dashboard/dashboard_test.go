package dashboard_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/diglett/diglett/admin"
	"github.com/diglett/diglett/admin/dashboard"
	"github.com/diglett/diglett/gateway"
)

type noGateway struct{}

func (noGateway) Tunnels() []gateway.TunnelInfo   { return nil }
func (noGateway) Agents() []gateway.AgentInfo     { return nil }
func (noGateway) Leases() []gateway.LeaseInfo     { return nil }
func (noGateway) Disconnect(uint64, string) error { return nil }
func (noGateway) ReleaseLease(string) error       { return nil }

// On a management listener with a token, the page's files come without
// it and hold no data; the dashboard's API, like the rest, asks for it.
func TestPageBehindToken(t *testing.T) {
	h, err := admin.Handler(admin.Config{
		Gateway: noGateway{},
		Token:   "s3cret",
		Page:    dashboard.Page(),
		Extra: map[string]http.Handler{
			"/api/v1/series": dashboard.NewSeries(0),
			"/api/v1/errors": dashboard.NewErrorLog(0),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	get := func(method, path, token string) (int, http.Header, string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(body)
	}
	for _, c := range []struct{ path, ctype, has string }{
		{"/", "text/html", `<script src="static/app.js">`},
		{"/static/app.js", "javascript", "sessionStorage"},
		{"/static/style.css", "text/css", "body"},
	} {
		code, hdr, body := get("GET", c.path, "")
		if code != 200 || !strings.Contains(hdr.Get("Content-Type"), c.ctype) || !strings.Contains(body, c.has) {
			t.Errorf("GET %s without the token: %d %s", c.path, code, hdr.Get("Content-Type"))
		}
		if !strings.Contains(hdr.Get("Content-Security-Policy"), "script-src 'self'") {
			t.Errorf("GET %s: no content security policy", c.path)
		}
	}
	for _, c := range []struct {
		method, path, token string
		want                int
	}{
		{"GET", "/api/v1/series", "", 401},
		{"GET", "/api/v1/errors", "", 401},
		{"GET", "/api/v1/tunnels", "", 401},
		{"GET", "/static/../api/v1/tunnels", "", 401},
		{"GET", "/static/x/../../api/v1/tunnels", "", 401},
		{"GET", "/debug/pprof/", "", 401},
		{"POST", "/", "", 401},
		{"GET", "/static/nothing.js", "", 404},
		{"GET", "/api/v1/series", "s3cret", 200},
		{"GET", "/api/v1/errors", "s3cret", 200},
		{"DELETE", "/api/v1/errors", "s3cret", 405},
	} {
		if code, _, body := get(c.method, c.path, c.token); code != c.want {
			t.Errorf("%s %s (token %q): %d, want %d: %s", c.method, c.path, c.token, code, c.want, body)
		}
	}
}

// Without a page, / is not served.
func TestNoPage(t *testing.T) {
	h, err := admin.Handler(admin.Config{Gateway: noGateway{}})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if rec.Code != http.StatusNotFound {
		t.Errorf("GET / without a page: %d", rec.Code)
	}
}
