package gateway

// What an HTTP ingress (package ingress) needs of the gateway: a tunnel
// looked up by name, its visitor rules, its live members and its visitor
// cap; a member's streams; the host names of the domain; the WebSocket
// agents that arrive on the HTTPS port. The gateway knows nothing of the
// ingress: the program that runs both wires them together.

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/diglett/diglett/internal/protocol"
)

// HTTPTunnel is a published tunnel (live, or leased while its agents are
// away) as an HTTP ingress sees it. Its methods are safe for concurrent
// use; what they return is a snapshot, never changed afterwards (and not
// to be changed by the caller).
type HTTPTunnel interface {
	// Name is the tunnel's name.
	Name() string
	// Visitors is who may reach the tunnel and how its backend is
	// spoken to, as its latest registration set them.
	Visitors() VisitorRules
	// Members are the agent sessions serving the tunnel now; none while
	// it is leased.
	Members() []Member
	// Admit takes a slot of the tunnel's visitor cap
	// (Config.MaxVisitorsPerTunnel) for visitor, released by calling
	// release once; ok is false, with the refusal counted and logged,
	// when the cap is reached.
	Admit(visitor net.Addr) (release func(), ok bool)
}

// VisitorRules is who may reach a tunnel and how the gateway talks to
// its backend. Its methods are safe for concurrent use.
type VisitorRules interface {
	// Allows reports whether a visitor from ip may reach the tunnel.
	Allows(ip netip.Addr) bool
	// BasicAuth reports whether visitors must give a user and password.
	BasicAuth() bool
	// CheckPassword reports whether user and password are the tunnel's,
	// in time that does not depend on how much of them matched.
	CheckPassword(user, password string) bool
	// H2C reports whether the backend speaks HTTP/2 without TLS.
	H2C() bool
}

// Member is one agent session serving a tunnel. Its methods are safe for
// concurrent use.
type Member interface {
	// ID identifies the session, uniquely in this gateway.
	ID() uint64
	// Serves reports whether the session still serves tunnel name.
	Serves(name string) bool
	// OpenStream opens a stream to the agent for a visitor (its address)
	// of tunnel name and writes the stream header; the agent's status
	// byte (protocol.ReadStatus) is left for the caller to read. The open
	// waits at most Config.HandshakeTimeout, or until ctx ends. The
	// stream also has Reset and CloseWrite methods.
	OpenStream(ctx context.Context, name, visitor string) (net.Conn, error)
	// Context ends when the session leaves its tunnels: it drains or
	// ends. Resources kept for the member (idle streams) go then.
	Context() context.Context
}

// Interface guards.
var (
	_ HTTPTunnel   = (*tunnel)(nil)
	_ VisitorRules = (*visitorPolicy)(nil)
	_ Member       = (*session)(nil)
)

// Tunnel returns the tunnel published as name, live or leased; false when
// there is none, or when it is a UDP tunnel, which has no HTTP address.
// It takes no lock (the routes are a copy-on-write snapshot).
func (s *Server) Tunnel(name string) (HTTPTunnel, bool) {
	t := s.reg.route(name)
	if t == nil || t.udp {
		return nil, false
	}
	return t, true
}

// Domain is Config.Domain, in lower case without a trailing dot; "" when
// the gateway serves no HTTP ingress.
func (s *Server) Domain() string { return s.cfg.Domain }

// ServeAgentTLS serves a connection whose TLS handshake was done elsewhere
// (on the HTTPS ingress port, with the configuration AgentTLS returned)
// and negotiated the WebSocket agent protocol: the WebSocket upgrade, the
// login and the session's whole life. It returns at once; the connection
// is closed when the session ends, or at once if the server is closed.
func (s *Server) ServeAgentTLS(c *tls.Conn) { s.agentWS.push(c) }

// SetIngressPorts tells the gateway the public ports of the HTTP ingress
// (0 for one not served), for the tunnels' URLs sent to agents. Safe to
// call at any time.
func (s *Server) SetIngressPorts(httpPort, httpsPort int) {
	s.httpPort.Store(int32(httpPort))
	s.httpsPort.Store(int32(httpsPort))
}

// URLs are the HTTP and HTTPS addresses of tunnel name; empty when the
// ingress is not served (see SetIngressPorts).
func (s *Server) URLs(name string) (httpURL, httpsURL string) {
	if s.cfg.Domain == "" {
		return "", ""
	}
	host := name + "." + s.cfg.Domain
	if p := s.httpPort.Load(); p != 0 {
		httpURL = "http://" + host
		if p != 80 {
			httpURL += ":" + strconv.Itoa(int(p))
		}
	}
	if p := s.httpsPort.Load(); p != 0 {
		httpsURL = "https://" + host
		if p != 443 {
			httpsURL += ":" + strconv.Itoa(int(p))
		}
	}
	return httpURL, httpsURL
}

// ErrMalformedHost is a Host header (or HTTP/2 :authority) whose port is
// not a port number.
var ErrMalformedHost = errors.New("malformed host")

// SplitHost maps a Host header (or TLS server name) to a tunnel name of
// domain (lower case, no trailing dot) and the host the backend is told:
// the tunnel's name and the domain in lower case without a trailing dot,
// then the port, if any, as a decimal number. The port, when there is
// one, must be 0-65535 in decimal digits (so "app.example.com:1,evil.com",
// "app.example.com:" and "app.example.com:abc" are ErrMalformedHost); a
// host that is not a tunnel of the domain gives an empty name and no
// error.
func SplitHost(domain, host string) (name, forwarded string, err error) {
	if strings.ContainsAny(host, "[]") {
		return "", "", nil // an IPv6 literal: never a tunnel
	}
	hostname, port, hasPort := strings.Cut(host, ":")
	var p uint64
	if hasPort {
		if p, err = strconv.ParseUint(port, 10, 16); err != nil {
			return "", "", ErrMalformedHost
		}
	}
	canonical := strings.ToLower(strings.TrimSuffix(hostname, "."))
	// canonical ends in "." + domain (compared in place: this runs for
	// every request by Host).
	cut := len(canonical) - len(domain) - 1
	if cut < 0 || canonical[cut] != '.' || canonical[cut+1:] != domain {
		return "", "", nil
	}
	name = canonical[:cut]
	if protocol.ValidateName(name) != nil {
		return "", "", nil
	}
	// A host already as the backend is told it (lower case, no trailing
	// dot, the port with no leading zero) is passed on as it is.
	if canonical == hostname && (!hasPort || port == "0" || port[0] != '0') {
		return name, host, nil
	}
	forwarded = canonical
	if hasPort {
		forwarded += ":" + strconv.FormatUint(p, 10)
	}
	return name, forwarded, nil
}

// tunnelName maps a Host header (or TLS server name) to a tunnel name:
// case-insensitive, ignoring a port and a trailing dot. A host whose port
// is not a number is no tunnel's (see SplitHost).
func (s *Server) tunnelName(host string) (string, bool) {
	name, _, err := s.Route(host)
	return name, err == nil && name != ""
}

// Name is the tunnel's name.
func (t *tunnel) Name() string { return t.name }

// Visitors is the tunnel's visitor policy.
func (t *tunnel) Visitors() VisitorRules { return t.policy() }

// memberView is a members snapshot as the Member interface, made once
// per snapshot rather than once per request.
type memberView struct {
	of *[]*session // the members snapshot it was made of
	ms []Member
}

// Members are the tunnel's live sessions; in a cluster, when this node
// has none, the other nodes that serve it.
func (t *tunnel) Members() []Member {
	p := t.members.Load()
	if p == nil || len(*p) == 0 {
		return t.remoteMembers()
	}
	if v := t.view.Load(); v != nil && v.of == p {
		return v.ms
	}
	ms := make([]Member, len(*p))
	for i, ss := range *p {
		ms[i] = ss
	}
	t.view.Store(&memberView{of: p, ms: ms})
	return ms
}

// Admit takes a slot of the tunnel's visitor cap.
func (t *tunnel) Admit(visitor net.Addr) (release func(), ok bool) {
	l := t.reg.srv.limits
	if !l.acquireTunnel(t, visitor) {
		return nil, false
	}
	t.releaseOnce.Do(func() { t.releaseSlot = func() { l.releaseTunnel(t) } })
	return t.releaseSlot, true
}

// Allows reports whether a visitor from ip may reach the tunnel.
func (p *visitorPolicy) Allows(ip netip.Addr) bool { return p.allows(ip) }

// BasicAuth reports whether visitors must give a user and password.
func (p *visitorPolicy) BasicAuth() bool { return p.user != "" }

// CheckPassword reports whether user and password match.
func (p *visitorPolicy) CheckPassword(user, password string) bool {
	return p.checkPassword(user, password)
}

// H2C reports whether the backend speaks HTTP/2 without TLS.
func (p *visitorPolicy) H2C() bool { return p.h2c }

// ID identifies the session.
func (ss *session) ID() uint64 { return ss.id }

// Serves reports whether the session is a member of tunnel name.
func (ss *session) Serves(name string) bool { return ss.serves(name) }

// OpenStream opens a stream for a visitor of tunnel name.
func (ss *session) OpenStream(ctx context.Context, name, visitor string) (net.Conn, error) {
	st, err := ss.openStream(ctx, name, visitor)
	if err != nil {
		return nil, err
	}
	return st, nil
}

// Context ends when the session leaves its tunnels.
func (ss *session) Context() context.Context {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.member == nil {
		ss.member, ss.endMember = context.WithCancel(ss.srv.ctx)
		if ss.closed {
			ss.endMember() // it left already
		}
	}
	return ss.member
}
