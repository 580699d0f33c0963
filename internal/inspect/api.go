package inspect

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

//go:embed static
var static embed.FS

const (
	// keepAliveEvery is how often the live stream sends a comment, so
	// that a page notices a dead inspector.
	keepAliveEvery = 15 * time.Second
	// writeTimeout bounds each write to a page.
	writeTimeout = 10 * time.Second
)

// Handler serves the page (/), the API (/api/requests, /api/requests/ID,
// POST /api/requests/ID/replay, the live stream /api/events), /metrics and
// /readyz. It answers only requests addressed to a loopback host (a page
// of another site cannot read it through a DNS name of its own) and
// refuses a replay posted by a page of another origin.
func (in *Inspector) Handler() http.Handler {
	mux := http.NewServeMux()
	files, _ := fs.Sub(static, "static")
	mux.Handle("GET /", http.FileServerFS(files))
	mux.HandleFunc("GET /api/requests", in.handleList)
	mux.HandleFunc("GET /api/requests/{id}", in.handleGet)
	mux.HandleFunc("POST /api/requests/{id}/replay", in.handleReplay)
	mux.HandleFunc("GET /api/events", in.handleEvents)
	mux.Handle("GET /metrics", promhttp.HandlerFor(in.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /readyz", in.handleReady)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !loopbackHost(r.Host) {
			writeError(w, http.StatusForbidden, "the inspector answers requests to a loopback address only")
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if o := r.Header.Get("Origin"); o != "" && o != "http://"+r.Host {
				writeError(w, http.StatusForbidden, "cross-origin request refused")
				return
			}
		}
		mux.ServeHTTP(w, r)
	})
}

// loopbackHost reports whether the Host header names a loopback address.
func loopbackHost(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// Serve serves Handler on ln until ctx ends; it returns nil then, or why
// it stopped before.
func (in *Inspector) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           in.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Minute,
		ErrorLog:          slog.NewLogLogger(in.log.Handler(), slog.LevelDebug),
	}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("inspector: %w", err)
}

func (in *Inspector) handleList(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, in.List())
}

// entry is the entry the request's {id} names, or nil once an error was
// written.
func (in *Inspector) entry(w http.ResponseWriter, r *http.Request) *Entry {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad request id")
		return nil
	}
	e, ok := in.Get(id)
	if !ok {
		writeError(w, http.StatusNotFound, "no such request (the oldest go first)")
		return nil
	}
	return e
}

func (in *Inspector) handleGet(w http.ResponseWriter, r *http.Request) {
	if e := in.entry(w, r); e != nil {
		writeJSON(w, http.StatusOK, e)
	}
}

// replayResult is the answer to a replay.
type replayResult struct {
	ID    uint64 `json:"id,omitempty"`
	Error string `json:"error,omitempty"`
}

func (in *Inspector) handleReplay(w http.ResponseWriter, r *http.Request) {
	e := in.entry(w, r)
	if e == nil {
		return
	}
	n, err := in.Replay(r.Context(), e)
	switch {
	case errors.Is(err, ErrNoBackend):
		writeError(w, http.StatusNotImplemented, err.Error())
	case errors.Is(err, ErrIncompleteBody):
		writeError(w, http.StatusConflict, err.Error())
	case err != nil:
		writeJSON(w, http.StatusBadGateway, replayResult{ID: n.ID, Error: err.Error()})
	default:
		writeJSON(w, http.StatusOK, replayResult{ID: n.ID})
	}
}

func (in *Inspector) handleReady(w http.ResponseWriter, r *http.Request) {
	if in.cfg.Ready != nil && !in.cfg.Ready() {
		http.Error(w, "not ready: a tunnel is not registered yet, or is reconnecting to its gateway", http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

// handleEvents streams the exchanges recorded from now on, one
// Server-Sent Event "request" each with the Summary as its data.
func (in *Inspector) handleEvents(w http.ResponseWriter, r *http.Request) {
	ch, cancel, err := in.subscribe()
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	defer cancel()
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	send := func(s string) bool {
		rc.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := fmt.Fprint(w, s); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !send(": following\n\n") {
		return
	}
	tick := time.NewTicker(keepAliveEvery)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case s := <-ch:
			data, _ := json.Marshal(s)
			if !send("event: request\ndata: " + string(data) + "\n\n") {
				return
			}
		case <-tick.C:
			if !send(": keepalive\n\n") {
				return
			}
		}
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// apiError is the body of an API error.
type apiError struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, apiError{Error: msg})
}
