package e2e

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/testutil/dnstest"
)

// Helpers of the UDP tunnel tests (udp_test.go): a gateway and agents run
// through their command lines in-process, a UDP echo backend, visitors
// that send numbered datagrams and account for every reply, and dig
// against a real name server behind a tunnel.

// udpTransports are the agent transports every UDP test runs over.
var udpTransports = []string{"tcp", "quic", "ws"}

// udpGateway is the server command serving UDP tunnels on 127.0.0.1, with
// debug logs and a management listener (its /metrics).
type udpGateway struct {
	srv       *serverCommand
	adminAddr string
	dir       string
}

// startUDPGateway runs the server command with extra flags.
func startUDPGateway(t *testing.T, extra ...string) *udpGateway {
	t.Helper()
	dir := t.TempDir()
	lo, hi := randomPortWindow()
	args := append([]string{"-l", "127.0.0.1:0", "--data-dir", filepath.Join(dir, "data"),
		"--ports", fmt.Sprintf("%d-%d", lo, hi), "--public-bind", "127.0.0.1",
		"--log-level", "debug", "--admin-addr", "127.0.0.1:0"}, extra...)
	srv := startServerCommand(t, args...)
	return &udpGateway{srv: srv, adminAddr: logged(t, srv, adminLine), dir: dir}
}

// startUDPAgent runs the agent command publishing name over via (tcp,
// quic or ws) as a UDP tunnel to backend, with extra flags, and returns
// it with the tunnel's public UDP address.
func (g *udpGateway) startUDPAgent(t *testing.T, via, name, backend string, extra ...string) (*agentCommand, string) {
	t.Helper()
	args := append([]string{"-g", g.srv.Addr, "--fingerprint", g.srv.Fingerprint,
		"--known-gateways", filepath.Join(t.TempDir(), "known_gateways"),
		"--transport", via, "--ws-addr", g.srv.Addr, "--connections", "1",
		"--log-level", "debug", "-n", name, "--udp", backend}, extra...)
	a := startAgentCommand(t, args...)
	public := g.publicUDP(t, a, name)
	waitFor(t, "agent log", &a.stderr, "connected over "+via)
	// The agent prints the same address.
	waitFor(t, "agent output", &a.stdout, fmt.Sprintf("%s: udp://%s -> %s\n", name, public, backend))
	return a, public
}

// publicUDP waits for the gateway's line `register domain 'NAME' ->
// 'PORT'` and returns 127.0.0.1:PORT.
func (g *udpGateway) publicUDP(t *testing.T, a *agentCommand, name string) string {
	t.Helper()
	re := regexp.MustCompile(`register domain '` + regexp.QuoteMeta(name) + `' -> '(\d+)'`)
	var port string
	err := testutil.Poll(eventually, func() error {
		m := re.FindStringSubmatch(g.srv.stderr.String())
		if m == nil {
			return errors.New("not registered")
		}
		port = m[1]
		return nil
	})
	if err != nil {
		t.Fatalf("gateway never registered %s:\n%s\nagent stdout:\n%s\nagent stderr:\n%s", name, &g.srv.stderr, &a.stdout, &a.stderr)
	}
	return net.JoinHostPort("127.0.0.1", port)
}

// scrape reads the gateway's metrics.
func (g *udpGateway) scrape(t *testing.T) string {
	t.Helper()
	client := &http.Client{Timeout: eventually}
	resp, err := client.Get("http://" + g.adminAddr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %d %v\n%s", resp.StatusCode, err, b)
	}
	return string(b)
}

// udpEcho is a UDP backend on 127.0.0.1 that sends every datagram back to
// where it came from, and remembers every source address it saw.
type udpEcho struct {
	conn *net.UDPConn

	mu      sync.Mutex
	sources []netip.AddrPort // in the order first seen
}

// startUDPEcho serves until the test ends.
func startUDPEcho(t *testing.T) *udpEcho {
	t.Helper()
	return startUDPBackend(t, func(p []byte) []byte { return p })
}

// startUDPBackend is startUDPEcho with reply making the answer to each
// datagram (nil: none).
func startUDPBackend(t *testing.T, reply func(p []byte) []byte) *udpEcho {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	// Bursts of many visitors at once: room for them while the echo
	// goroutine is off the processor.
	c.SetReadBuffer(4 << 20)
	e := &udpEcho{conn: c}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			e.saw(from)
			if r := reply(buf[:n]); r != nil {
				c.WriteToUDPAddrPort(r, from)
			}
		}
	}()
	t.Cleanup(func() {
		c.Close()
		<-done
	})
	return e
}

// Addr is where the backend listens.
func (e *udpEcho) Addr() string { return e.conn.LocalAddr().String() }

func (e *udpEcho) saw(from netip.AddrPort) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range e.sources {
		if s == from {
			return
		}
	}
	e.sources = append(e.sources, from)
}

// Sources are the addresses datagrams came from, in the order first seen.
func (e *udpEcho) Sources() []netip.AddrPort {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]netip.AddrPort(nil), e.sources...)
}

// udpVisitor is a visitor's UDP socket connected to a tunnel's public
// address, from the loopback address local (nil: 127.0.0.1), closed when
// the test ends.
func udpVisitor(t *testing.T, local net.IP, public string) *net.UDPConn {
	t.Helper()
	raddr, err := net.ResolveUDPAddr("udp", public)
	if err != nil {
		t.Fatal(err)
	}
	var laddr *net.UDPAddr
	if local != nil {
		laddr = &net.UDPAddr{IP: local}
	}
	c, err := net.DialUDP("udp", laddr, raddr)
	if err != nil {
		t.Fatalf("visitor socket from %v: %v", local, err)
	}
	c.SetReadBuffer(1 << 20)
	t.Cleanup(func() { c.Close() })
	return c
}

// exchange sends p from c every retry until the same bytes come back, for
// at most within; it returns how many datagrams it sent.
func exchange(c *net.UDPConn, p []byte, retry, within time.Duration) (int, error) {
	deadline := time.Now().Add(within)
	buf := make([]byte, 64<<10)
	sent := 0
	for time.Now().Before(deadline) {
		if _, err := c.Write(p); err != nil {
			return sent, fmt.Errorf("send: %w", err)
		}
		sent++
		c.SetReadDeadline(earliest(deadline, time.Now().Add(retry)))
		for {
			n, err := c.Read(buf)
			if err != nil {
				// A timeout, or a refused port (ICMP): send again.
				break
			}
			if string(buf[:n]) == string(p) {
				return sent, nil
			}
		}
	}
	return sent, fmt.Errorf("no echo of %d bytes within %v (%d sent)", len(p), within, sent)
}

// earliest is the earliest of ts.
func earliest(ts ...time.Time) time.Time {
	e := ts[0]
	for _, t := range ts[1:] {
		if t.Before(e) {
			e = t
		}
	}
	return e
}

// expectSilence fails t if c receives anything within d.
func expectSilence(t *testing.T, c *net.UDPConn, d time.Duration, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 64<<10)
	n, err := c.Read(buf)
	if err == nil {
		t.Fatalf("%s got a reply of %d bytes", what, n)
	}
	if !isTimeout(err) {
		t.Fatalf("%s: read: %v", what, err)
	}
}

// Numbered datagrams of the load test: visitor id (4 bytes), sequence (4
// bytes), then filler that depends on both; the size too depends on both,
// so that a reply's bytes and length say whose datagram it is and that it
// was neither merged nor split.
const (
	seqHeader  = 8
	seqMaxSize = 1200
)

// seqSize is the size of datagram seq of visitor id, seqHeader to
// seqMaxSize bytes.
func seqSize(id, seq uint32) int {
	return seqHeader + int((id*7919+seq*104729)%(seqMaxSize-seqHeader+1))
}

// seqDatagram builds datagram seq of visitor id.
func seqDatagram(id, seq uint32) []byte {
	p := make([]byte, seqSize(id, seq))
	binary.BigEndian.PutUint32(p, id)
	binary.BigEndian.PutUint32(p[4:], seq)
	for i := seqHeader; i < len(p); i++ {
		p[i] = byte(id*31 + seq*7 + uint32(i))
	}
	return p
}

// udpStats are what one visitor (or all, summed) saw of its sequence.
type udpStats struct {
	sent, received int // distinct sequence numbers sent and echoed back
	duplicates     int // replies to a sequence number already echoed
	outOfOrder     int // replies with a lower sequence than one before
	wrongVisitor   int // replies carrying another visitor's id
	malformed      int // replies whose length or bytes differ from the request's
	setupSends     int // datagrams sent before the flow answered
}

func (s *udpStats) add(o udpStats) {
	s.sent += o.sent
	s.received += o.received
	s.duplicates += o.duplicates
	s.outOfOrder += o.outOfOrder
	s.wrongVisitor += o.wrongVisitor
	s.malformed += o.malformed
	s.setupSends += o.setupSends
}

func (s udpStats) lost() int { return s.sent - s.received }

// udpLoad is the shape of a load: visitors at once, each sending count
// numbered datagrams, one every pace at most, with at most window of them
// in flight (sent, and neither echoed nor given up after lostAfter).
//
// The window keeps the datagrams in flight within the queues of the path
// (the sockets' buffers, QUIC's queue of received datagrams, 128): a
// burst beyond them, from a process the race detector and a shared
// machine starve, would measure the machine rather than the tunnel.
type udpLoad struct {
	visitors  int
	count     int
	pace      time.Duration
	window    int
	lostAfter time.Duration
}

// quietAfterSend bounds how long a visitor waits for the last replies once
// it has sent its sequence.
const quietAfterSend = 2 * time.Second

// run has every visitor first get an echo of a datagram (the flow is set
// up), then send its sequence, and read replies until it has them all or
// none came for quietAfterSend after the last send. It returns the sum of
// the visitors' stats.
func (l udpLoad) run(t *testing.T, public string) udpStats {
	t.Helper()
	var (
		mu    sync.Mutex
		total udpStats
		wg    sync.WaitGroup
		errs  = make(chan error, l.visitors)
	)
	for v := range l.visitors {
		c := udpVisitor(t, nil, public)
		id := uint32(v + 1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := l.visit(c, id)
			if err != nil {
				errs <- fmt.Errorf("visitor %d: %w", id, err)
			}
			mu.Lock()
			total.add(st)
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	return total
}

// window is the in-flight datagrams of one visitor.
type window struct {
	slots chan struct{}
	done  []atomic.Bool // by sequence: its slot is free again
}

// free gives back the slot of seq, once.
func (w *window) free(seq uint32) {
	if w.done[seq].CompareAndSwap(false, true) {
		<-w.slots
	}
}

func (l udpLoad) visit(c *net.UDPConn, id uint32) (udpStats, error) {
	var st udpStats
	// Sequence 0 opens the flow; it is not counted.
	n, err := exchange(c, seqDatagram(id, 0), 500*time.Millisecond, eventually)
	st.setupSends = n
	if err != nil {
		return st, fmt.Errorf("flow setup: %w", err)
	}
	w := &window{slots: make(chan struct{}, l.window), done: make([]atomic.Bool, l.count+1)}
	sendDone := make(chan time.Time, 1)
	go func() {
		tick := time.NewTicker(l.pace)
		defer tick.Stop()
		var timers []*time.Timer
		for seq := 1; seq <= l.count; seq++ {
			w.slots <- struct{}{} // bounded: every slot is freed within lostAfter
			c.Write(seqDatagram(id, uint32(seq)))
			timers = append(timers, time.AfterFunc(l.lostAfter, func() { w.free(uint32(seq)) }))
			<-tick.C
		}
		sendDone <- time.Now()
		for _, tm := range timers {
			tm.Stop()
		}
	}()
	st.sent = l.count
	got := make([]bool, l.count+1)
	buf := make([]byte, 64<<10)
	hardStop := time.Now().Add(time.Duration(l.count)*(l.pace+l.lostAfter/time.Duration(l.window)) + eventually)
	quietUntil := hardStop
	var highest uint32
	allSent := false
	for st.received < l.count {
		select {
		case at := <-sendDone:
			quietUntil, allSent = at.Add(quietAfterSend), true
		default:
		}
		// Short reads, so that the end of the sends is noticed.
		c.SetReadDeadline(earliest(hardStop, quietUntil, time.Now().Add(100*time.Millisecond)))
		n, err := c.Read(buf)
		if err != nil {
			if isTimeout(err) && time.Now().Before(earliest(hardStop, quietUntil)) {
				continue
			}
			if !isTimeout(err) {
				return st, fmt.Errorf("read: %w", err)
			}
			break
		}
		p := buf[:n]
		if n < seqHeader {
			st.malformed++
			continue
		}
		rid, seq := binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])
		if rid != id {
			st.wrongVisitor++
			continue
		}
		if seq > uint32(l.count) || string(p) != string(seqDatagram(id, seq)) {
			st.malformed++
			continue
		}
		if seq == 0 {
			continue // a late echo of the setup
		}
		if got[seq] {
			st.duplicates++
			continue
		}
		got[seq] = true
		w.free(seq)
		st.received++
		if seq < highest {
			st.outOfOrder++
		}
		highest = max(highest, seq)
	}
	// The sender must be done before c closes.
	if !allSent {
		<-sendDone
	}
	return st, nil
}

// udpSocketOpen reports whether a UDP socket bound to 127.0.0.1:port is
// open on this machine; ok is false where /proc is not available.
func udpSocketOpen(port int) (open, ok bool) {
	f, err := os.Open("/proc/net/udp")
	if err != nil {
		return false, false
	}
	defer f.Close()
	want := fmt.Sprintf("0100007F:%04X", port)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// sl local_address rem_address st ...
		fields := strings.Fields(sc.Text())
		if len(fields) > 1 && fields[1] == want {
			return true, true
		}
	}
	return false, true
}

// needProc skips (or under CI fails) a test that reads /proc.
func needProc(t *testing.T) {
	t.Helper()
	if _, ok := udpSocketOpen(0); !ok || runtime.GOOS != "linux" {
		testutil.Unavailable(t, "/proc/net/udp is not available on %s", runtime.GOOS)
	}
}

// startDNS runs a name server for zone with records hostN.zone A
// 192.0.2.N for N in 1..n, added through a signed update.
func startDNS(t *testing.T, zone string, n int) *dnstest.Server {
	t.Helper()
	ns := dnstest.Start(t, zone)
	m := new(dns.Msg)
	m.SetUpdate(dns.Fqdn(zone))
	for i := 1; i <= n; i++ {
		rr, err := dns.NewRR(fmt.Sprintf("host%d.%s. 300 IN A 192.0.2.%d", i, zone, i))
		if err != nil {
			t.Fatal(err)
		}
		m.Insert([]dns.RR{rr})
	}
	key := dns.Fqdn(ns.KeyName)
	m.SetTsig(key, dns.Fqdn(ns.KeyAlgorithm), 300, time.Now().Unix())
	c := &dns.Client{Timeout: promptly, TsigSecret: map[string]string{key: ns.Secret}}
	r, _, err := c.Exchange(m, ns.Addr)
	if err != nil {
		t.Fatalf("dns update: %v", err)
	}
	if r.Rcode != dns.RcodeSuccess {
		t.Fatalf("dns update: %s", dns.RcodeToString[r.Rcode])
	}
	return ns
}

// digA runs the real dig (at path dig) for name's A record at addr
// (127.0.0.1:PORT), one try of 2 seconds, and returns the addresses of
// the answer and dig's output.
func digA(dig, addr, name string) ([]string, string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), eventually)
	defer cancel()
	// Three tries, as a resolver makes: a datagram may be lost under
	// load, as TestUDPEcho allows.
	out, err := exec.CommandContext(ctx, dig, "@"+host, "-p", port, name, "A", "+tries=3", "+time=2").CombinedOutput()
	if err != nil {
		return nil, string(out), fmt.Errorf("dig: %w", err)
	}
	if !strings.Contains(string(out), "status: NOERROR") {
		return nil, string(out), errors.New("dig: no NOERROR answer")
	}
	var addrs []string
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(dns.Fqdn(name)) + `\s+\d+\s+IN\s+A\s+(\S+)$`)
	for _, m := range re.FindAllStringSubmatch(string(out), -1) {
		addrs = append(addrs, m[1])
	}
	return addrs, string(out), nil
}

// portOf is the port of a host:port address.
func udpPortOf(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// udpDrops is how many datagrams the gateway counted as dropped for
// reason (too_large, flow_limit, ...).
func udpDrops(t *testing.T, g *udpGateway, reason string) float64 {
	t.Helper()
	v, ok := metricValue(g.scrape(t), "diglett_udp_datagrams_dropped_total", `reason="`+reason+`"`)
	if !ok {
		t.Fatalf("the gateway's metrics have no diglett_udp_datagrams_dropped_total{reason=%q}", reason)
	}
	return v
}

// udpFlowsOpen is how many flows of tunnel the gateway holds.
func udpFlowsOpen(t *testing.T, g *udpGateway, tunnel string) float64 {
	t.Helper()
	v, _ := metricValue(g.scrape(t), "diglett_visitors_open", `tunnel="`+tunnel+`"`, `kind="udp"`)
	return v
}
