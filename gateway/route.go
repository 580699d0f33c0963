package gateway

// Routing a visitor request by host name to its tunnel, with the
// tunnel's visitor rules and the client address the gateway vouches for.

import (
	"context"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
)

// URLs are the HTTP and HTTPS addresses of tunnel name; empty when the
// ingress is not served.
func (s *Server) URLs(name string) (httpURL, httpsURL string) {
	if s.cfg.Domain == "" {
		return "", ""
	}
	host := name + "." + s.cfg.Domain
	if p := s.http.httpPort.Load(); p != 0 {
		httpURL = "http://" + host
		if p != 80 {
			httpURL += ":" + strconv.Itoa(int(p))
		}
	}
	if p := s.http.httpsPort.Load(); p != 0 {
		httpsURL = "https://" + host
		if p != 443 {
			httpsURL += ":" + strconv.Itoa(int(p))
		}
	}
	return httpURL, httpsURL
}

// tunnelName maps a Host header (or TLS server name) to a tunnel name:
// case-insensitive, ignoring a port and a trailing dot. A host whose port
// is not a number is no tunnel's (see parseHost).
func (s *Server) tunnelName(host string) (string, bool) {
	name, _, err := s.parseHost(host)
	return name, err == nil && name != ""
}

// ServeHTTP routes one visitor request.
func (in *ingress) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	info, _ := r.Context().Value(connInfoKey{}).(*connInfo)
	if info == nil {
		info = &connInfo{https: r.TLS != nil}
	}
	// Every wait for the visitor's body is bounded, whatever the answer:
	// the server reads what a handler left unread.
	if r.Body != nil && r.Body != http.NoBody {
		tb := newTimedBody(w, r.Body, in.srv.cfg.BodyReadTimeout)
		defer tb.finish(r.ProtoMajor == 1)
		r.Body = tb
	}
	var peer netip.Addr
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		peer = ap.Addr().Unmap()
	}
	client := in.clientIP(r, peer)
	src := requestSource(client)
	if !in.sources.acquire(src) {
		w.Header().Set("Retry-After", "1")
		if r.ProtoMajor == 1 && r.ContentLength != 0 {
			// Answer at once rather than after reading the body.
			w.Header().Set("Connection", "close")
		}
		httpError(w, http.StatusTooManyRequests, "too many requests in flight from your address")
		return
	}
	defer in.sources.release(src)
	name, host, err := in.srv.parseHost(r.Host)
	if err != nil {
		if r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		httpError(w, http.StatusBadRequest, "malformed host")
		return
	}
	if name == "" {
		httpError(w, http.StatusNotFound, "no tunnel at this address")
		return
	}
	t := in.srv.reg.route(name)
	if t == nil {
		httpError(w, http.StatusNotFound, "no tunnel at this address")
		return
	}
	rt := &route{t: t, pol: t.policy(), https: info.https, remote: r.RemoteAddr, peer: peer, host: host}
	if !rt.pol.allows(client) {
		httpError(w, http.StatusForbidden, "your address may not reach this tunnel")
		return
	}
	if rt.pol.user != "" {
		u, p, ok := r.BasicAuth()
		if !ok || !rt.pol.checkPassword(u, p) {
			w.Header().Set("WWW-Authenticate", `Basic realm="`+name+`", charset="UTF-8"`)
			httpError(w, http.StatusUnauthorized, "this tunnel asks for a user and password")
			return
		}
	}
	if len(t.live()) == 0 {
		httpError(w, http.StatusServiceUnavailable, "no agent is online for this tunnel")
		return
	}
	release := in.admit(w, r, t) // MaxVisitorsPerTunnel
	if release == nil {
		return
	}
	defer release()
	if r.Body != nil && r.Body != http.NoBody {
		rt.body = &visitorBody{ReadCloser: r.Body}
		r.Body = rt.body
	}
	in.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), routeKey{}, rt)))
}

// clientIP is the visitor's address: the peer's, or, when the peer is a
// trusted proxy, the nearest address in X-Forwarded-For that is not one.
func (in *ingress) clientIP(r *http.Request, peer netip.Addr) netip.Addr {
	if !in.trusted(peer) {
		return peer
	}
	hops := r.Header.Values("X-Forwarded-For")
	ip := peer
	for i := len(hops) - 1; i >= 0; i-- {
		parts := strings.Split(hops[i], ",")
		for j := len(parts) - 1; j >= 0; j-- {
			a, err := netip.ParseAddr(strings.TrimSpace(parts[j]))
			if err != nil {
				return ip
			}
			ip = a.Unmap()
			if !in.trusted(ip) {
				return ip
			}
		}
	}
	return ip
}

func (in *ingress) trusted(ip netip.Addr) bool {
	for _, p := range in.srv.cfg.TrustedProxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}
