package portmap

import (
	"net/netip"
	"strings"
	"testing"
)

func TestIsPrivate(t *testing.T) {
	for s, want := range map[string]bool{
		"10.1.2.3": true, "172.16.0.1": true, "172.31.255.255": true, "192.168.1.1": true,
		"100.64.0.1": true, "100.127.255.254": true, "169.254.1.1": true, "127.0.0.1": true,
		"0.0.0.0": true, "fd00::1": true, "fe80::1": true, "::ffff:192.168.1.1": true,
		"100.128.0.1": false, "172.32.0.1": false, "11.1.1.1": false, "8.8.8.8": false,
		"2a00:1450::1": false,
	} {
		if got := IsPrivate(netip.MustParseAddr(s)); got != want {
			t.Errorf("IsPrivate(%s) = %v, want %v", s, got, want)
		}
	}
	if !IsPrivate(netip.Addr{}) {
		t.Error("IsPrivate(zero) = false")
	}
}

func TestParseRoutes(t *testing.T) {
	table := `Iface	Destination	Gateway 	Flags	RefCnt	Use	Metric	Mask		MTU	Window	IRTT
eth0	0000FEA9	00000000	0001	0	0	0	0000FFFF	0	0	0
eth0	00000000	0101A8C0	0003	0	0	0	00000000	0	0	0
`
	gw, err := parseRoutes(strings.NewReader(table))
	if err != nil || gw != netip.MustParseAddr("192.168.1.1") {
		t.Fatalf("gateway %v, %v; want 192.168.1.1", gw, err)
	}
	if _, err := parseRoutes(strings.NewReader(strings.SplitAfter(table, "\n")[0])); err == nil {
		t.Fatal("no default route: no error")
	}
}
