// Package inspect holds the agent's request inspector: it watches the
// HTTP/1.1 exchanges relayed through the agent's tunnels, keeps the last
// ones in a bounded ring (heads, secrets redacted, and the start of each
// body), and serves them on a local listener as a live page and a JSON
// API that can replay a request to its backend, beside the agent's
// /metrics and /readyz.
package inspect

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// DefaultSize is how many exchanges an Inspector keeps by default.
const DefaultSize = 100

// MaxSize bounds Config.Size.
const MaxSize = 100000

// Config configures an Inspector. Zero values take the documented
// defaults.
type Config struct {
	// Size is how many exchanges are kept; the oldest goes first.
	// Default DefaultSize; at most MaxSize.
	Size int
	// Dial connects to the backend of a tunnel, for replays. Nil: replays
	// are refused.
	Dial func(ctx context.Context, tunnel string) (net.Conn, error)
	// Ready reports whether every tunnel is registered and reachable
	// through a live session to a gateway, for /readyz. Nil: always ready.
	Ready func() bool
	// Logger receives the inspector's logs. Default slog.Default().
	Logger *slog.Logger
}

// Validate reports a Config that New refuses.
func (c Config) Validate() error {
	if c.Size < 0 || c.Size > MaxSize {
		return fmt.Errorf("inspector size %d: want 1 to %d", c.Size, MaxSize)
	}
	return nil
}

// Inspector records exchanges and serves them (see Handler).
type Inspector struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	parsers sync.WaitGroup // the parsers of the streams observed

	mu       sync.Mutex
	ring     []*Entry // ring[next] is the oldest once full
	next     int
	lastID   uint64
	retained int64 // bytes the ring's entries keep
	subs     map[chan Summary]struct{}
}

// New returns an Inspector with cfg.
func New(cfg Config) (*Inspector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Size == 0 {
		cfg.Size = DefaultSize
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Inspector{
		cfg:     cfg,
		log:     cfg.Logger,
		metrics: newMetrics(),
		ring:    make([]*Entry, 0, cfg.Size),
		subs:    make(map[chan Summary]struct{}),
	}, nil
}

// Observe starts watching one visitor's connection of tunnel: what the
// visitor sends goes to fromVisitor and what the backend answers to
// fromBackend, as diglett.ForwardOptions.Inspect wants. The writers never
// fail; they wait only when the parser is far behind, for a second at
// most, and then stop observing the connection. Closing both ends the
// watch. A connection that does not carry HTTP/1.1 is let go at its first
// bytes. The part of a body of known length past what an entry keeps is
// counted as it passes, not parsed.
func (in *Inspector) Observe(tunnel string, visitor net.Addr) (fromVisitor, fromBackend io.WriteCloser) {
	s := &stream{
		in:          in,
		tunnel:      tunnel,
		fromVisitor: newFeed(),
		fromBackend: newFeed(),
		pending:     make(chan *exchange, maxPending),
	}
	if visitor != nil {
		s.visitor = visitor.String()
	}
	in.parsers.Add(2)
	go func() {
		defer in.parsers.Done()
		s.readRequests()
	}()
	go func() {
		defer in.parsers.Done()
		s.readResponses()
	}()
	return s.fromVisitor, s.fromBackend
}

// add gives e the next id and keeps it, dropping the oldest entry when the
// ring is full, and tells the subscribers.
func (in *Inspector) add(e *Entry) {
	e.RequestSize, e.ResponseSize = e.Request.Size, e.Response.Size
	in.metrics.observe(e)
	if e.Error != "" {
		in.log.Debug("request not recorded in full", "tunnel", e.Tunnel, "method", e.Method, "err", e.Error)
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	in.lastID++
	e.ID = in.lastID
	in.retained += e.retained()
	if len(in.ring) < cap(in.ring) {
		in.ring = append(in.ring, e)
	} else {
		in.retained -= in.ring[in.next].retained()
		in.ring[in.next] = e
		in.next = (in.next + 1) % len(in.ring)
	}
	for ch := range in.subs {
		select {
		case ch <- e.Summary:
		default: // a slow page misses the event, not the relay
		}
	}
}

// List returns the kept exchanges, newest first.
func (in *Inspector) List() []Summary {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := make([]Summary, 0, len(in.ring))
	for i := range in.ring {
		// Newest first: the one before next, going back.
		j := (in.next - 1 - i + 2*len(in.ring)) % len(in.ring)
		out = append(out, in.ring[j].Summary)
	}
	return out
}

// Get returns the exchange with id, if it is still kept. The Entry must
// not be changed.
func (in *Inspector) Get(id uint64) (*Entry, bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, e := range in.ring {
		if e.ID == id {
			return e, true
		}
	}
	return nil, false
}

// Retained is an estimate of the bytes the kept exchanges hold: their
// heads and bodies.
func (in *Inspector) Retained() int64 {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.retained
}

// maxSubscribers bounds the pages following the live stream at once.
const maxSubscribers = 32

var errTooManySubscribers = errors.New("too many pages following the inspector")

// subscribe returns a channel of the exchanges added from now on, until
// cancel is called.
func (in *Inspector) subscribe() (ch chan Summary, cancel func(), err error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if len(in.subs) >= maxSubscribers {
		return nil, nil, errTooManySubscribers
	}
	ch = make(chan Summary, 64)
	in.subs[ch] = struct{}{}
	return ch, func() {
		in.mu.Lock()
		defer in.mu.Unlock()
		delete(in.subs, ch)
	}, nil
}

// metrics are the counters the inspector's /metrics serves.
type metrics struct {
	reg                     *prometheus.Registry
	requests                *prometheus.CounterVec
	requestBytes, respBytes *prometheus.CounterVec
	incomplete              *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "diglett_agent_http_requests_total",
			Help: "HTTP requests relayed to the backends, by tunnel and status code (0: no response).",
		}, []string{"tunnel", "code"}),
		requestBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "diglett_agent_http_request_body_bytes_total",
			Help: "Bytes of the HTTP request bodies relayed to the backends, by tunnel.",
		}, []string{"tunnel"}),
		respBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "diglett_agent_http_response_body_bytes_total",
			Help: "Bytes of the HTTP response bodies relayed from the backends, by tunnel.",
		}, []string{"tunnel"}),
		incomplete: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "diglett_agent_http_requests_incomplete_total",
			Help: "HTTP exchanges not recorded in full (cut short, or the inspector fell behind), by tunnel.",
		}, []string{"tunnel"}),
	}
	m.reg.MustRegister(m.requests, m.requestBytes, m.respBytes, m.incomplete,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observe counts e.
func (m *metrics) observe(e *Entry) {
	m.requests.WithLabelValues(e.Tunnel, strconv.Itoa(e.Status)).Inc()
	m.requestBytes.WithLabelValues(e.Tunnel).Add(float64(e.Request.Size))
	m.respBytes.WithLabelValues(e.Tunnel).Add(float64(e.Response.Size))
	if e.Error != "" {
		m.incomplete.WithLabelValues(e.Tunnel).Inc()
	}
}
