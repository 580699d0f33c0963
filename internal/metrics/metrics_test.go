package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/diglett/diglett/gateway"
)

// value is the value of the series of metric name with labels (name=value
// pairs), and whether it exists.
func value(t *testing.T, m *Metrics, name string, labels ...string) (float64, bool) {
	t.Helper()
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	series:
		for _, s := range f.GetMetric() {
			have := map[string]string{}
			for _, lp := range s.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue series
				}
			}
			return number(s), true
		}
	}
	return 0, false
}

func number(s *dto.Metric) float64 {
	switch {
	case s.Gauge != nil:
		return s.Gauge.GetValue()
	case s.Counter != nil:
		return s.Counter.GetValue()
	case s.Histogram != nil:
		return float64(s.Histogram.GetSampleCount())
	}
	return 0
}

func expect(t *testing.T, m *Metrics, want float64, name string, labels ...string) {
	t.Helper()
	got, ok := value(t, m, name, labels...)
	if !ok {
		t.Errorf("%s%v: no such series", name, labels)
		return
	}
	if got != want {
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

func TestEvents(t *testing.T) {
	m := New()
	m.SessionOpened("quic")
	m.SessionOpened("quic")
	m.SessionClosed("quic")
	m.TunnelChanged("web", gateway.TunnelLive, 1)
	m.TunnelChanged("web", gateway.TunnelLive, 2)
	m.TunnelChanged("db", gateway.TunnelLive, 1)
	m.TunnelChanged("db", gateway.TunnelLeased, 0)
	m.Registered("web")
	m.LeaseStarted("db")
	m.VisitorOpened("db")
	m.VisitorClosed("db", 10, 20)
	m.RequestStarted("web")
	m.RequestDone("web", 404, 3, 40, time.Millisecond)
	m.RequestStarted("web")
	m.RequestDone("web", 599, 0, 0, time.Millisecond)
	m.LoginRefused(gateway.RefusedCredentials)
	m.LoginRefused("free text from somewhere")
	m.RegistererFailed("caddy")

	expect(t, m, 1, "diglett_agent_sessions", "transport", "quic")
	expect(t, m, 0, "diglett_agent_sessions", "transport", "ws")
	expect(t, m, 1, "diglett_tunnels", "state", "live")
	expect(t, m, 1, "diglett_tunnels", "state", "leased")
	expect(t, m, 2, "diglett_tunnel_members", "tunnel", "web")
	expect(t, m, 1, "diglett_registrations_total")
	expect(t, m, 1, "diglett_leases_started_total")
	expect(t, m, 1, "diglett_visitors_total", "tunnel", "db", "kind", "tcp")
	expect(t, m, 0, "diglett_visitors_open", "tunnel", "db", "kind", "tcp")
	expect(t, m, 10, "diglett_visitor_bytes_total", "tunnel", "db", "direction", "in")
	expect(t, m, 20, "diglett_visitor_bytes_total", "tunnel", "db", "direction", "out")
	expect(t, m, 40, "diglett_visitor_bytes_total", "tunnel", "web", "direction", "out")
	expect(t, m, 3, "diglett_visitor_bytes_total", "tunnel", "web", "direction", "in")
	expect(t, m, 2, "diglett_visitors_total", "tunnel", "web", "kind", "http")
	expect(t, m, 1, "diglett_http_requests_total", "tunnel", "web", "code", "404")
	expect(t, m, 1, "diglett_http_requests_total", "tunnel", "web", "code", "5xx")
	expect(t, m, 2, "diglett_http_request_duration_seconds", "tunnel", "web")
	expect(t, m, 1, "diglett_login_refusals_total", "reason", "credentials")
	expect(t, m, 1, "diglett_login_refusals_total", "reason", "error")
	expect(t, m, 1, "diglett_registerer_failures_total", "registerer", "caddy")
	if _, ok := value(t, m, "go_goroutines"); !ok {
		t.Error("no Go runtime metrics")
	}
}

// UDP flows count as visitors of kind udp; dropped datagrams by reason,
// an unknown reason as other.
func TestUDPEvents(t *testing.T) {
	m := New()
	m.TunnelChanged("game", gateway.TunnelLive, 1)
	m.UDPFlowOpened("game")
	m.UDPFlowOpened("game")
	m.UDPFlowClosed("game", 100, 300)
	m.DatagramDropped("game", gateway.DropFlowLimit)
	m.DatagramDropped("game", gateway.DropFlowLimit)
	m.DatagramDropped("game", gateway.DropTooLarge)
	m.DatagramDropped("game", "unheard of")

	expect(t, m, 2, "diglett_visitors_total", "tunnel", "game", "kind", "udp")
	expect(t, m, 1, "diglett_visitors_open", "tunnel", "game", "kind", "udp")
	expect(t, m, 100, "diglett_visitor_bytes_total", "tunnel", "game", "direction", "in")
	expect(t, m, 300, "diglett_visitor_bytes_total", "tunnel", "game", "direction", "out")
	expect(t, m, 2, "diglett_udp_datagrams_dropped_total", "reason", "flow_limit")
	expect(t, m, 1, "diglett_udp_datagrams_dropped_total", "reason", "too_large")
	expect(t, m, 0, "diglett_udp_datagrams_dropped_total", "reason", "queue_full")
	expect(t, m, 1, "diglett_udp_datagrams_dropped_total", "reason", "other")
}

// A released tunnel's series go, once its last visitor has left.
func TestRemovedTunnelForgotten(t *testing.T) {
	m := New()
	m.TunnelChanged("web", gateway.TunnelLive, 1)
	m.RequestStarted("web")
	m.TunnelChanged("web", gateway.TunnelLeased, 0)
	m.LeaseExpired("web")
	m.TunnelChanged("web", gateway.TunnelRemoved, 0)
	expect(t, m, 1, "diglett_visitors_open", "tunnel", "web", "kind", "http")
	expect(t, m, 0, "diglett_tunnels", "state", "leased")
	m.RequestDone("web", 200, 0, 5, time.Millisecond)
	for _, name := range []string{"diglett_tunnel_members", "diglett_visitors_open", "diglett_visitors_total",
		"diglett_visitor_bytes_total", "diglett_http_requests_total", "diglett_http_request_duration_seconds"} {
		if _, ok := value(t, m, name, "tunnel", "web"); ok {
			t.Errorf("%s of a released tunnel is still there", name)
		}
	}
	expect(t, m, 1, "diglett_leases_expired_total")
	// The name registered again counts from new series, not into the
	// deleted ones the tunnel looked up before.
	m.TunnelChanged("web", gateway.TunnelLive, 1)
	m.RequestStarted("web")
	m.RequestDone("web", 200, 1, 7, time.Millisecond)
	expect(t, m, 1, "diglett_http_requests_total", "tunnel", "web", "code", "200")
	expect(t, m, 1, "diglett_visitors_total", "tunnel", "web", "kind", "http")
	expect(t, m, 0, "diglett_visitors_open", "tunnel", "web", "kind", "http")
	expect(t, m, 7, "diglett_visitor_bytes_total", "tunnel", "web", "direction", "out")
	expect(t, m, 1, "diglett_http_request_duration_seconds", "tunnel", "web")
	// An event for a tunnel never seen makes no series.
	m.VisitorClosed("ghost", 1, 1)
	if _, ok := value(t, m, "diglett_visitor_bytes_total", "tunnel", "ghost"); ok {
		t.Error("a visitor never opened made a series")
	}
}

func TestHandler(t *testing.T) {
	m := New()
	m.TunnelChanged("web", gateway.TunnelLive, 1)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{`diglett_tunnel_members{tunnel="web"} 1`, "# HELP diglett_tunnels ", "process_start_time_seconds"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("no %q in:\n%.2000s", want, b)
		}
	}
}

func TestCodeLabel(t *testing.T) {
	for code, want := range map[int]string{200: "200", 404: "404", 503: "503", 299: "2xx", 599: "5xx", 999: "other"} {
		if got := codeLabel(code); got != want {
			t.Errorf("codeLabel(%d) = %q, want %q", code, got, want)
		}
	}
}
