//go:build linux

package firewall

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/diglett/diglett/internal/testutil"
)

// testRefresh is the short refresh the tests use to see repairs.
const testRefresh = 200 * time.Millisecond

// hostNFT is a host firewall that drops what it does not accept.
const hostNFT = `table inet filter {
	chain input {
		type filter hook input priority filter; policy drop;
		iif "lo" accept
		ct state established,related accept
	}
}
`

func newLogger() (*slog.Logger, *testutil.Buffer) {
	buf := &testutil.Buffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

func TestNFTablesOpensPortsThroughHostFirewall(t *testing.T) {
	t.Parallel()
	n := newNSPair(t)
	n.inHost(t, "nft", "-f", writeTemp(t, hostNFT))
	tp, up := n.servers(t)
	tcp, udp := Port{"tcp", tp}, Port{"udp", up}
	n.mustDrop(t, tcp)
	n.mustDrop(t, udp)

	log, buf := newLogger()
	ctx := context.Background()
	f, err := newFirewall(ctx, Options{Refresh: testRefresh, HostChain: "inet filter input", Logger: log}, int(n.hostFD.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close(ctx) })
	n.mustDrop(t, tcp)

	if err := f.Set(ctx, []Port{tcp}); err != nil {
		t.Fatal(err)
	}
	n.mustReach(t, tcp)
	n.mustDrop(t, udp)
	if err := f.Set(ctx, []Port{udp, tcp, tcp}); err != nil {
		t.Fatal(err)
	}
	if got, want := f.Ports(), []Port{tcp, udp}; !slices.Equal(got, want) {
		t.Fatalf("Ports() = %v, want %v", got, want)
	}
	n.mustReach(t, udp)
	n.mustReach(t, tcp)
	table := n.inHost(t, "nft", "list", "table", "inet", "diglett")
	t.Logf("nft list table inet diglett:\n%s", table)
	host := n.inHost(t, "nft", "-a", "list", "chain", "inet", "filter", "input")
	t.Logf("nft -a list chain inet filter input:\n%s", host)
	for _, want := range []string{"tcp_ports", "udp_ports", "priority filter - 10", "meta mark set", "accept"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	if strings.Count(host, `comment "diglett"`) != 1 {
		t.Errorf("host chain: want one rule tagged diglett")
	}

	// An outside flush of the table is repaired within the refresh.
	from := len(buf.Lines())
	n.inHost(t, "nft", "delete", "table", "inet", "diglett")
	t.Log("deleted table inet diglett")
	logWith(t, buf, from, `msg="firewall rules restored"`, "table inet diglett")
	n.mustReach(t, tcp)
	n.mustReach(t, udp)

	// So is the deletion of the rule in the host chain.
	host = n.inHost(t, "nft", "-a", "list", "chain", "inet", "filter", "input")
	m := regexp.MustCompile(`comment "diglett" # handle (\d+)`).FindStringSubmatch(host)
	if m == nil {
		t.Fatalf("no diglett rule in the host chain:\n%s", host)
	}
	from = len(buf.Lines())
	n.inHost(t, "nft", "delete", "rule", "inet", "filter", "input", "handle", m[1])
	t.Logf("deleted the host chain's rule (handle %s)", m[1])
	logWith(t, buf, from, `msg="firewall rules restored"`, "rule in host chain inet filter input")
	n.mustReach(t, tcp)

	// So is an element removed from a set.
	from = len(buf.Lines())
	n.inHost(t, "nft", "delete", "element", "inet", "diglett", "udp_ports", "{", itoa(up), "}")
	t.Logf("deleted udp/%d from the set", up)
	logWith(t, buf, from, `msg="firewall rules restored"`, "udp/"+itoa(up))
	n.mustReach(t, udp)

	// The host firewall stopped (its whole ruleset flushed): the diglett
	// table comes back alone, and the host rule when the host firewall
	// is back.
	from = len(buf.Lines())
	n.inHost(t, "nft", "flush", "ruleset")
	t.Log("flushed the whole ruleset")
	logWith(t, buf, from, `msg="firewall rules restored"`, "table inet diglett")
	logWith(t, buf, from, `msg="firewall host chain not found; its rule returns with it"`, "inet filter input")
	n.mustReach(t, tcp)
	from = len(buf.Lines())
	n.inHost(t, "nft", "-f", writeTemp(t, hostNFT))
	t.Log("host firewall loaded again")
	logWith(t, buf, from, `msg="firewall rules restored"`, "rule in host chain inet filter input")
	n.mustReach(t, tcp)
	n.mustReach(t, udp)

	if err := f.Set(ctx, nil); err != nil {
		t.Fatal(err)
	}
	n.mustDrop(t, tcp)
	n.mustDrop(t, udp)

	if err := f.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	ruleset := n.inHost(t, "nft", "list", "ruleset")
	t.Logf("nft list ruleset after Close:\n%s", ruleset)
	if strings.Contains(ruleset, "diglett") {
		t.Fatal("diglett rules left after Close")
	}
	if err := f.Set(ctx, []Port{tcp}); err == nil {
		t.Fatal("Set after Close succeeded")
	}
}

// An accept in table inet diglett is not final: without the rule in the
// host chain, a host firewall with policy drop still drops the port.
func TestNFTablesAcceptIsNotFinal(t *testing.T) {
	t.Parallel()
	n := newNSPair(t)
	n.inHost(t, "nft", "-f", writeTemp(t, hostNFT))
	tp, _ := n.servers(t)
	tcp := Port{"tcp", tp}
	ctx := context.Background()
	f, err := newFirewall(ctx, Options{Refresh: testRefresh}, int(n.hostFD.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close(ctx)
	if err := f.Set(ctx, []Port{tcp}); err != nil {
		t.Fatal(err)
	}
	t.Logf("nft list ruleset:\n%s", n.inHost(t, "nft", "list", "ruleset"))
	n.mustDrop(t, tcp)
}

// Without a host chain only the table is installed: enough when the
// host's policy is accept.
func TestNFTablesWithoutHostChain(t *testing.T) {
	t.Parallel()
	n := newNSPair(t)
	tp, _ := n.servers(t)
	tcp := Port{"tcp", tp}
	ctx := context.Background()
	f, err := newFirewall(ctx, Options{Refresh: testRefresh}, int(n.hostFD.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Set(ctx, []Port{tcp}); err != nil {
		t.Fatal(err)
	}
	n.mustReach(t, tcp)
	ruleset := n.inHost(t, "nft", "list", "ruleset")
	t.Logf("nft list ruleset:\n%s", ruleset)
	if !strings.Contains(ruleset, "table inet diglett") || strings.Count(ruleset, "table ") != 1 {
		t.Fatal("want table inet diglett alone")
	}
	if err := f.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if ruleset := n.inHost(t, "nft", "list", "ruleset"); strings.TrimSpace(ruleset) != "" {
		t.Fatalf("ruleset after Close:\n%s", ruleset)
	}
	t.Log("nothing left after Close")
}

func TestNFTablesHostChainMissing(t *testing.T) {
	t.Parallel()
	n := newNSPair(t)
	_, err := newFirewall(context.Background(), Options{HostChain: "inet filter input"}, int(n.hostFD.Fd()))
	const want = "firewall: nftables: host chain inet filter input: not found"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %q", err, want)
	}
	if ruleset := n.inHost(t, "nft", "list", "ruleset"); strings.TrimSpace(ruleset) != "" {
		t.Fatalf("ruleset after the failure:\n%s", ruleset)
	}
	t.Logf("error: %v", err)
}

func TestIPTablesOpensPorts(t *testing.T) {
	t.Parallel()
	n := newNSPair(t)
	for _, args := range [][]string{
		{"-A", "INPUT", "-i", "lo", "-j", "ACCEPT"},
		{"-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
		{"-P", "INPUT", "DROP"},
	} {
		n.inHost(t, "iptables", args...)
		n.inHost(t, "ip6tables", args...)
	}
	tp, up := n.servers(t)
	tcp, udp := Port{"tcp", tp}, Port{"udp", up}
	n.mustDrop(t, tcp)
	n.mustDrop(t, udp)

	log, buf := newLogger()
	ctx := context.Background()
	f, err := newFirewall(ctx, Options{Backend: "iptables", Refresh: testRefresh, Logger: log}, int(n.hostFD.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close(ctx) })
	n.mustDrop(t, tcp)
	if err := f.Set(ctx, []Port{tcp, udp}); err != nil {
		t.Fatal(err)
	}
	n.mustReach(t, tcp)
	n.mustReach(t, udp)
	for _, prog := range []string{"iptables", "ip6tables"} {
		rules := n.inHost(t, prog, "-S")
		t.Logf("%s -S:\n%s", prog, rules)
		for _, want := range []string{
			"-A INPUT -j DIGLETT",
			"-A DIGLETT -p tcp -m tcp --dport " + itoa(tp) + " -j ACCEPT",
			"-A DIGLETT -p udp -m udp --dport " + itoa(up) + " -j ACCEPT",
		} {
			if !strings.Contains(rules, want) {
				t.Errorf("%s: no %q", prog, want)
			}
		}
	}

	from := len(buf.Lines())
	n.inHost(t, "iptables", "-F", "DIGLETT")
	t.Log("flushed chain DIGLETT")
	logWith(t, buf, from, `msg="firewall rules restored"`, "tcp/"+itoa(tp)+" (ipv4)")
	n.mustReach(t, tcp)
	n.mustReach(t, udp)
	from = len(buf.Lines())
	n.inHost(t, "iptables", "-D", "INPUT", "-j", "DIGLETT")
	t.Log("deleted the jump to DIGLETT")
	logWith(t, buf, from, `msg="firewall rules restored"`, "jump from INPUT (ipv4)")
	n.mustReach(t, tcp)

	if err := f.Set(ctx, []Port{udp}); err != nil {
		t.Fatal(err)
	}
	n.mustDrop(t, tcp)
	n.mustReach(t, udp)
	if err := f.Set(ctx, nil); err != nil {
		t.Fatal(err)
	}
	n.mustDrop(t, udp)

	if err := f.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for _, prog := range []string{"iptables", "ip6tables"} {
		rules := n.inHost(t, prog, "-S")
		t.Logf("%s -S after Close:\n%s", prog, rules)
		if strings.Contains(rules, "DIGLETT") {
			t.Errorf("%s: DIGLETT left after Close", prog)
		}
	}
}

func TestNFTablesPermissionDenied(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		testutil.Unavailable(t, "firewall: needs root to make a network namespace")
	}
	errc := make(chan error, 1)
	go func() {
		// A thread of its own, in a new network namespace, without
		// CAP_NET_ADMIN; it ends with the goroutine.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- err
			return
		}
		data[0].Effective &^= 1 << unix.CAP_NET_ADMIN
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- err
			return
		}
		f, err := New(context.Background(), Options{})
		if err == nil {
			f.Close(context.Background())
			err = errors.New("New succeeded")
		}
		errc <- err
	}()
	err := <-errc
	const want = "firewall: nftables: permission denied (needs root or CAP_NET_ADMIN)"
	if err.Error() != want || !errors.Is(err, ErrPermission) {
		t.Fatalf("got %v, want %q", err, want)
	}
	t.Logf("without CAP_NET_ADMIN: %v", err)
}

func writeTemp(t *testing.T, s string) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "*.nft")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}
