package servercli

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/metrics"
)

// Without a management listener nothing is kept and nothing is mounted.
func TestDashboardOff(t *testing.T) {
	d := newDashboard(false)
	log := slog.New(slog.DiscardHandler)
	m := metrics.New()
	extra := map[string]http.Handler{}
	if d.logger(log) != log || d.observer(m) != gatewayObserver(m) || d.mount(extra) != nil || len(extra) != 0 {
		t.Fatal("a dashboard without a management listener")
	}
}

// With one, the log's warnings and the tunnels' traffic reach both the
// usual places and the dashboard's endpoints.
func TestDashboardOn(t *testing.T) {
	d := newDashboard(true)
	var out bytes.Buffer
	log := d.logger(slog.New(slog.NewTextHandler(&out, nil)))
	m := metrics.New()
	obs := d.observer(m)
	extra := map[string]http.Handler{}
	if d.mount(extra) == nil || extra["/api/v1/series"] == nil || extra["/api/v1/errors"] == nil {
		t.Fatalf("mounted: %v", extra)
	}

	log.Warn("something odd", "tunnel", "web")
	obs.TunnelChanged("web", gateway.TunnelLive, 1)
	obs.RequestStarted("web")
	obs.RequestDone("web", 200, 3, 4, time.Millisecond)
	obs.VisitorOpened("web")
	obs.VisitorClosed("web", 5, 6)

	if !strings.Contains(out.String(), "something odd") {
		t.Errorf("the log lost a line: %q", out.String())
	}
	body := func(path string, h http.Handler) string {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec.Body.String()
	}
	if got := body("/api/v1/errors", extra["/api/v1/errors"]); !strings.Contains(got, `"msg": "something odd"`) {
		t.Errorf("errors: %s", got)
	}
	series := body("/api/v1/series", extra["/api/v1/series"])
	for _, want := range []string{`"tunnel": "web"`, "\n        1\n"} {
		if !strings.Contains(series, want) {
			t.Errorf("series without %q: %s", want, series)
		}
	}
	scrape := body("/metrics", m.Handler())
	for _, want := range []string{
		`diglett_http_requests_total{code="200",tunnel="web"} 1`,
		`diglett_visitors_total{kind="tcp",tunnel="web"} 1`,
		`diglett_visitor_bytes_total{direction="out",tunnel="web"} 10`,
		`diglett_tunnels{state="live"} 1`,
	} {
		if !strings.Contains(scrape, want) {
			t.Errorf("metrics without %s", want)
		}
	}
}
