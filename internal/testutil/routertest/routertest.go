// Package routertest runs a real home-router daemon (miniupnpd, which
// scripts/test-deps.sh installs; it speaks UPnP-IGD and NAT-PMP) for a
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
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	// inside the test's namespaces). An address in 100.64.0.0/10 plays a
	// router behind carrier-grade NAT.
	WAN netip.Addr
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
	x, y := rnd(200)+20, rnd(250)+1
	id := fmt.Sprintf("%x", rnd(1<<24))
	rns, wns := "dgrR"+id, "dgrW"+id
	lan, lanPeer, wan, wanPeer := "dgl"+id, "dgl"+id+"r", "dgw"+id, "dgw"+id+"i"
	r.Interface = lan
	r.LAN = netip.AddrFrom4([4]byte{10, byte(x), byte(y), 1})
	r.Client = netip.AddrFrom4([4]byte{10, byte(x), byte(y), 2})
	r.WAN = o.WAN
	if !r.WAN.IsValid() {
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

	dir := t.TempDir()
	// The chains the daemon fills, as its package's set-up script makes
	// them for the nftables build (default table and chain names).
	rules := filepath.Join(dir, "router.nft")
	write(t, rules, `table inet filter {
	chain forward {
		type filter hook forward priority 0; policy drop;
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
	conf := filepath.Join(dir, "router.conf")
	write(t, conf, fmt.Sprintf(`ext_ifname=%s
listening_ip=%s
port=0
enable_natpmp=yes
enable_upnp=yes
secure_mode=yes
system_uptime=yes
min_lifetime=1
lease_file=%s
uuid=%s
allow 1024-65535 %s/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
`, wan, lanPeer, filepath.Join(dir, "leases"), uuid(), r.LAN))

	cmd := exec.Command(ipBin, "netns", "exec", rns, daemon, "-d", "-f", conf,
		"-P", filepath.Join(dir, "router.pid")) // its own pid file: routers of parallel tests
	cmd.Stdout, cmd.Stderr = r.Log, r.Log
	if err := cmd.Start(); err != nil {
		testutil.Unavailable(t, "routertest: miniupnpd: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	err := testutil.Poll(startTimeout, func() error {
		select {
		case <-exited:
			return fmt.Errorf("exited: %s", r.Log)
		default:
		}
		log := r.Log.String()
		if !strings.Contains(log, "Listening for NAT-PMP") {
			return fmt.Errorf("not listening yet: %s", log)
		}
		_, rest, ok := strings.Cut(log, "HTTP listening on port ")
		port, _, _ := strings.Cut(rest, "\n")
		if !ok || port == "" {
			return fmt.Errorf("no HTTP port in its log: %s", log)
		}
		r.Description = "http://" + net.JoinHostPort(r.LAN.String(), strings.TrimSpace(port)) + "/rootDesc.xml"
		return nil
	})
	if err != nil {
		testutil.Unavailable(t, "routertest: miniupnpd: %v", err)
	}
	return r
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

// rnd returns a random number in [0, n).
func rnd(n int) int { return mrand.IntN(n) }

func uuid() string {
	b := make([]byte, 16)
	rand.Read(b)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
