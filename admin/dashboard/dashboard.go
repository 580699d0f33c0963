// Package dashboard is the gateway's web dashboard, served on the
// management listener beside the admin API: a page showing the live
// tunnels and agents, what each tunnel carried over the last 15 minutes
// as a chart, and the recent warnings and errors of the gateway's log.
//
// The page (Page) holds no data and is served without the admin token;
// it asks for the token, if the listener has one, and fetches everything
// from the API with it: the admin package's tunnels and agents, and the
// two endpoints of this package, GET /api/v1/series (a Series, fed by
// the gateway's observer events) and GET /api/v1/errors (an ErrorLog, fed
// by the gateway's log).
package dashboard

import (
	"embed"
	"encoding/json"
	"net/http"
)

//go:embed static
var static embed.FS

// Page returns the handler of the dashboard's page: its HTML at GET / and
// its script and style under GET /static/. Mount it where the admin token
// is not asked for (admin.Config.Page): it serves only these files.
func Page() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, static, "static/index.html")
	})
	mux.Handle("GET /static/{file}", http.FileServerFS(static))
	return secured(mux)
}

// secured adds the headers that keep the page from being framed, from
// loading anything from elsewhere and from running inline code.
func secured(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		next.ServeHTTP(w, r)
	})
}

// getOnly answers 405 to any method but GET and HEAD, and reports whether
// r may go on.
func getOnly(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", "GET, HEAD")
	writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "method " + r.Method + " not allowed: use GET"})
	return false
}

// writeJSON answers v in JSON, as the admin API does.
func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
