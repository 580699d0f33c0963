package portmap

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
)

// privatePrefixes are the IPv4 and IPv6 ranges that are not reachable
// from the internet.
var privatePrefixes = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),       // this network
	netip.MustParsePrefix("10.0.0.0/8"),      // RFC 1918
	netip.MustParsePrefix("100.64.0.0/10"),   // shared address space (carrier-grade NAT), RFC 6598
	netip.MustParsePrefix("127.0.0.0/8"),     // loopback
	netip.MustParsePrefix("169.254.0.0/16"),  // link-local
	netip.MustParsePrefix("172.16.0.0/12"),   // RFC 1918
	netip.MustParsePrefix("192.0.0.0/24"),    // protocol assignments
	netip.MustParsePrefix("192.168.0.0/16"),  // RFC 1918
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved
	netip.MustParsePrefix("::1/128"),         // loopback
	netip.MustParsePrefix("fc00::/7"),        // unique local
	netip.MustParsePrefix("fe80::/10"),       // link-local
	netip.MustParsePrefix("64:ff9b:1::/48"),  // local-use translation
	netip.MustParsePrefix("2001:db8::/32"),   // documentation
	netip.MustParsePrefix("192.0.2.0/24"),    // documentation
	netip.MustParsePrefix("198.51.100.0/24"), // documentation
	netip.MustParsePrefix("203.0.113.0/24"),  // documentation
}

// IsPrivate reports whether ip cannot be reached from the internet:
// RFC 1918 and carrier-grade NAT (100.64.0.0/10) ranges, loopback,
// link-local, unique local, documentation and reserved ranges, and the
// unspecified and invalid addresses. A router whose external address is
// private is behind another NAT (double NAT or carrier-grade NAT).
func IsPrivate(ip netip.Addr) bool {
	if !ip.IsValid() || ip.IsUnspecified() || ip.IsMulticast() {
		return true
	}
	ip = ip.Unmap()
	for _, p := range privatePrefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// DefaultGateway returns the gateway of the default IPv4 route (read from
// the kernel's routing table, Linux only).
func DefaultGateway() (netip.Addr, error) {
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return netip.Addr{}, fmt.Errorf("default gateway: %w", err)
	}
	defer f.Close()
	return parseRoutes(f)
}

// parseRoutes finds the default route's gateway in the kernel's IPv4
// routing table text.
func parseRoutes(f io.Reader) (netip.Addr, error) {
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		// Iface Destination Gateway Flags ... Mask ...
		if len(fields) < 8 || fields[1] != "00000000" || fields[7] != "00000000" {
			continue
		}
		b, err := hex.DecodeString(fields[2])
		if err != nil || len(b) != 4 {
			continue
		}
		var a [4]byte
		binary.LittleEndian.PutUint32(a[:], binary.BigEndian.Uint32(b))
		gw := netip.AddrFrom4(a)
		if gw.IsUnspecified() {
			continue
		}
		return gw, nil
	}
	if err := sc.Err(); err != nil {
		return netip.Addr{}, fmt.Errorf("default gateway: %w", err)
	}
	return netip.Addr{}, errors.New("default gateway: no default IPv4 route")
}

// localAddrTo returns the local address the kernel would use to reach gw
// (no packet is sent).
func localAddrTo(gw netip.Addr) (netip.Addr, error) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(gw, 1900)))
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), nil
}
