package ingress

import (
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strings"
)

// What the gateway tells a backend about a visitor, and what it lets
// visitors tell: the Host it routes by (checked by gateway.SplitHost),
// the forwarded headers it vouches for, and the headers it drops because a visitor could forge them.

// Headers dropped from visitors that are not trusted proxies, besides
// Forwarded and every X-Forwarded-* header (X-Forwarded-For, -Host,
// -Proto, -Port, -Prefix, -Ssl, -Scheme, -Server, -Uri, any other, and a
// bare X-Forwarded): backends and frameworks read these as the client's
// address or the original URL, and only a proxy may set them. Names are
// compared without regard to case and with '_' read as '-', since many
// servers read X_Forwarded_For as X-Forwarded-For. The README lists them
// for operators.
var clientClaimHeaders = []string{
	"forwarded",
	"x-real-ip",
	"true-client-ip",
	"x-client-ip",
	"client-ip",
	"x-cluster-client-ip",
	"x-originating-ip",
	"x-remote-ip",
	"x-remote-addr",
	"x-host",
	"x-original-url",
	"x-rewrite-url",
}

// isClientClaim reports whether a request header named name is one only a
// trusted proxy may send (see clientClaimHeaders).
func isClientClaim(name string) bool {
	if headerNameHasPrefix(name, "x-forwarded") &&
		(len(name) == len("x-forwarded") || normalizedByte(name[len("x-forwarded")]) == '-') {
		return true
	}
	for _, h := range clientClaimHeaders {
		if len(name) == len(h) && headerNameHasPrefix(name, h) {
			return true
		}
	}
	return false
}

// dropClientClaims deletes from h every header only a trusted proxy may
// send.
func dropClientClaims(h http.Header) {
	for k := range h {
		if isClientClaim(k) {
			delete(h, k)
		}
	}
}

// headerNameHasPrefix reports whether name starts with prefix, a lower
// case name with '-', ignoring case and reading '_' as '-'.
func headerNameHasPrefix(name, prefix string) bool {
	if len(name) < len(prefix) {
		return false
	}
	for i := range len(prefix) {
		if normalizedByte(name[i]) != prefix[i] {
			return false
		}
	}
	return true
}

// normalizedByte is b in lower case, with '_' read as '-'.
func normalizedByte(b byte) byte {
	switch {
	case b == '_':
		return '-'
	case 'A' <= b && b <= 'Z':
		return b + 'a' - 'A'
	}
	return b
}

// stripH2CUpgrade removes a visitor's offer to switch the connection to
// HTTP/2 without TLS: the h2c token of Upgrade (the whole header and the
// upgrade token of Connection when it was the only one), and
// HTTP2-Settings. The offer is hop-by-hop, made to the gateway, which
// declines it: passed on, it would switch a stream the gateway proxies as
// HTTP/1.1 to a protocol it does not check, and on an h2c tunnel (HTTP/2
// with prior knowledge to the backend) it would fail the request with 502.
// The reverse proxy has already reduced Connection to "Upgrade" when the
// request is an upgrade.
func stripH2CUpgrade(h http.Header) {
	delete(h, "Http2-Settings")
	ups := h.Values("Upgrade")
	if len(ups) == 0 {
		return
	}
	var keep []string
	for _, v := range ups {
		for tok := range strings.SplitSeq(v, ",") {
			tok = strings.TrimSpace(tok)
			if tok != "" && !strings.EqualFold(tok, "h2c") {
				keep = append(keep, tok)
			}
		}
	}
	if len(keep) > 0 {
		h.Set("Upgrade", strings.Join(keep, ", "))
		return
	}
	h.Del("Upgrade")
	var conn []string
	for _, v := range h.Values("Connection") {
		for tok := range strings.SplitSeq(v, ",") {
			tok = strings.TrimSpace(tok)
			if tok != "" && !strings.EqualFold(tok, "upgrade") && !strings.EqualFold(tok, "h2c") {
				conn = append(conn, tok)
			}
		}
	}
	if len(conn) == 0 {
		h.Del("Connection")
	} else {
		h.Set("Connection", strings.Join(conn, ", "))
	}
}

// rewrite builds the request to the backend. The reverse proxy has already
// removed hop-by-hop headers (including those a visitor named in
// Connection) and Forwarded and X-Forwarded-For, -Host and -Proto. The
// host the backend is told is the validated one, never the visitor's text.
func (in *Server) rewrite(pr *httputil.ProxyRequest) {
	rt := pr.In.Context().Value(routeKey{}).(*route)
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = rt.t.Name()
	pr.Out.Host = rt.host
	setForwarded(pr.Out.Header, rt, in.forwardedFrom(pr.In.Header, rt))
}

// forwardedValues are the forwarded headers the backend is told.
type forwardedValues struct {
	forwardedFor, forwarded, proto string
	trusted                        bool // the peer is a trusted proxy
}

// forwardedFrom computes the forwarded headers of a request whose header,
// as the visitor sent it, is orig: a trusted proxy's own are extended,
// anyone else's replaced.
func (in *Server) forwardedFrom(orig http.Header, rt *route) forwardedValues {
	var own forwardedOwn
	return in.forwardedCached(orig, rt, &own)
}

// forwardedOwn is the gateway's own part of the forwarded headers of the
// requests of one visitor connection, kept for its next request to the
// same host (fast.go's path).
type forwardedOwn struct {
	peer                    netip.Addr
	host                    string
	https                   bool
	forwardedFor, forwarded string
}

// forwardedCached is forwardedFrom with the gateway's own part taken
// from own, or computed into it.
func (in *Server) forwardedCached(orig http.Header, rt *route, own *forwardedOwn) forwardedValues {
	proto := "http"
	if rt.https {
		proto = "https"
	}
	if own.forwardedFor == "" || own.peer != rt.peer || own.host != rt.host || own.https != rt.https {
		*own = forwardedOwn{
			peer: rt.peer, host: rt.host, https: rt.https,
			forwardedFor: rt.peer.String(),
			forwarded:    `for=` + forwardedNode(rt.peer) + `;host="` + rt.host + `";proto=` + proto,
		}
	}
	fv := forwardedValues{
		forwardedFor: own.forwardedFor,
		forwarded:    own.forwarded,
		proto:        proto,
		trusted:      in.trusted(rt.peer),
	}
	if fv.trusted {
		if prior := orig.Values("X-Forwarded-For"); len(prior) > 0 {
			fv.forwardedFor = strings.Join(prior, ", ") + ", " + fv.forwardedFor
		}
		if prior := orig.Values("Forwarded"); len(prior) > 0 {
			fv.forwarded = strings.Join(prior, ", ") + ", " + fv.forwarded
		}
		if v := orig.Get("X-Forwarded-Proto"); v != "" {
			fv.proto = v
		}
	}
	return fv
}

// setForwarded rewrites h, the header of the request to the backend, from
// which hop-by-hop headers and Forwarded and X-Forwarded-For, -Host and
// -Proto are already removed: the other headers only a proxy may set are
// dropped unless the peer is a trusted proxy (see clientClaimHeaders), so
// the ones set here cannot be removed or spoofed by a visitor. Both
// forwarding paths (the reverse proxy's and fast.go's) rewrite with it.
func setForwarded(h http.Header, rt *route, fv forwardedValues) {
	clearForwarded(h, rt, fv)
	h.Set("X-Forwarded-For", fv.forwardedFor)
	h.Set("X-Forwarded-Host", rt.host)
	h.Set("X-Forwarded-Proto", fv.proto)
	h.Set("Forwarded", fv.forwarded)
}

// clearForwarded is setForwarded without the four headers it sets: fast.go's
// path writes them into the head itself (appendForwarded), with no
// change to the map.
func clearForwarded(h http.Header, rt *route, fv forwardedValues) {
	// Also for h2c tunnels: their backends get HTTP/2 with prior
	// knowledge, where an Upgrade header fails the request.
	stripH2CUpgrade(h)
	if !fv.trusted {
		dropClientClaims(h)
	}
	if rt.pol.BasicAuth() {
		// The credentials were the gateway's to check, not the backend's.
		h.Del("Authorization")
	}
}

// appendForwarded appends the four headers setForwarded sets, as
// appendHeader writes a field.
func appendForwarded(b []byte, rt *route, fv forwardedValues) []byte {
	b = appendField(b, "X-Forwarded-For", fv.forwardedFor)
	b = appendField(b, "X-Forwarded-Host", rt.host)
	b = appendField(b, "X-Forwarded-Proto", fv.proto)
	return appendField(b, "Forwarded", fv.forwarded)
}

// forwardedNode writes an address as a Forwarded "for" value.
func forwardedNode(ip netip.Addr) string {
	if ip.Is6() {
		return `"[` + ip.String() + `]"`
	}
	return ip.String()
}
