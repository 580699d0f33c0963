package ingress

// What the ingress tells of each request: the access log line and the
// observer's events (metrics), from a recorder of the response's status
// and size.

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/diglett/diglett/internal/printable"
)

// Observer is told of each HTTP request that reached a tunnel, for
// metrics. Its methods are called concurrently, on the requests' path:
// they must return at once.
type Observer interface {
	// RequestStarted: a request for tunnel arrived.
	RequestStarted(tunnel string)
	// RequestDone: that request was answered with status, after in bytes
	// of request body and out bytes of response body, d after it arrived.
	RequestDone(tunnel string, status int, in, out int64, d time.Duration)
}

// maxLoggedRunes bounds the host and path of an access log line.
const maxLoggedRunes = 512

// exchange is what the ingress records of one request.
type exchange struct {
	start   time.Time
	rec     *recorder
	body    *countingBody // nil without a body
	tunnel  string        // "" until the request is routed to a tunnel
	session atomic.Uint64 // the agent session that took it; 0 for none
}

// begin starts recording r, whose body it replaces; the returned writer
// is to be used from then on.
func (in *Server) begin(w http.ResponseWriter, r *http.Request) (*exchange, http.ResponseWriter) {
	x := &exchange{start: time.Now(), rec: &recorder{ResponseWriter: w}}
	if r.Body != nil && r.Body != http.NoBody {
		x.body = &countingBody{ReadCloser: r.Body}
		r.Body = x.body
	}
	return x, x.rec
}

// routed records that the request goes to tunnel.
func (in *Server) routed(x *exchange, tunnel string) {
	x.tunnel = tunnel
	in.cfg.Observer.RequestStarted(tunnel)
}

// finish tells the observer and the access log of the request's end.
func (in *Server) finish(x *exchange, r *http.Request) {
	now := time.Now()
	d := now.Sub(x.start)
	status := x.rec.statusCode()
	var bodyIn int64
	if x.body != nil {
		bodyIn = x.body.n.Load()
	}
	// The observer is told after the access log line is written: a test
	// that sees the count sees the line.
	if x.tunnel != "" {
		defer in.cfg.Observer.RequestDone(x.tunnel, status, bodyIn, x.rec.written, d)
	}
	if in.cfg.AccessLog == nil {
		return
	}
	// Straight to the handler: the logger would look up the caller for
	// every line, and an access line's caller is always this function.
	h, ctx := in.cfg.AccessLog.Handler(), context.Background()
	if !h.Enabled(ctx, slog.LevelInfo) {
		return
	}
	rec := slog.NewRecord(now, slog.LevelInfo, "http request", 0)
	// The path without its query, which may carry secrets.
	rec.AddAttrs(slog.String("tunnel", x.tunnel),
		slog.String("method", printable.String(r.Method, 32)),
		slog.String("host", printable.String(r.Host, maxLoggedRunes)),
		slog.String("path", printable.String(r.URL.Path, maxLoggedRunes)),
		slog.Int("status", status),
		slog.Int64("bytes", x.rec.written),
		slog.Duration("duration", d),
		slog.String("visitor", r.RemoteAddr),
		slog.Uint64("session", x.session.Load()),
	)
	_ = h.Handle(ctx, rec)
}

// recorder is a ResponseWriter that notes the status and the body's size.
// The reverse proxy reaches the underlying writer's Flush and Hijack
// through Unwrap (http.ResponseController).
type recorder struct {
	http.ResponseWriter
	status  int
	written int64
}

func (w *recorder) WriteHeader(code int) {
	if w.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *recorder) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.written += int64(n)
	return n, err
}

// Unwrap is the underlying writer, for http.ResponseController.
func (w *recorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush flushes the underlying writer, for callers that look for
// http.Flusher.
func (w *recorder) Flush() { http.NewResponseController(w.ResponseWriter).Flush() }

// statusCode is the status sent; 200 if the handler sent none.
func (w *recorder) statusCode() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}

// countingBody counts the bytes read of a request body, perhaps from
// another goroutine (the transport's).
type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// nopObserver observes nothing.
type nopObserver struct{}

func (nopObserver) RequestStarted(string)                                {}
func (nopObserver) RequestDone(string, int, int64, int64, time.Duration) {}

var _ Observer = nopObserver{}
