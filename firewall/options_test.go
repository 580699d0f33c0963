package firewall

import (
	"context"
	"strconv"
	"testing"

	"go.uber.org/goleak"
)

func itoa(p uint16) string { return strconv.Itoa(int(p)) }

func TestOptionsErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{Backend: "pf"}, `firewall: unknown backend "pf" (want nftables or iptables)`},
		{Options{Refresh: -1}, "firewall: refresh -1ns is negative"},
		{Options{HostChain: "inet filter"}, `firewall: bad host chain "inet filter": not three words (want "FAMILY TABLE CHAIN", e.g. "inet filter input")`},
		{Options{HostChain: "bridge filter input"}, `firewall: bad host chain "bridge filter input": family is not inet, ip or ip6 (want "FAMILY TABLE CHAIN", e.g. "inet filter input")`},
		{Options{HostChain: "inet diglett input"}, `firewall: bad host chain "inet diglett input": that is diglett's own table (want "FAMILY TABLE CHAIN", e.g. "inet filter input")`},
		{Options{Backend: "iptables", HostChain: "inet filter input"}, "firewall: host chain is for the nftables backend only"},
	} {
		_, err := New(context.Background(), tc.o)
		if err == nil || err.Error() != tc.want {
			t.Errorf("New(%+v) = %v, want %q", tc.o, err, tc.want)
		} else {
			t.Logf("%+v: %v", tc.o, err)
		}
	}
}

func TestPortErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		ports []Port
		want  string
	}{
		{[]Port{{"tcp", 0}}, "firewall: tcp port 0 is not a port"},
		{[]Port{{"tcp", 80}, {"sctp", 53}}, `firewall: bad protocol "sctp" for port 53 (want tcp or udp)`},
		{[]Port{{"", 53}}, `firewall: bad protocol "" for port 53 (want tcp or udp)`},
	} {
		// Set checks the ports before it touches the backend.
		f := &Firewall{}
		err := f.Set(context.Background(), tc.ports)
		if err == nil || err.Error() != tc.want {
			t.Errorf("Set(%v) = %v, want %q", tc.ports, err, tc.want)
		} else {
			t.Logf("%v: %v", tc.ports, err)
		}
	}
}

func TestNormalizeSorts(t *testing.T) {
	t.Parallel()
	got, err := normalize([]Port{{"udp", 53}, {"tcp", 443}, {"tcp", 80}, {"udp", 53}, {"tcp", 443}})
	if err != nil {
		t.Fatal(err)
	}
	want := []Port{{"tcp", 80}, {"tcp", 443}, {"udp", 53}}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
