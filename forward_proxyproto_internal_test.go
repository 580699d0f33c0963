package diglett

import (
	"bufio"
	"bytes"
	"net"
	"testing"

	"github.com/pires/go-proxyproto"
)

// TestProxyHeaderAddresses: the header carries the visitor's address as
// its source whatever the destination; a visitor address that is not an
// IP address and port gives a header without addresses (v1 UNKNOWN, v2
// LOCAL) rather than an error.
func TestProxyHeaderAddresses(t *testing.T) {
	v4 := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 51000}
	v6 := &net.TCPAddr{IP: net.ParseIP("2001:db8::7"), Port: 51000}
	backend4 := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 22}
	backend6 := &net.TCPAddr{IP: net.IPv6loopback, Port: 22}
	tests := []struct {
		name      string
		src, dst  net.Addr
		local     bool
		wantSrc   string
		wantDst   string
		wantProto proxyproto.AddressFamilyAndProtocol
	}{
		{"v4", v4, backend4, false, "192.0.2.7:51000", "127.0.0.1:22", proxyproto.TCPv4},
		{"v6", v6, backend6, false, "[2001:db8::7]:51000", "[::1]:22", proxyproto.TCPv6},
		{"v4 to a v6 backend", v4, backend6, false, "192.0.2.7:51000", "[::1]:22", proxyproto.TCPv6},
		{"not a TCP backend", v4, &net.UnixAddr{Name: "/run/b.sock", Net: "unix"}, false, "192.0.2.7:51000", "0.0.0.0:0", proxyproto.TCPv4},
		{"v6, not a TCP backend", v6, nil, false, "[2001:db8::7]:51000", "[::]:0", proxyproto.TCPv6},
		{"visitor not an address", Addr{Host: "unparsable"}, backend4, true, "", "", proxyproto.UNSPEC},
	}
	for _, tt := range tests {
		for _, v := range []int{ProxyProtocolV1, ProxyProtocolV2} {
			hdr, local, err := proxyHeader(v, tt.src, tt.dst)
			if err != nil {
				t.Errorf("%s, v%d: %v", tt.name, v, err)
				continue
			}
			if local != tt.local {
				t.Errorf("%s, v%d: local %v; want %v", tt.name, v, local, tt.local)
			}
			if tt.local && v == ProxyProtocolV1 && string(hdr) != "PROXY UNKNOWN\r\n" {
				t.Errorf("%s, v1: header %q; want PROXY UNKNOWN", tt.name, hdr)
			}
			h, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(hdr)))
			if err != nil {
				t.Errorf("%s, v%d: the library cannot parse %q: %v", tt.name, v, hdr, err)
				continue
			}
			if h.Version != byte(v) || h.TransportProtocol != tt.wantProto {
				t.Errorf("%s, v%d: version %d, protocol %v; want %v", tt.name, v, h.Version, h.TransportProtocol, tt.wantProto)
			}
			if tt.local {
				if v == ProxyProtocolV2 && h.Command != proxyproto.LOCAL {
					t.Errorf("%s, v2: command %v; want LOCAL", tt.name, h.Command)
				}
				continue
			}
			src, dst, ok := h.TCPAddrs()
			if !ok || src.String() != tt.wantSrc || dst.String() != tt.wantDst {
				t.Errorf("%s, v%d: %v -> %v; want %s -> %s", tt.name, v, src, dst, tt.wantSrc, tt.wantDst)
			}
		}
	}
}
