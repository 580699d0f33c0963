//go:build linux

package firewall

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

// dialTimeout is how long a dial waits before the port counts as dropped.
const dialTimeout = 400 * time.Millisecond

// reachTimeout bounds the wait for a port to become reachable.
const reachTimeout = 15 * time.Second

// nsPair is two network namespaces joined by a veth pair: host, where the
// firewall under test and the servers run, and peer, which dials them.
type nsPair struct {
	host, peer     string   // namespace names
	hostFD, peerFD *os.File // open namespaces
	hostAddr       string   // host's address on the link
	ipBin          string
}

// newNSPair makes the namespaces for t; they are removed when t ends.
func newNSPair(t *testing.T) *nsPair {
	t.Helper()
	if os.Geteuid() != 0 {
		testutil.Unavailable(t, "firewall: needs root for network namespaces")
	}
	n := &nsPair{ipBin: testutil.Program(t, "ip")}
	x, y := mrand.IntN(200)+20, mrand.IntN(250)+1
	id := fmt.Sprintf("%06x", mrand.IntN(1<<24))
	n.host, n.peer = "dgfwH"+id, "dgfwP"+id
	veth, vethPeer := "dgfw"+id+"h", "dgfw"+id+"p"
	n.hostAddr = fmt.Sprintf("10.%d.%d.1", x, y)
	peerAddr := fmt.Sprintf("10.%d.%d.2", x, y)
	n.ip(t, "netns", "add", n.host)
	t.Cleanup(func() { exec.Command(n.ipBin, "netns", "del", n.host).Run() })
	n.ip(t, "netns", "add", n.peer)
	t.Cleanup(func() { exec.Command(n.ipBin, "netns", "del", n.peer).Run() })
	n.ip(t, "-n", n.host, "link", "add", veth, "type", "veth", "peer", "name", vethPeer, "netns", n.peer)
	n.ip(t, "-n", n.host, "link", "set", "lo", "up")
	n.ip(t, "-n", n.host, "addr", "add", n.hostAddr+"/24", "dev", veth)
	n.ip(t, "-n", n.host, "link", "set", veth, "up")
	n.ip(t, "-n", n.peer, "link", "set", "lo", "up")
	n.ip(t, "-n", n.peer, "addr", "add", peerAddr+"/24", "dev", vethPeer)
	n.ip(t, "-n", n.peer, "link", "set", vethPeer, "up")
	var err error
	if n.hostFD, err = os.Open("/run/netns/" + n.host); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.hostFD.Close() })
	if n.peerFD, err = os.Open("/run/netns/" + n.peer); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.peerFD.Close() })
	return n
}

func (n *nsPair) ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(n.ipBin, args...).CombinedOutput(); err != nil {
		testutil.Unavailable(t, "firewall: ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// inHost runs the program name with args in the host namespace and
// returns its output; it fails t when the program does.
func (n *nsPair) inHost(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := n.tryInHost(t, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func (n *nsPair) tryInHost(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	bin := testutil.Program(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, n.ipBin, append([]string{"netns", "exec", n.host, bin}, args...)...).CombinedOutput()
	return string(out), err
}

// servers starts, in the host namespace, a TCP listener that accepts and
// closes and a UDP echo; it returns their ports.
func (n *nsPair) servers(t *testing.T) (tcpPort, udpPort uint16) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	err := inNetNS(int(n.hostFD.Fd()), func() error {
		var err error
		if ln, err = net.Listen("tcp", n.hostAddr+":0"); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", n.hostAddr+":0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 2)
	t.Cleanup(func() {
		ln.Close()
		pc.Close()
		<-done
		<-done
	})
	go func() {
		defer func() { done <- struct{}{} }()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 1500)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:k], from)
		}
	}()
	return uint16(ln.Addr().(*net.TCPAddr).Port), uint16(pc.LocalAddr().(*net.UDPAddr).Port)
}

// reach tries p once from the peer namespace: nil when it answered, an
// error saying why not otherwise (a timeout when the packets were
// dropped).
func (n *nsPair) reach(p Port) error {
	addr := net.JoinHostPort(n.hostAddr, fmt.Sprint(p.Port))
	return inNetNS(int(n.peerFD.Fd()), func() error {
		c, err := net.DialTimeout(p.Proto, addr, dialTimeout)
		if err != nil {
			return err
		}
		defer c.Close()
		if p.Proto == "tcp" {
			return nil
		}
		c.SetDeadline(time.Now().Add(dialTimeout))
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		buf := make([]byte, 16)
		k, err := c.Read(buf)
		if err != nil {
			return err
		}
		if string(buf[:k]) != "ping" {
			return fmt.Errorf("echo: got %q", buf[:k])
		}
		return nil
	})
}

// mustReach waits until p answers from the peer namespace.
func (n *nsPair) mustReach(t *testing.T, p Port) {
	t.Helper()
	if err := testutil.Poll(reachTimeout, func() error { return n.reach(p) }); err != nil {
		t.Fatalf("%s from the peer namespace: %v", p, err)
	}
	t.Logf("%s reachable from the peer namespace", p)
}

// mustDrop checks that p's packets are dropped: no answer, no refusal.
func (n *nsPair) mustDrop(t *testing.T, p Port) {
	t.Helper()
	err := n.reach(p)
	var ne net.Error
	if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("%s from the peer namespace: want dropped (a timeout), got %v", p, err)
	}
	t.Logf("%s dropped from the peer namespace (%v)", p, err)
}

// logWith waits until buf holds a line after its first from lines with
// all of parts.
func logWith(t *testing.T, buf *testutil.Buffer, from int, parts ...string) string {
	t.Helper()
	var found string
	err := testutil.Poll(reachTimeout, func() error {
		for _, l := range buf.Lines()[from:] {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(l, p)
			}
			if ok {
				found = l
				return nil
			}
		}
		return fmt.Errorf("no log line with %q in:\n%s", parts, buf)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("log: %s", found)
	return found
}
