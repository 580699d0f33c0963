package homenet_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett/dnsupdate"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/homenet"
	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/testutil/dnstest"
	"github.com/diglett/diglett/internal/testutil/routertest"
)

// within bounds each wait for the router or the name server to show a
// change; the refresh in these tests is 1s.
const within = 20 * time.Second

func logger(t *testing.T) (*slog.Logger, *testutil.Buffer) {
	buf := &testutil.Buffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

func dnsOptions(d *dnstest.Server) dnsupdate.Options {
	return dnsupdate.Options{Server: d.Addr, Zone: d.Zone, TTL: 30 * time.Second,
		TSIG: &dnsupdate.TSIG{Name: d.KeyName, Algorithm: d.KeyAlgorithm, Secret: d.Secret}}
}

// digA is the A records of name as the real lookup program reads them.
func digA(t *testing.T, d *dnstest.Server, name string) string {
	return strings.TrimSpace(d.Dig(t, "+short", name, "A"))
}

func waitDig(t *testing.T, d *dnstest.Server, name, want string) {
	t.Helper()
	if err := testutil.Poll(within, func() error {
		if got := digA(t, d, name); got != want {
			return fmt.Errorf("%s A = %q, want %q", name, got, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func waitListed(t *testing.T, r *routertest.Router, port uint16, want bool) {
	t.Helper()
	waitListedProto(t, r, "tcp", port, want)
}

func waitListedProto(t *testing.T, r *routertest.Router, proto string, port uint16, want bool) {
	t.Helper()
	if err := testutil.Poll(within, func() error {
		if r.Listed(t, proto, port) != want {
			return fmt.Errorf("%s %d mapped: %t, want %t", proto, port, !want, want)
		}
		return nil
	}); err != nil {
		t.Fatalf("%v\n%s", err, r.Upnpc(t, "-l"))
	}
}

// An Exposer with a router and a name server: the ports of its state and
// of the tunnels' routes are mapped and unmapped, the names point at the
// router's public address and follow it when it changes, and Close
// deletes the mappings.
func TestExposerRouterAndDNS(t *testing.T) {
	t.Parallel()
	r := routertest.Start(t, routertest.Options{})
	d := dnstest.Start(t, "home.test")
	log, logs := logger(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e, err := homenet.New(ctx, homenet.Options{
		NAT:    &homenet.NATOptions{Protocol: "upnp", Router: r.LAN, Refresh: time.Second, Lifetime: 10 * time.Second},
		DNS:    &homenet.DNSOptions{Update: dnsOptions(d)},
		Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	e.Set(homenet.State{Ports: []homenet.Port{{Proto: "tcp", Port: 45101, Service: "agents"}},
		Names: []string{"home.test", "*.home.test"}})
	waitListed(t, r, 45101, true)
	waitDig(t, d, "home.test", r.WAN.String())
	waitDig(t, d, "anything.home.test", r.WAN.String())
	if ip, proto := e.ExternalIP(); ip != r.WAN || proto != "upnp" {
		t.Fatalf("ExternalIP() = %v %s, want %v upnp", ip, proto, r.WAN)
	}
	t.Logf("tcp 45101 mapped; home.test and *.home.test point at the router's address %v (dig)", r.WAN)

	c, err := e.Registerer().Register(ctx, gateway.Route{Name: "web", Port: 45102, Hosts: []string{"web.home.test"}})
	if err != nil {
		t.Fatal(err)
	}
	waitListed(t, r, 45102, true)
	c.Close()
	waitListed(t, r, 45102, false)
	t.Logf("a tunnel's port was mapped while its route lived, and unmapped after")

	// A UDP tunnel's port is mapped as UDP, and not as TCP.
	c, err = e.Registerer().Register(ctx, gateway.Route{Name: "dns", Port: 45103, UDP: true})
	if err != nil {
		t.Fatal(err)
	}
	waitListedProto(t, r, "udp", 45103, true)
	if r.Listed(t, "tcp", 45103) {
		t.Fatal("a UDP tunnel's port was mapped as TCP")
	}
	c.Close()
	waitListedProto(t, r, "udp", 45103, false)
	t.Logf("a UDP tunnel's port was mapped as udp while its route lived")

	// The provider gives the router another address: the records follow
	// at the next refresh.
	b := r.WAN.As4()
	b[3] += 2
	old, next := r.WAN, netip.AddrFrom4(b)
	r.SetWAN(t, next)
	waitDig(t, d, "home.test", next.String())
	waitDig(t, d, "anything.home.test", next.String())
	if !strings.Contains(logs.String(), "public address changed") {
		t.Errorf("no log line of the change:\n%s", logs)
	}
	t.Logf("public address %v -> %v: the records followed", old, next)

	// The router reboots with an empty table: the mapping comes back.
	r.Restart(t)
	waitListed(t, r, 45101, true)
	t.Logf("the router restarted; tcp 45101 mapped again")

	if err := e.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if r.Listed(t, "tcp", 45101) {
		t.Fatalf("tcp 45101 still mapped after Close; the exposer's log:\n%s", logs)
	}
	if got := digA(t, d, "home.test"); got != next.String() {
		t.Fatalf("Close changed the records: %q", got)
	}
	t.Logf("Close deleted the mappings and left the records")
}

// With records per tunnel, each tunnel's hosts in the zone get a record
// while it lives; hosts outside the zone are left alone.
func TestExposerRecordsPerTunnel(t *testing.T) {
	t.Parallel()
	d := dnstest.Start(t, "home.test")
	log, _ := logger(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	addr := netip.MustParseAddr("198.51.100.7")
	e, err := homenet.New(ctx, homenet.Options{
		DNS:    &homenet.DNSOptions{Update: dnsOptions(d), Addresses: []netip.Addr{addr}, PerTunnel: true},
		Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	e.Set(homenet.State{Names: []string{"home.test"}})
	waitDig(t, d, "home.test", addr.String())
	if got := digA(t, d, "web.home.test"); got != "" {
		t.Fatalf("web.home.test before its tunnel: %q", got)
	}
	c, err := e.Registerer().Register(ctx, gateway.Route{Name: "web", Port: 45201, Hosts: []string{"web.home.test", "www.elsewhere.test"}})
	if err != nil {
		t.Fatal(err)
	}
	waitDig(t, d, "web.home.test", addr.String())
	t.Logf("web.home.test -> %v while its tunnel lives", addr)
	c.Close()
	waitDig(t, d, "web.home.test", "")
	waitDig(t, d, "home.test", addr.String())
	t.Logf("web.home.test deleted with its tunnel; home.test kept")
}

// A router whose own external address is private (carrier-grade NAT)
// gets a warning that says port mapping cannot make anything public.
func TestExposerWarnsBehindCGNAT(t *testing.T) {
	t.Parallel()
	r := routertest.Start(t, routertest.Options{CGNAT: true})
	log, logs := logger(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := homenet.New(ctx, homenet.Options{
		NAT:    &homenet.NATOptions{Protocol: "upnp", Router: r.LAN, Refresh: time.Second, Lifetime: 10 * time.Second},
		Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	if err := testutil.Poll(within, func() error {
		if !strings.Contains(logs.String(), "double NAT or carrier-grade NAT") {
			return fmt.Errorf("no warning yet:\n%s", logs)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("router with WAN %v: the warning was logged", r.WAN)
}

func TestNewChecksOptions(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		o    homenet.Options
		want string
	}{
		{homenet.Options{}, "nothing to do"},
		{homenet.Options{NAT: &homenet.NATOptions{Protocol: "igd"}}, `unknown protocol "igd"`},
		{homenet.Options{NAT: &homenet.NATOptions{Refresh: 5 * time.Minute, Lifetime: time.Minute}}, "must be shorter than lifetime"},
		{homenet.Options{DNS: &homenet.DNSOptions{Update: dnsupdate.Options{Server: "127.0.0.1:53", Zone: "home.test"}}}, "no address to point the names at"},
	} {
		_, err := homenet.New(ctx, c.o)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%+v) = %v, want %q", c.o, err, c.want)
		}
	}
}

// A passive Exposer (a node of a cluster that does not lead) keeps the
// router and the firewall but not the records, until it is made active.
func TestExposerDNSPassive(t *testing.T) {
	t.Parallel()
	d := dnstest.Start(t, "home.test")
	log, _ := logger(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	addr := netip.MustParseAddr("198.51.100.9")
	e, err := homenet.New(ctx, homenet.Options{
		DNS:     &homenet.DNSOptions{Update: dnsOptions(d), Addresses: []netip.Addr{addr}},
		Logger:  log,
		Passive: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	e.Set(homenet.State{Names: []string{"home.test"}})
	// A change made while passive must not be undone: another node's.
	other := homenet.Options{DNS: &homenet.DNSOptions{Update: dnsOptions(d), Addresses: []netip.Addr{netip.MustParseAddr("198.51.100.1")}}, Logger: log}
	o, err := homenet.New(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	o.Set(homenet.State{Names: []string{"home.test"}})
	waitDig(t, d, "home.test", "198.51.100.1")
	o.Close(ctx)
	e.SetShared(false) // a round with nothing to do, observed below
	if got := digA(t, d, "home.test"); got != "198.51.100.1" {
		t.Fatalf("the passive Exposer wrote the record: %q", got)
	}
	e.SetShared(true)
	waitDig(t, d, "home.test", addr.String())
	t.Logf("passive: the record stayed another's; active: it became %v", addr)
}

// A passive Exposer maps nothing on the router; made active it maps its
// ports, and made passive again it deletes them, for the next leader.
func TestExposerRouterPassive(t *testing.T) {
	t.Parallel()
	r := routertest.Start(t, routertest.Options{})
	log, _ := logger(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := homenet.New(ctx, homenet.Options{
		NAT:     &homenet.NATOptions{Protocol: "upnp", Router: r.LAN, Refresh: time.Second, Lifetime: 10 * time.Second},
		Logger:  log,
		Passive: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	e.Set(homenet.State{Ports: []homenet.Port{{Proto: "tcp", Port: 45401, Service: "agents"}}})
	e.SetShared(true)
	waitListed(t, r, 45401, true)
	e.SetShared(false)
	waitListed(t, r, 45401, false)
	t.Logf("tcp 45401 mapped while shared things were this node's, deleted when handed over")
}
