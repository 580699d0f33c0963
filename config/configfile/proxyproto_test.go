package configfile

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestProxyProtocolSection(t *testing.T) {
	data := "version: 1\nproxy_protocol:\n  from:\n    - 10.0.0.7/24\n    - 192.0.2.7\n    - 2001:db8::1\n"
	f, err := Parse("gw.yaml", "/cfg", []byte(data), Schema{}, ServerSections(), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("2001:db8::1/128")}
	if f.ProxyProtocol == nil || !slices.Equal(f.ProxyProtocol.From, want) {
		t.Fatalf("proxy_protocol = %+v, want from %v", f.ProxyProtocol, want)
	}
	f, err = Parse("gw.yaml", "/cfg", []byte("version: 1\n"), Schema{}, ServerSections(), nil)
	if err != nil || f.ProxyProtocol != nil {
		t.Fatalf("without the section: %+v, %v", f.ProxyProtocol, err)
	}
}

func TestProxyProtocolSectionErrors(t *testing.T) {
	for name, tc := range map[string]struct{ data, want string }{
		"bad cidr":   {"version: 1\nproxy_protocol:\n  from:\n    - 10.0.0.0/8\n    - 10.0.0.0/33\n", `gw.yaml:5: proxy_protocol.from: address "10.0.0.0/33": want an IP address or a CIDR prefix`},
		"bad addr":   {"version: 1\nproxy_protocol: {from: [lb.internal]}\n", `gw.yaml:2: proxy_protocol.from: address "lb.internal"`},
		"no from":    {"version: 1\nproxy_protocol: {}\n", `gw.yaml:2: proxy_protocol: no from`},
		"not a map":  {"version: 1\nproxy_protocol: [10.0.0.1]\n", `gw.yaml:2: proxy_protocol: want a mapping`},
		"unknown":    {"version: 1\nproxy_protocol: {from: 10.0.0.1, to: x}\n", `gw.yaml:2: proxy_protocol: unknown key "to"`},
		"agent file": {"version: 1\nproxy_protocol: {from: 10.0.0.1}\n", `gw.yaml:2: unknown key "proxy_protocol"`},
	} {
		t.Run(name, func(t *testing.T) {
			sections := ServerSections()
			if name == "agent file" {
				sections = []string{"tunnels"}
			}
			_, err := Parse("gw.yaml", "/cfg", []byte(tc.data), Schema{}, sections, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}
