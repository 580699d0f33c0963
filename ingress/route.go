package ingress

// Routing a visitor request by host name to its tunnel, with the
// tunnel's visitor rules, its visitor cap, and the client address the
// gateway vouches for.

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/protocol"
)

// retryAfter is what an HTTP visitor refused for the tunnel's cap is told
// to wait, in seconds.
const retryAfter = "1"

// ServeHTTP routes one visitor request.
func (in *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	x, w := in.begin(w, r)
	defer in.finish(x, r)
	info, _ := r.Context().Value(connInfoKey{}).(*connInfo)
	if info == nil {
		info = &connInfo{https: r.TLS != nil}
	}
	// Every wait for the visitor's body is bounded, whatever the answer:
	// the server reads what a handler left unread.
	if r.Body != nil && r.Body != http.NoBody {
		tb := newTimedBody(w, r.Body, in.cfg.BodyReadTimeout)
		defer tb.finish(r.ProtoMajor == 1)
		r.Body = tb
	}
	rt := in.routeRequest(w, r, info.https, x, httpAddr(r.RemoteAddr), nil)
	if rt == nil {
		return
	}
	defer in.releaseRoute(rt)
	if r.Body != nil && r.Body != http.NoBody {
		rt.body = &visitorBody{ReadCloser: r.Body}
		r.Body = rt.body
	}
	in.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), routeKey{}, rt)))
}

// routeRequest takes a slot of the request's source, routes r to its
// tunnel and applies the tunnel's visitor rules and cap (visitor is
// r.RemoteAddr, for the cap's log line). It returns the route, in rt when
// the caller has room for it, whose slots releaseRoute gives back, or nil
// after answering w. Both forwarding paths (the reverse proxy's and the
// connection-level one of fast.go) route through it.
func (in *Server) routeRequest(w http.ResponseWriter, r *http.Request, https bool, x *exchange, visitor net.Addr, rt *route) *route {
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
		return nil
	}
	name, host, err := in.gw.Route(r.Host)
	if err != nil {
		if r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		httpError(w, http.StatusBadRequest, "malformed host")
		in.sources.release(src)
		return nil
	}
	if name == "" {
		httpError(w, http.StatusNotFound, "no tunnel at this address")
		in.sources.release(src)
		return nil
	}
	t, ok := in.gw.Tunnel(name)
	if !ok {
		httpError(w, http.StatusNotFound, "no tunnel at this address")
		in.sources.release(src)
		return nil
	}
	in.routed(x, name)
	if rt == nil {
		rt = new(route)
	}
	*rt = route{t: t, pol: t.Visitors(), https: https, remote: r.RemoteAddr, peer: peer, host: host, x: x, src: src}
	if !rt.pol.Allows(client) {
		httpError(w, http.StatusForbidden, "your address may not reach this tunnel")
		in.sources.release(src)
		return nil
	}
	if rt.pol.BasicAuth() {
		u, p, ok := r.BasicAuth()
		if !ok || !rt.pol.CheckPassword(u, p) {
			w.Header().Set("WWW-Authenticate", `Basic realm="`+name+`", charset="UTF-8"`)
			httpError(w, http.StatusUnauthorized, "this tunnel asks for a user and password")
			in.sources.release(src)
			return nil
		}
	}
	if len(t.Members()) == 0 {
		httpError(w, http.StatusServiceUnavailable, "no agent is online for this tunnel")
		in.sources.release(src)
		return nil
	}
	rt.admitted = in.admit(w, r, t, visitor) // the gateway's MaxVisitorsPerTunnel
	if rt.admitted == nil {
		in.sources.release(src)
		return nil
	}
	return rt
}

// releaseRoute gives back the slots routeRequest took for rt.
func (in *Server) releaseRoute(rt *route) {
	rt.admitted()
	in.sources.release(rt.src)
}

// admit takes a slot of t's visitor cap for an HTTP request. It returns
// the slot's release, or nil after answering 503 with Retry-After when the
// tunnel has as many visitors as the gateway lets it have.
func (in *Server) admit(w http.ResponseWriter, r *http.Request, t gateway.HTTPTunnel, visitor net.Addr) (release func()) {
	release, ok := t.Admit(visitor)
	if !ok {
		w.Header().Set("Retry-After", retryAfter)
		if r.ProtoMajor == 1 && r.ContentLength != 0 {
			// Answer at once rather than after reading the body.
			w.Header().Set("Connection", "close")
		}
		httpError(w, http.StatusServiceUnavailable, "this tunnel has too many visitors; try again later")
		return nil
	}
	return release
}

// httpAddr is a request's RemoteAddr as a net.Addr, for logs.
type httpAddr string

func (a httpAddr) Network() string { return "tcp" }
func (a httpAddr) String() string  { return string(a) }

// clientIP is the visitor's address: the peer's, or, when the peer is a
// trusted proxy, the nearest address in X-Forwarded-For that is not one.
func (in *Server) clientIP(r *http.Request, peer netip.Addr) netip.Addr {
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

func (in *Server) trusted(ip netip.Addr) bool {
	return protocol.PrefixesContain(in.cfg.TrustedProxies, ip)
}
