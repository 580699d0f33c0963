package gateway

import (
	"crypto/sha256"
	"crypto/subtle"
	"net"
	"net/netip"

	"github.com/diglett/diglett/internal/protocol"
)

// visitorPolicy is who may reach a tunnel and how the gateway talks to its
// backend, as the agent registered it.
type visitorPolicy struct {
	user  string         // basic auth user; "" for none
	pass  [32]byte       // SHA-256 of the password
	allow []netip.Prefix // empty: everyone
	h2c   bool           // the backend speaks HTTP/2 without TLS
	udp   bool           // a UDP tunnel's: a cluster's nodes learn it with the rules
}

// checkVisitorAccess applies the gateway's policy to the visitor rules of
// a registration.
func checkVisitorAccess(policy VisitorAccess, req *protocol.Register) *protocol.Error {
	rules := req.BasicAuth != nil || len(req.AllowIPs) > 0
	switch {
	case policy == VisitorAccessDeny && rules:
		return refuse(protocol.CodeForbidden, "this gateway does not take visitor rules (basic auth, allowed IPs) from agents")
	case policy == VisitorAccessRequire && !rules:
		return refuse(protocol.CodeForbidden, "this gateway publishes only tunnels with basic auth or allowed IPs")
	}
	return nil
}

func newVisitorPolicy(req *protocol.Register) (*visitorPolicy, error) {
	allow, err := protocol.ParseAllowIPs(req.AllowIPs)
	if err != nil {
		return nil, err
	}
	if len(allow) == 0 && req.BasicAuth == nil {
		// No rules, as most tunnels: shared, never changed.
		return &noRules[b2i(req.H2C)][b2i(req.UDP)], nil
	}
	p := &visitorPolicy{allow: allow, h2c: req.H2C, udp: req.UDP}
	if a := req.BasicAuth; a != nil {
		p.user = a.User
		p.pass = sha256.Sum256([]byte(a.Password))
	}
	return p, nil
}

// noRules are the policies of tunnels without visitor rules, by h2c and
// udp. A policy is not changed once made: a tunnel's new rules are a new
// policy.
var noRules = [2][2]visitorPolicy{
	{{}, {udp: true}},
	{{h2c: true}, {h2c: true, udp: true}},
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// allows reports whether a visitor from ip may reach the tunnel.
func (p *visitorPolicy) allows(ip netip.Addr) bool {
	return len(p.allow) == 0 || protocol.PrefixesContain(p.allow, ip)
}

// checkPassword reports whether user and password match, in time that does
// not depend on how much of them matched.
func (p *visitorPolicy) checkPassword(user, password string) bool {
	got := sha256.Sum256([]byte(password))
	u := sha256.Sum256([]byte(user))
	want := sha256.Sum256([]byte(p.user))
	userOK := subtle.ConstantTimeCompare(u[:], want[:])
	passOK := subtle.ConstantTimeCompare(got[:], p.pass[:])
	return userOK&passOK == 1
}

// addrIP is the IP address of a TCP or UDP address; the zero Addr if none.
func addrIP(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}
