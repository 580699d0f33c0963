package source

import (
	"net"
	"net/netip"
)

// Of is the source an IP address counts against: the address itself
// (IPv4), or its /64 (IPv6). The zero Addr gives the zero Prefix: one
// shared source.
func Of(ip netip.Addr) netip.Prefix {
	ip = ip.Unmap().WithZone("")
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

// OfAddr is Of for a connection's address. Addresses that are not IP
// share the zero prefix.
func OfAddr(a net.Addr) netip.Prefix {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	case nil:
	default:
		ap, _ = netip.ParseAddrPort(a.String())
	}
	return Of(ap.Addr())
}

// Name is a source as logged: an IPv4 address, or an IPv6 prefix.
func Name(p netip.Prefix) string {
	switch {
	case !p.IsValid():
		return "unknown"
	case p.Addr().Is4():
		return p.Addr().String()
	}
	return p.String()
}
