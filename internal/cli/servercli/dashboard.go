package servercli

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/diglett/diglett/admin/dashboard"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/ingress"
	"github.com/diglett/diglett/internal/metrics"
)

// The gateway's dashboard on the management listener: the page, the
// recent warnings and errors of the gateway's log, kept by a tee of its
// log handler, and the series of its tunnels, kept by a tee of its
// observer beside the metrics.

// gatewayObserver is what the gateway and the ingress are told.
type gatewayObserver interface {
	gateway.Observer
	ingress.Observer
}

// dashboardState is what the dashboard keeps; nil when the management
// listener is off.
type dashboardState struct {
	errors *dashboard.ErrorLog
	series *dashboard.Series
}

// newDashboard returns the dashboard's state, or nil when on is false.
func newDashboard(on bool) *dashboardState {
	if !on {
		return nil
	}
	return &dashboardState{
		errors: dashboard.NewErrorLog(dashboard.DefaultErrors),
		series: dashboard.NewSeries(dashboard.DefaultMaxTunnels),
	}
}

// logger is log, its warnings and errors also kept for the dashboard.
func (d *dashboardState) logger(log *slog.Logger) *slog.Logger {
	if d == nil {
		return log
	}
	return slog.New(d.errors.Handler(log.Handler()))
}

// observer is m, its events also told to the dashboard's series.
func (d *dashboardState) observer(m *metrics.Metrics) gatewayObserver {
	if d == nil {
		return m
	}
	return seriesObserver{Metrics: m, series: d.series}
}

// mount adds the dashboard's API to extra and returns its page.
func (d *dashboardState) mount(extra map[string]http.Handler) http.Handler {
	if d == nil {
		return nil
	}
	extra["/api/v1/series"] = d.series
	extra["/api/v1/errors"] = d.errors
	return dashboard.Page()
}

// seriesObserver tells the metrics every event and the series those it
// charts.
type seriesObserver struct {
	*metrics.Metrics
	series *dashboard.Series
}

var _ gatewayObserver = seriesObserver{}

func (o seriesObserver) TunnelChanged(tunnel string, state gateway.TunnelState, members int) {
	o.Metrics.TunnelChanged(tunnel, state, members)
	o.series.TunnelChanged(tunnel, state, members)
}

func (o seriesObserver) VisitorOpened(tunnel string) {
	o.Metrics.VisitorOpened(tunnel)
	o.series.VisitorOpened(tunnel)
}

func (o seriesObserver) VisitorClosed(tunnel string, in, out int64) {
	o.Metrics.VisitorClosed(tunnel, in, out)
	o.series.VisitorClosed(tunnel, in, out)
}

// UDP flows are charted as visitors.
func (o seriesObserver) UDPFlowOpened(tunnel string) {
	o.Metrics.UDPFlowOpened(tunnel)
	o.series.VisitorOpened(tunnel)
}

func (o seriesObserver) UDPFlowClosed(tunnel string, in, out int64) {
	o.Metrics.UDPFlowClosed(tunnel, in, out)
	o.series.VisitorClosed(tunnel, in, out)
}

func (o seriesObserver) RequestDone(tunnel string, status int, in, out int64, d time.Duration) {
	o.Metrics.RequestDone(tunnel, status, in, out, d)
	o.series.RequestDone(tunnel, status, in, out, d)
}
