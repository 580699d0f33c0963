// Package routertest runs a real home-router daemon (miniupnpd, which
// scripts/test-deps.sh installs; it speaks UPnP-IGD, NAT-PMP and PCP) for a
// test. It makes a network namespace for the router and one playing the
// internet: the router's WAN link goes to the internet namespace, its LAN
// link to the root namespace, where the test runs as the LAN client.
// Names and subnets are picked per test; everything is removed when the
// test ends. It needs root and the ip, nft and miniupnpd programs: under
// CI a missing piece fails the test, elsewhere it skips it.
package routertest

import (
	"context"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

// startTimeout bounds how long miniupnpd may take to answer.
const startTimeout = 10 * time.Second

// Options shape the router.
type Options struct {
	// WAN is the router's external address; the zero value picks one in
	// 11.0.0.0/8 (public, so the daemon accepts it, and reachable only
	// inside the test's namespaces), or in 100.64.0.0/10 with CGNAT.
	// Tests that run in parallel must not share a WAN /24: the root
	// namespace routes it to the router. Leave it zero unless the test
	// needs one address.
	WAN netip.Addr
	// CGNAT picks the WAN address in the carrier-grade NAT range
	// 100.64.0.0/10: a router behind its provider's NAT.
	CGNAT bool
	// DisableUPnP turns the daemon's UPnP-IGD service off, leaving
	// NAT-PMP and PCP; Upnpc and Description are then unusable.
	DisableUPnP bool
}

// Router is a running router daemon.
type Router struct {
	// LAN is the router's LAN address; Client is the test's address on
	// the same link (in the root namespace).
	LAN, Client netip.Addr
	// WAN is the router's external address.
	WAN netip.Addr
	// Interface is the root namespace's end of the LAN link.
	Interface string
	// Description is the URL of the router's UPnP device description.
	Description string
	// Log is the daemon's output.
	Log *testutil.Buffer

	upnpc, natpmpc string
	ipBin, nft     string
	daemon         string
	rns, wns       string // the router's and the internet's namespaces
	conf           func(port string) string
	dir            string
	cmd            *exec.Cmd
	exited         chan struct{}
	disableUPnP    bool
	wanIf          string // the router's WAN interface
	inet           netip.Addr
}

// Start starts a router for t.
func Start(t testing.TB, o Options) *Router {
	t.Helper()
	if os.Geteuid() != 0 {
		testutil.Unavailable(t, "routertest: needs root for network namespaces")
	}
	ipBin := testutil.Program(t, "ip")
	nft := testutil.Program(t, "nft")
	daemon := testutil.Program(t, "miniupnpd")
	r := &Router{
		upnpc:   testutil.Program(t, "upnpc"),
		natpmpc: testutil.Program(t, "natpmpc"),
		Log:     &testutil.Buffer{},
	}
	x, y := pick(t, ipBin)
	id := fmt.Sprintf("%x", rnd(1<<24))
	rns, wns := "dgrR"+id, "dgrW"+id
	lan, lanPeer, wan, wanPeer := "dgl"+id, "dgl"+id+"r", "dgw"+id, "dgw"+id+"i"
	r.Interface = lan
	r.LAN = netip.AddrFrom4([4]byte{10, byte(x), byte(y), 1})
	r.Client = netip.AddrFrom4([4]byte{10, byte(x), byte(y), 2})
	r.WAN = o.WAN
	switch {
	case r.WAN.IsValid():
	case o.CGNAT:
		// 100.64.0.0/10: the second byte in 64..127.
		r.WAN = netip.AddrFrom4([4]byte{100, byte(x + 44), byte(y), 1})
	default:
		r.WAN = netip.AddrFrom4([4]byte{11, byte(x), byte(y), 1})
	}
	wb := r.WAN.As4()
	inet := netip.AddrFrom4([4]byte{wb[0], wb[1], wb[2], wb[3] + 1})

	run := func(args ...string) {
		t.Helper()
		out, err := exec.Command(ipBin, args...).CombinedOutput()
		if err != nil {
			testutil.Unavailable(t, "routertest: ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", rns)
	t.Cleanup(func() { exec.Command(ipBin, "netns", "del", rns).Run() })
	run("netns", "add", wns)
	t.Cleanup(func() { exec.Command(ipBin, "netns", "del", wns).Run() })
	run("link", "add", lan, "type", "veth", "peer", "name", lanPeer)
	t.Cleanup(func() { exec.Command(ipBin, "link", "del", lan).Run() })
	run("link", "set", lanPeer, "netns", rns)
	run("link", "add", wan, "type", "veth", "peer", "name", wanPeer)
	run("link", "set", wan, "netns", rns)
	run("link", "set", wanPeer, "netns", wns)
	run("addr", "add", r.Client.String()+"/24", "dev", lan)
	run("link", "set", lan, "up")
	run("-n", rns, "link", "set", "lo", "up")
	run("-n", rns, "addr", "add", r.LAN.String()+"/24", "dev", lanPeer)
	run("-n", rns, "link", "set", lanPeer, "up")
	run("-n", rns, "addr", "add", r.WAN.String()+"/24", "dev", wan)
	run("-n", rns, "link", "set", wan, "up")
	run("-n", wns, "addr", "add", inet.String()+"/24", "dev", wanPeer)
	run("-n", wns, "link", "set", wanPeer, "up")
	run("-n", rns, "route", "add", "default", "via", inet.String())
	// A router forwards (a new namespace does not by default).
	if out, err := exec.Command(ipBin, "netns", "exec", rns, "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		testutil.Unavailable(t, "routertest: sysctl: %v: %s", err, out)
	}

	dir := t.TempDir()
	// The chains the daemon fills, as its package's set-up script makes
	// them for the nftables build (default table and chain names).
	rules := filepath.Join(dir, "router.nft")
	write(t, rules, `table inet filter {
	chain forward {
		type filter hook forward priority 0; policy drop;
		ct state established,related accept
		jump miniupnpd
	}
	chain miniupnpd {
	}
	chain prerouting {
		type nat hook prerouting priority -100; policy accept;
		jump prerouting_miniupnpd
	}
	chain postrouting {
		type nat hook postrouting priority 100; policy accept;
		jump postrouting_miniupnpd
	}
	chain prerouting_miniupnpd {
	}
	chain postrouting_miniupnpd {
	}
}
`)
	if out, err := exec.Command(ipBin, "netns", "exec", rns, nft, "-f", rules).CombinedOutput(); err != nil {
		testutil.Unavailable(t, "routertest: nft: %v: %s", err, out)
	}
	r.ipBin, r.nft, r.daemon, r.rns, r.wns, r.dir, r.disableUPnP = ipBin, nft, daemon, rns, wns, dir, o.DisableUPnP
	r.wanIf, r.inet = wan, inet
	uid := uuid()
	r.conf = func(port string) string {
		conf := filepath.Join(dir, "router.conf")
		write(t, conf, fmt.Sprintf(`ext_ifname=%s
listening_ip=%s
port=%s
enable_natpmp=yes
enable_upnp=%s
secure_mode=yes
system_uptime=yes
min_lifetime=1
lease_file=%s
uuid=%s
allow 1024-65535 %s/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
`, wan, lanPeer, port, yesNo(!o.DisableUPnP), filepath.Join(dir, "leases"), uid, r.LAN))
		return conf
	}
	// The internet side's replies to this machine go through the router.
	run("route", "add", netip.PrefixFrom(r.WAN, 24).Masked().String(), "via", r.LAN.String(), "dev", lan)
	if err := r.start(t, "0"); err != nil {
		testutil.Unavailable(t, "routertest: miniupnpd: %v", err)
	}
	return r
}

// start runs the daemon, its HTTP server on port ("0": any), and waits
// until it answers.
func (r *Router) start(t testing.TB, port string) error {
	cmd := exec.Command(r.ipBin, "netns", "exec", r.rns, r.daemon, "-d", "-f", r.conf(port),
		"-P", filepath.Join(r.dir, "router.pid")) // its own pid file: routers of parallel tests
	from := len(r.Log.String()) // a restart's log follows the first run's
	cmd.Stdout, cmd.Stderr = r.Log, r.Log
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	r.cmd, r.exited = cmd, exited
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	return testutil.Poll(startTimeout, func() error {
		select {
		case <-exited:
			return fmt.Errorf("exited: %s", r.Log)
		default:
		}
		log := r.Log.String()[from:]
		if !strings.Contains(log, "Listening for NAT-PMP") {
			return fmt.Errorf("not listening yet: %s", log)
		}
		if r.disableUPnP {
			return nil
		}
		_, rest, ok := strings.Cut(log, "HTTP listening on port ")
		port, _, _ := strings.Cut(rest, "\n")
		if !ok || port == "" {
			return fmt.Errorf("no HTTP port in its log: %s", log)
		}
		r.Description = "http://" + net.JoinHostPort(r.LAN.String(), strings.TrimSpace(port)) + "/rootDesc.xml"
		return nil
	})
}

// Restart plays a router that reboots: the daemon is killed, its rules
// and its lease file are deleted, and it starts again on the same ports
// with no mapping (until a client maps again, which may be at once).
func (r *Router) Restart(t testing.TB) {
	t.Helper()
	r.cmd.Process.Kill()
	<-r.exited
	for _, chain := range []string{"miniupnpd", "prerouting_miniupnpd", "postrouting_miniupnpd"} {
		if out, err := exec.Command(r.ipBin, "netns", "exec", r.rns, r.nft, "flush", "chain", "inet", "filter", chain).CombinedOutput(); err != nil {
			t.Fatalf("routertest: flush %s: %v: %s", chain, err, out)
		}
	}
	os.Remove(filepath.Join(r.dir, "leases"))
	port := "0"
	if u, err := url.Parse(r.Description); err == nil && u.Port() != "" {
		port = u.Port()
	}
	if err := r.start(t, port); err != nil {
		t.Fatalf("routertest: restart: %v", err)
	}
}

// SetWAN gives the router another external address in the same /24, as
// a provider's new lease would; the daemon reads it from the interface.
func (r *Router) SetWAN(t testing.TB, a netip.Addr) {
	t.Helper()
	for _, args := range [][]string{
		// The old one first: deleting a primary address deletes the
		// secondaries of its subnet too.
		{"-n", r.rns, "addr", "del", r.WAN.String() + "/24", "dev", r.wanIf},
		{"-n", r.rns, "addr", "add", a.String() + "/24", "dev", r.wanIf},
		{"-n", r.rns, "route", "replace", "default", "via", r.inet.String()},
	} {
		if out, err := exec.Command(r.ipBin, args...).CombinedOutput(); err != nil {
			t.Fatalf("routertest: ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	r.WAN = a
}

// Listed reports whether the router's own list (read with the UPnP
// client program) maps proto port to the same port of Client.
func (r *Router) Listed(t testing.TB, proto string, port uint16) bool {
	t.Helper()
	want := strings.Join(strings.Fields(fmt.Sprintf("%s %5d->%s:%d ", strings.ToUpper(proto), port, r.Client, port)), " ") + " "
	out := r.Upnpc(t, "-l")
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(strings.Join(strings.Fields(line), " ")+" ", want) {
			return true
		}
	}
	if !strings.Contains(out, "ExternalIPAddress") {
		t.Fatalf("routertest: upnpc -l did not reach the router: %s", out)
	}
	return false
}

// Internet runs a program in the namespace that plays the internet (it
// reaches the router's WAN address) and returns its output, bounded in
// time.
func (r *Router) Internet(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, r.ipBin, append([]string{"netns", "exec", r.wns}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("%s\n(%v)", out, err)
	}
	return string(out)
}

// Upnpc runs the UPnP client program against the router's description
// URL with args, e.g. "-l", and returns its output.
func (r *Router) Upnpc(t testing.TB, args ...string) string {
	t.Helper()
	return r.runClient(t, r.upnpc, append([]string{"-u", r.Description}, args...)...)
}

// Natpmpc runs the NAT-PMP client program against the router with args,
// e.g. "-a 5000 5000 udp 60", and returns its output.
func (r *Router) Natpmpc(t testing.TB, args ...string) string {
	t.Helper()
	return r.runClient(t, r.natpmpc, append([]string{"-g", r.LAN.String()}, args...)...)
}

func (r *Router) runClient(t testing.TB, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil && ctx.Err() != nil {
		t.Fatalf("%s %s: %v: %s", filepath.Base(bin), strings.Join(args, " "), ctx.Err(), out)
	}
	// Both programs report failures in their output; the caller checks it.
	return string(out)
}

func write(t testing.TB, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// taken holds the (x, y) of this process's live routers: their LAN is
// 10.x.y.0/24 and their WAN x.y /24 in 11.0.0.0/8 or 100.64.0.0/10, all
// routed in the root namespace, so no two may share them.
var (
	takenMu sync.Mutex
	taken   = map[[2]int]bool{}
)

// pick returns an (x, y) no live router of this process has, nor (as far
// as the root namespace's routes show) one of another test binary's.
func pick(t testing.TB, ipBin string) (int, int) {
	takenMu.Lock()
	defer takenMu.Unlock()
	routes, _ := exec.Command(ipBin, "-4", "route", "show").Output()
	for range 1000 {
		x, y := rnd(64)+20, rnd(250)+1 // x+44 is in 100.64.0.0/10's 64..127
		xy := [2]int{x, y}
		if taken[xy] {
			continue
		}
		inUse := false
		for _, p := range []string{fmt.Sprintf("10.%d.%d.0/24", x, y), fmt.Sprintf("11.%d.%d.0/24", x, y), fmt.Sprintf("100.%d.%d.0/24", x+44, y)} {
			if strings.Contains(string(routes), p+" ") {
				inUse = true
			}
		}
		if inUse {
			continue
		}
		taken[xy] = true
		t.Cleanup(func() {
			takenMu.Lock()
			delete(taken, xy)
			takenMu.Unlock()
		})
		return x, y
	}
	t.Fatal("routertest: no free address block")
	return 0, 0
}

// rnd returns a random number in [0, n).
func rnd(n int) int { return mrand.IntN(n) }

func uuid() string {
	b := make([]byte, 16)
	rand.Read(b)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
