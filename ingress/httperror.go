package ingress

// The error pages a visitor sees when a request cannot be served.

import (
	"errors"
	"fmt"
	"net"
	"net/http"

	"github.com/diglett/diglett/internal/protocol"
)

// proxyError answers a request that could not be proxied, with a status
// that tells the visitor what failed and nothing of the gateway's insides.
func (in *Server) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	rt, _ := r.Context().Value(routeKey{}).(*route)
	log := in.log.With("visitor", r.RemoteAddr, "host", r.Host)
	var de *dialError
	var ne net.Error
	switch {
	case rt != nil && rt.body != nil && errors.Is(rt.body.err(), errBodyTimeout):
		log.Debug("visitor request body stalled", "err", rt.body.err())
		if r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		httpError(w, http.StatusRequestTimeout, "the request body stalled")
	case rt != nil && rt.body != nil && rt.body.err() != nil:
		log.Debug("visitor sent a malformed body", "err", rt.body.err())
		w.Header().Set("Connection", "close")
		httpError(w, http.StatusBadRequest, "malformed request body")
	case r.Context().Err() != nil:
		log.Debug("visitor left before the response", "err", err)
		httpError(w, http.StatusBadGateway, "request canceled")
	case errors.Is(err, errNoAgent):
		httpError(w, http.StatusServiceUnavailable, "no agent is online for this tunnel")
	case errors.As(err, &de) && de.status == protocol.StatusTimeout:
		log.Debug("backend timeout", "err", err)
		httpError(w, http.StatusGatewayTimeout, "the tunnel's backend did not answer in time")
	case errors.As(err, &de) && de.status != protocol.StatusOK:
		log.Debug("backend refused", "err", err)
		httpError(w, http.StatusBadGateway, "the tunnel's backend refused the connection")
	case errors.As(err, &ne) && ne.Timeout():
		log.Debug("backend timeout", "err", err)
		httpError(w, http.StatusGatewayTimeout, "the tunnel's backend did not answer in time")
	default:
		log.Debug("proxy failed", "err", err)
		httpError(w, http.StatusBadGateway, "the tunnel's backend could not be reached")
	}
}

// httpError writes a short plain-text error page.
func httpError(w http.ResponseWriter, code int, msg string) {
	h := w.Header()
	h.Del("Content-Length")
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	fmt.Fprintf(w, "%d %s: %s\n", code, http.StatusText(code), msg)
}
