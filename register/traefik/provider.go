package traefik

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"
)

// snapshot is the http provider's answer for one state of the routes.
type snapshot struct {
	body []byte
	etag string
}

// publishLocked renders the configuration of every published route for
// the http provider. It is called under r.mu after each change (and by
// New), so the snapshot always follows the latest state.
func (r *Registerer) publishLocked() {
	parts := make([]dynamic, 0, len(r.routes))
	for _, name := range slices.Sorted(maps.Keys(r.routes)) {
		parts = append(parts, r.routes[name].conf)
	}
	body, err := renderJSON(merge(parts))
	if err != nil {
		// Only strings, ints and bools: this cannot happen.
		r.log.Error("render the http provider's configuration", "err", err)
		return
	}
	sum := sha256.Sum256(body)
	r.json.Store(&snapshot{body: body, etag: `"` + hex.EncodeToString(sum[:16]) + `"`})
}

// renderJSON is d as the http provider serves it: JSON with sorted keys,
// indented, ending with a newline.
func renderJSON(d dynamic) ([]byte, error) {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Handler serves the whole current dynamic configuration as JSON, in the
// format of the proxy's http provider, at whatever path it is mounted on:
// {"http": {"routers": ..., "services": ...}, "tcp": ...}, empty ({})
// with no route. GET and HEAD only; it answers If-None-Match with 304
// Not Modified when nothing changed.
func (r *Registerer) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		s := r.json.Load()
		if s == nil {
			// A Registerer not made by New publishes nothing.
			s = &snapshot{body: []byte("{}\n"), etag: `"empty"`}
		}
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", s.etag)
		if match := req.Header.Get("If-None-Match"); match != "" && etagMatches(match, s.etag) {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		h.Set("Content-Length", fmt.Sprint(len(s.body)))
		if req.Method == http.MethodHead {
			return
		}
		w.Write(s.body)
	})
}

// etagMatches reports whether an If-None-Match header names etag.
func etagMatches(header, etag string) bool {
	for t := range strings.SplitSeq(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == "*" || t == etag {
			return true
		}
	}
	return false
}

// provider is the module's own listener for the http provider.
type provider struct {
	ln   net.Listener
	srv  *http.Server
	done chan struct{}
}

// listenProvider serves h at ProviderPath on addr.
func listenProvider(addr string, h http.Handler, log *slog.Logger) (*provider, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("http provider: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle(ProviderPath, h)
	p := &provider{
		ln: ln,
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      10 * time.Second,
			IdleTimeout:       time.Minute,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		},
		done: make(chan struct{}),
	}
	go func() {
		defer close(p.done)
		if err := p.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("http provider stopped", "err", err)
		}
	}()
	return p, nil
}

func (p *provider) addr() string { return p.ln.Addr().String() }

// close stops the listener and its connections, and waits for them.
func (p *provider) close() error {
	err := p.srv.Close()
	<-p.done
	if errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
