// Package metrics holds the gateway's metrics in the Prometheus format:
// collectors fed by the gateway's and the ingress's observer events
// (gateway.Observer, ingress.Observer) and by the ACME manager's
// (autotls.Config.OnCertificate), the Go runtime and the process,
// served by Handler on the management listener, never on a public port.
//
// Label values are bounded: transports, states, reasons, kinds,
// directions and certificate results are fixed sets (a certificate's host
// is never a label); registerers come from the configuration;
// HTTP codes are the known status codes, any other one counted under its
// class ("5xx"); tunnel names are those published (live or leased), each
// holding one public port, so there are at most as many as the gateway's
// port range has ports, and a tunnel's series go when its name is
// released.
package metrics

import (
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/ingress"
)

// Visitor kinds and byte directions, as label values.
const (
	kindTCP  = "tcp"
	kindHTTP = "http"
	kindUDP  = "udp" // a UDP flow: the datagrams of one visitor address
	dirIn    = "in"  // from visitors
	dirOut   = "out" // to visitors
)

// Metrics are the gateway's metrics. Hand it to gateway.Config.Observer
// and ingress.Config.Observer, and serve Handler. Its methods are safe for
// concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	sessions           *prometheus.GaugeVec
	tunnels            *prometheus.GaugeVec
	members            *prometheus.GaugeVec
	visitorsOpen       *prometheus.GaugeVec
	visitors           *prometheus.CounterVec
	bytes              *prometheus.CounterVec
	requests           *prometheus.CounterVec
	duration           *prometheus.HistogramVec
	loginRefusals      *prometheus.CounterVec
	registrations      prometheus.Counter
	leasesStarted      prometheus.Counter
	leasesExpired      prometheus.Counter
	registererFailures *prometheus.CounterVec
	certificates       *prometheus.CounterVec
	datagramsDropped   *prometheus.CounterVec

	mu   sync.Mutex
	byTn map[string]*tunnelSeries
}

// tunnelSeries is what Metrics keeps of a tunnel with series: its state
// and its visitors open, so that its series go once it is removed and
// its last visitor has left.
type tunnelSeries struct {
	state gateway.TunnelState // "" when only visitors are known of it
	open  int                 // visitors and requests in flight

	// The tunnel's series of each visitor and request, looked up once:
	// a lookup by label values hashes every value, and a request takes
	// seven. They go with the tunnelSeries when forgetLocked deletes them.
	kinds    map[string]kindSeries // by visitor kind
	bytesIn  prometheus.Counter
	bytesOut prometheus.Counter
	codes    map[int]prometheus.Counter // requests by status
	duration prometheus.Observer
}

// kindSeries are a tunnel's series of one kind of visitor.
type kindSeries struct {
	open  prometheus.Gauge
	total prometheus.Counter
}

// kind gives the series of tunnel's visitors of kind. Called under m.mu.
func (ts *tunnelSeries) kind(m *Metrics, tunnel, kind string) kindSeries {
	ks, ok := ts.kinds[kind]
	if !ok {
		if ts.kinds == nil {
			ts.kinds = make(map[string]kindSeries, 2)
		}
		ks = kindSeries{open: m.visitorsOpen.WithLabelValues(tunnel, kind), total: m.visitors.WithLabelValues(tunnel, kind)}
		ts.kinds[kind] = ks
	}
	return ks
}

// requestDone counts a request of tunnel answered with status after d.
// Called under m.mu.
func (ts *tunnelSeries) requestDone(m *Metrics, tunnel string, status int, d time.Duration) {
	c, ok := ts.codes[status]
	if !ok {
		if ts.codes == nil {
			ts.codes = make(map[int]prometheus.Counter, 4)
		}
		c = m.requests.WithLabelValues(tunnel, codeLabel(status))
		ts.codes[status] = c
	}
	c.Inc()
	if ts.duration == nil {
		ts.duration = m.duration.WithLabelValues(tunnel)
	}
	ts.duration.Observe(d.Seconds())
}

// Interface guards.
var (
	_ gateway.Observer = (*Metrics)(nil)
	_ ingress.Observer = (*Metrics)(nil)
)

// New returns the gateway's metrics, with the Go runtime's and the
// process's.
func New() *Metrics {
	m := &Metrics{
		reg:  prometheus.NewRegistry(),
		byTn: make(map[string]*tunnelSeries),
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "diglett_agent_sessions",
			Help: "Agent sessions logged in, by transport.",
		}, []string{"transport"}),
		tunnels: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "diglett_tunnels",
			Help: "Tunnels published, by state: live (served by an agent) or leased (name and port reserved while its agents are away).",
		}, []string{"state"}),
		members: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "diglett_tunnel_members",
			Help: "Agent sessions serving each tunnel (its group).",
		}, []string{"tunnel"}),
		visitorsOpen: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "diglett_visitors_open",
			Help: "Visitor connections (tcp), UDP flows (udp) and HTTP requests (http) in flight, by tunnel.",
		}, []string{"tunnel", "kind"}),
		visitors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "diglett_visitors_total",
			Help: "Visitor connections (tcp), UDP flows (udp) and HTTP requests (http) taken, by tunnel.",
		}, []string{"tunnel", "kind"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "diglett_visitor_bytes_total",
			Help: "Bytes relayed, by tunnel and direction (in: from visitors; out: to visitors), counted as each connection or request ends.",
		}, []string{"tunnel", "direction"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "diglett_http_requests_total",
			Help: "HTTP requests answered, by tunnel and status code.",
		}, []string{"tunnel", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "diglett_http_request_duration_seconds",
			Help:    "Time from an HTTP request's arrival to the end of its response, by tunnel.",
			Buckets: prometheus.DefBuckets,
		}, []string{"tunnel"}),
		loginRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "diglett_login_refusals_total",
			Help: "Agent logins refused, by reason.",
		}, []string{"reason"}),
		registrations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "diglett_registrations_total",
			Help: "Names granted to agents.",
		}),
		leasesStarted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "diglett_leases_started_total",
			Help: "Tunnels leased when their last agent left.",
		}),
		leasesExpired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "diglett_leases_expired_total",
			Help: "Leases that ended with no agent back: name and port released.",
		}),
		registererFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "diglett_registerer_failures_total",
			Help: "Failed calls to a registerer (each is retried), by registerer.",
		}, []string{"registerer"}),
		certificates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "diglett_certificates_total",
			Help: "ACME certificate orders that ended, renewals included, by result: obtained or failed.",
		}, []string{"result"}),
		datagramsDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "diglett_udp_datagrams_dropped_total",
			Help: "Datagrams of UDP tunnels dropped, by reason: too_large, flow_limit, queue_full, no_agent, not_allowed.",
		}, []string{"reason"}),
	}
	m.reg.MustRegister(
		m.sessions, m.tunnels, m.members, m.visitorsOpen, m.visitors, m.bytes,
		m.requests, m.duration, m.loginRefusals, m.registrations,
		m.leasesStarted, m.leasesExpired, m.registererFailures, m.certificates,
		m.datagramsDropped,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	// The fixed label values are there from the start, at zero.
	for _, tr := range []string{"tcp", "quic", "ws"} {
		m.sessions.WithLabelValues(tr)
	}
	for _, st := range []gateway.TunnelState{gateway.TunnelLive, gateway.TunnelLeased} {
		m.tunnels.WithLabelValues(string(st))
	}
	for _, r := range []gateway.LoginRefusal{gateway.RefusedCredentials, gateway.RefusedLockedOut,
		gateway.RefusedQuota, gateway.RefusedVersion, gateway.RefusedError} {
		m.loginRefusals.WithLabelValues(string(r))
	}
	for _, r := range []string{certObtained, certFailed} {
		m.certificates.WithLabelValues(r)
	}
	for _, r := range datagramDrops {
		m.datagramsDropped.WithLabelValues(string(r))
	}
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Registry is where the metrics are registered, for a program that adds
// its own.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// SessionOpened counts an agent session.
func (m *Metrics) SessionOpened(transport string) {
	m.sessions.WithLabelValues(transport).Inc()
}

// SessionClosed counts an agent session's end.
func (m *Metrics) SessionClosed(transport string) {
	m.sessions.WithLabelValues(transport).Dec()
}

// TunnelChanged follows a tunnel's state and members.
func (m *Metrics) TunnelChanged(tunnel string, state gateway.TunnelState, members int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ts := m.byTn[tunnel]
	if ts == nil {
		ts = &tunnelSeries{}
		m.byTn[tunnel] = ts
	}
	if ts.state == gateway.TunnelLive || ts.state == gateway.TunnelLeased {
		m.tunnels.WithLabelValues(string(ts.state)).Dec()
	}
	ts.state = state
	if state == gateway.TunnelRemoved {
		m.forgetLocked(tunnel, ts)
		return
	}
	m.tunnels.WithLabelValues(string(state)).Inc()
	m.members.WithLabelValues(tunnel).Set(float64(members))
}

// forgetLocked deletes a removed tunnel's series once no visitor is left.
// Called under m.mu.
func (m *Metrics) forgetLocked(tunnel string, ts *tunnelSeries) {
	if ts.state != gateway.TunnelRemoved || ts.open > 0 {
		return
	}
	delete(m.byTn, tunnel)
	l := prometheus.Labels{"tunnel": tunnel}
	m.members.DeletePartialMatch(l)
	m.visitorsOpen.DeletePartialMatch(l)
	m.visitors.DeletePartialMatch(l)
	m.bytes.DeletePartialMatch(l)
	m.requests.DeletePartialMatch(l)
	m.duration.DeletePartialMatch(l)
}

// Registered counts a name granted.
func (m *Metrics) Registered(string) { m.registrations.Inc() }

// LeaseStarted counts a lease.
func (m *Metrics) LeaseStarted(string) { m.leasesStarted.Inc() }

// LeaseExpired counts a lease that ended.
func (m *Metrics) LeaseExpired(string) { m.leasesExpired.Inc() }

// LoginRefused counts a refused login.
func (m *Metrics) LoginRefused(reason gateway.LoginRefusal) {
	switch reason {
	case gateway.RefusedCredentials, gateway.RefusedLockedOut, gateway.RefusedQuota, gateway.RefusedVersion:
	default:
		reason = gateway.RefusedError
	}
	m.loginRefusals.WithLabelValues(string(reason)).Inc()
}

// RegistererFailed counts a registerer's failure.
func (m *Metrics) RegistererFailed(registerer string) {
	m.registererFailures.WithLabelValues(registerer).Inc()
}

// The results of a certificate order, as label values.
const (
	certObtained = "obtained"
	certFailed   = "failed"
)

// CertificateOrdered counts an ACME order that ended: obtained when ok,
// else failed. The host is not a label: the hosts are unbounded. Its
// signature is that of autotls.Config.OnCertificate.
func (m *Metrics) CertificateOrdered(host string, ok bool) {
	r := certFailed
	if ok {
		r = certObtained
	}
	m.certificates.WithLabelValues(r).Inc()
}

// VisitorOpened counts a TCP visitor.
func (m *Metrics) VisitorOpened(tunnel string) { m.opened(tunnel, kindTCP) }

// VisitorClosed counts a TCP visitor's end and its bytes.
func (m *Metrics) VisitorClosed(tunnel string, in, out int64) {
	m.closed(tunnel, kindTCP, in, out, nil)
}

// UDPFlowOpened counts a UDP flow.
func (m *Metrics) UDPFlowOpened(tunnel string) { m.opened(tunnel, kindUDP) }

// UDPFlowClosed counts a UDP flow's end and its bytes.
func (m *Metrics) UDPFlowClosed(tunnel string, in, out int64) {
	m.closed(tunnel, kindUDP, in, out, nil)
}

// datagramDrops are the reasons of dropped datagrams, a fixed set.
var datagramDrops = []gateway.DatagramDrop{gateway.DropTooLarge, gateway.DropFlowLimit,
	gateway.DropQueueFull, gateway.DropNoAgent, gateway.DropNotAllowed}

// DatagramDropped counts a dropped datagram by reason; the tunnel is not
// a label (a flood would not make it one series more).
func (m *Metrics) DatagramDropped(_ string, reason gateway.DatagramDrop) {
	if !slices.Contains(datagramDrops, reason) {
		reason = "other"
	}
	m.datagramsDropped.WithLabelValues(string(reason)).Inc()
}

// RequestStarted counts an HTTP request.
func (m *Metrics) RequestStarted(tunnel string) { m.opened(tunnel, kindHTTP) }

// RequestDone counts an HTTP request's answer, its bytes and duration.
func (m *Metrics) RequestDone(tunnel string, status int, in, out int64, d time.Duration) {
	m.closed(tunnel, kindHTTP, in, out, func(ts *tunnelSeries) {
		ts.requestDone(m, tunnel, status, d)
	})
}

func (m *Metrics) opened(tunnel, kind string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ts := m.byTn[tunnel]
	if ts == nil {
		ts = &tunnelSeries{}
		m.byTn[tunnel] = ts
	}
	ts.open++
	ks := ts.kind(m, tunnel, kind)
	ks.open.Inc()
	ks.total.Inc()
}

// closed counts a visitor's end, and calls more, under the lock that keeps
// the tunnel's series from being deleted meanwhile.
func (m *Metrics) closed(tunnel, kind string, in, out int64, more func(*tunnelSeries)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ts := m.byTn[tunnel]
	if ts == nil {
		return // never opened
	}
	ts.open--
	ts.kind(m, tunnel, kind).open.Dec()
	if ts.bytesIn == nil {
		ts.bytesIn, ts.bytesOut = m.bytes.WithLabelValues(tunnel, dirIn), m.bytes.WithLabelValues(tunnel, dirOut)
	}
	ts.bytesIn.Add(float64(in))
	ts.bytesOut.Add(float64(out))
	if more != nil {
		more(ts)
	}
	if ts.state == "" && ts.open == 0 {
		ts.state = gateway.TunnelRemoved
	}
	m.forgetLocked(tunnel, ts)
}

// codeLabel is the label of an HTTP status: the code when it is a known
// one, else its class.
func codeLabel(status int) string {
	if http.StatusText(status) != "" {
		return strconv.Itoa(status)
	}
	if status >= 100 && status < 600 {
		return strconv.Itoa(status/100) + "xx"
	}
	return "other"
}
