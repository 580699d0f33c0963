// Package admin is the gateway's management listener as an http.Handler:
// health and readiness probes, the Go profiler, and a JSON API to list the
// tunnels, agent sessions and leases of a gateway, disconnect an agent,
// release a lease and reload the configuration. An embedder mounts it on
// a listener of its own, never on a public port; docs/API.md describes
// every endpoint.
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/diglett/diglett/gateway"
)

// Gateway is what the handler reads and changes of a gateway;
// *gateway.Server is one.
type Gateway interface {
	Tunnels() []gateway.TunnelInfo
	Agents() []gateway.AgentInfo
	Leases() []gateway.LeaseInfo
	Disconnect(id uint64, reason string) error
	ReleaseLease(name string) error
}

var _ Gateway = (*gateway.Server)(nil)

// ErrNothingToReload is what a Reload function returns, wrapped, when the
// gateway has no configuration to reload: the API answers 409.
var ErrNothingToReload = errors.New("nothing to reload")

// ReloadFunc reloads the gateway's configuration, as its operator's
// SIGHUP does, and returns what changed (keys in snake_case; never a
// secret). An error wrapping ErrNothingToReload answers 409, one wrapping
// context.DeadlineExceeded or context.Canceled 503, any other 422 (the
// configuration was refused and the one in force stays): its text is
// shown to the client.
type ReloadFunc func(ctx context.Context) (map[string]any, error)

// Config configures Handler. Zero values are the documented defaults.
type Config struct {
	// Gateway is the gateway the API shows. Required.
	Gateway Gateway
	// Reload backs POST /api/v1/reload. Nil: that endpoint answers 501.
	Reload ReloadFunc
	// ReloadTimeout bounds a reload through the API. Default 30s.
	ReloadTimeout time.Duration
	// Ready backs GET /readyz: nil error is ready (200), an error is not
	// (503, with the error's text). Nil: always ready.
	Ready func() error
	// Token, if set, must come with every request but /healthz and
	// /readyz as "Authorization: Bearer TOKEN"; others get 401. Without
	// it anyone who reaches the listener may use the API: serve it on a
	// loopback address only.
	Token string
	// Metrics, if set, is mounted at /metrics (behind the token).
	Metrics http.Handler
	// Extra are further handlers mounted by pattern (as http.ServeMux
	// takes them, e.g. "/dashboard/"), behind the token. A pattern that
	// clashes with the API's is refused by Handler.
	Extra map[string]http.Handler
	// Page, if set, is a browser page served at GET / and its files under
	// GET /static/, WITHOUT the token: it must hold no data, which it
	// fetches from the API with the token (admin/dashboard's Page).
	Page http.Handler
	// Logger logs, at Debug, who asked for each action (the gateway logs
	// the action itself at Info), and failures at Warn. Default: discard.
	Logger *slog.Logger
}

// maxBodyBytes bounds a request body read by the API.
const maxBodyBytes = 64 << 10

// Handler returns the management handler for cfg.
func Handler(cfg Config) (http.Handler, error) {
	if cfg.Gateway == nil {
		return nil, errors.New("admin: no gateway")
	}
	if cfg.ReloadTimeout <= 0 {
		cfg.ReloadTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	h := &handler{cfg: cfg, log: cfg.Logger}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", only(http.MethodGet, h.healthz))
	mux.HandleFunc("/readyz", only(http.MethodGet, h.readyz))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/api/v1/tunnels", only(http.MethodGet, h.tunnels))
	mux.HandleFunc("/api/v1/agents", only(http.MethodGet, h.agents))
	mux.HandleFunc("/api/v1/leases", only(http.MethodGet, h.leases))
	mux.HandleFunc("/api/v1/agents/{id}/disconnect", only(http.MethodPost, h.disconnect))
	mux.HandleFunc("/api/v1/leases/{name}", only(http.MethodDelete, h.release))
	mux.HandleFunc("/api/v1/reload", only(http.MethodPost, h.reload))
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
	})
	if cfg.Metrics != nil {
		mux.Handle("/metrics", cfg.Metrics)
	}
	if cfg.Page != nil {
		mux.Handle("GET /{$}", cfg.Page)
		mux.Handle("GET /static/", cfg.Page)
	}
	for pattern, eh := range cfg.Extra {
		if err := register(mux, pattern, eh); err != nil {
			return nil, err
		}
	}
	return h.guard(mux), nil
}

// register mounts an Extra handler, turning a clash (which ServeMux
// reports by panicking) into an error.
func register(mux *http.ServeMux, pattern string, h http.Handler) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("admin: extra handler %q: %v", pattern, p)
		}
	}()
	if h == nil {
		return fmt.Errorf("admin: extra handler %q is nil", pattern)
	}
	mux.Handle(pattern, h)
	return nil
}

type handler struct {
	cfg Config
	log *slog.Logger
}

// guard asks for the token on every path but the probes.
func (h *handler) guard(next http.Handler) http.Handler {
	if h.cfg.Token == "" {
		return next
	}
	want := []byte("Bearer " + h.cfg.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" && r.URL.Path != "/readyz" && !h.page(r) {
			got := []byte(r.Header.Get("Authorization"))
			if subtle.ConstantTimeCompare(got, want) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="diglett-server"`)
				writeError(w, http.StatusUnauthorized, "missing or wrong bearer token: send Authorization: Bearer TOKEN with the token of --admin-token-file")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// page reports whether r asks for the Page, which needs no token: "/" or
// one file right under "/static/", a path the mux serves as it is.
func (h *handler) page(r *http.Request) bool {
	if h.cfg.Page == nil || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		return false
	}
	file, ok := strings.CutPrefix(r.URL.Path, "/static/")
	return r.URL.Path == "/" || ok && file != "" && !strings.ContainsAny(file, "/\\") && !strings.Contains(file, "..")
}

// only answers 405 to any method but method (and HEAD with GET).
func only(method string, f http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != method && (method != http.MethodGet || r.Method != http.MethodHead) {
			allow := method
			if method == http.MethodGet {
				allow += ", " + http.MethodHead
			}
			w.Header().Set("Allow", allow)
			writeError(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed: use "+method)
			return
		}
		f(w, r)
	}
}

func (h *handler) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, "ok\n")
}

func (h *handler) readyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if h.cfg.Ready != nil {
		if err := h.cfg.Ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "not ready: "+err.Error()+"\n")
			return
		}
	}
	io.WriteString(w, "ready\n")
}

func (h *handler) tunnels(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"tunnels": h.cfg.Gateway.Tunnels()})
}

func (h *handler) agents(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"agents": h.cfg.Gateway.Agents()})
}

func (h *handler) leases(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"leases": h.cfg.Gateway.Leases()})
}

// disconnectRequest is the optional body of a disconnect.
type disconnectRequest struct {
	Reason string `json:"reason"`
}

func (h *handler) disconnect(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil || id == 0 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("agent id %q: want a session id as /api/v1/agents lists them", r.PathValue("id")))
		return
	}
	var req disconnectRequest
	if err := readJSON(w, r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := h.cfg.Gateway.Disconnect(id, req.Reason); err != nil {
		if errors.Is(err, gateway.ErrNoSession) {
			writeError(w, http.StatusNotFound, err.Error())
			return
		}
		h.log.Warn("admin: disconnect failed", "session", id, "err", err)
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	h.log.Debug("admin: agent disconnected", "session", id, "by", r.RemoteAddr)
	writeJSON(w, http.StatusOK, map[string]any{"disconnected": id})
}

func (h *handler) release(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := h.cfg.Gateway.ReleaseLease(name); err != nil {
		switch {
		case errors.Is(err, gateway.ErrNoTunnel):
			writeError(w, http.StatusNotFound, err.Error())
		case errors.Is(err, gateway.ErrTunnelLive):
			writeError(w, http.StatusConflict, err.Error())
		default:
			h.log.Warn("admin: lease release failed", "tunnel", name, "err", err)
			writeError(w, http.StatusInternalServerError, err.Error())
		}
		return
	}
	h.log.Debug("admin: lease released", "tunnel", name, "by", r.RemoteAddr)
	writeJSON(w, http.StatusOK, map[string]any{"released": name})
}

func (h *handler) reload(w http.ResponseWriter, r *http.Request) {
	if h.cfg.Reload == nil {
		writeError(w, http.StatusNotImplemented, "this gateway cannot reload its configuration")
		return
	}
	if err := readJSON(w, r, &struct{}{}); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.ReloadTimeout)
	defer cancel()
	changes, err := h.cfg.Reload(ctx)
	if err != nil {
		switch {
		case errors.Is(err, ErrNothingToReload):
			writeError(w, http.StatusConflict, err.Error())
		case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
			writeError(w, http.StatusServiceUnavailable, "reload: "+err.Error())
		default:
			writeError(w, http.StatusUnprocessableEntity, "reload refused, the configuration in force stays: "+err.Error())
		}
		return
	}
	if changes == nil {
		changes = map[string]any{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"reloaded": true, "changes": changes})
}

// readJSON decodes the request's body, if any, into v; at most
// maxBodyBytes are read.
func readJSON(w http.ResponseWriter, r *http.Request, v any) error {
	body := http.MaxBytesReader(w, r.Body, maxBodyBytes)
	data, err := io.ReadAll(body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return fmt.Errorf("request body: larger than %d bytes", maxBodyBytes)
		}
		return fmt.Errorf("request body: %w", err)
	}
	if strings.TrimSpace(string(data)) == "" {
		return nil
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("request body: want JSON: %w", err)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
