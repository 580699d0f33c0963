package faults

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Attacks and faults that already held when the suite was written; they
// stay here so that they keep holding.
var heldCases = []faultCase{
	{
		name:    "request-smuggling",
		tried:   "CL+TE, duplicate Content-Length and an obs-folded Transfer-Encoding, each carrying a second request",
		gateway: &gatewayConfig{http: true},
		run:     smuggling,
	},
	{
		name:    "header-bomb",
		tried:   "a request with 80 KiB of headers",
		gateway: &gatewayConfig{http: true},
		run:     headerBomb,
	},
	{
		name:    "slowloris",
		tried:   "20 visitors sending their headers one byte a second",
		gateway: &gatewayConfig{http: true},
		run:     slowloris,
	},
	{
		name:    "http2-rapid-reset",
		tried:   "1,000 HTTP/2 streams opened and reset at once on one connection",
		gateway: &gatewayConfig{https: true},
		run:     rapidReset,
	},
	{
		name:  "name-squatting",
		tried: "identity bob registers the name alice is serving",
		gateway: &gatewayConfig{tokens: `- token: sq-alice
  names: ["squat"]
  identity: alice
- token: sq-bob
  names: ["squat"]
  identity: bob
`},
		run: nameSquatting,
	},
	{
		name:    "checksummed-transfers",
		tried:   "8 MiB each way through agents over tcp, quic and ws at once",
		gateway: &gatewayConfig{},
		run:     transfers,
	},
	{
		name:    "fake-gateway",
		tried:   "an agent that pinned the gateway's key dials another gateway at that address",
		gateway: &gatewayConfig{},
		run:     fakeGatewayRefused,
	},
	{
		name:  "config-errors",
		tried: "gateway: --ports 40000-30000, an unknown flag, a missing and a malformed tokens file; agent: --transport carrier-pigeon",
		run:   configErrors,
	},
}

func smuggling(c *tc, e *env) string {
	be := startHTTPBackend(c)
	e.newAgent(c, agentSpec{names: []string{"smuggle"}, backend: be.addr}).tunnel(c, "smuggle")
	waitHTTP(c, e.gw.httpAddr, "smuggle")
	before := len(be.seen())
	h := host("smuggle", e.gw.httpAddr)
	second := "GET /smuggled HTTP/1.1\r\nHost: " + h + "\r\n\r\n"
	shapes := []struct{ name, raw string }{
		{"CL+TE", "POST /cl-te HTTP/1.1\r\nHost: " + h + "\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + second},
		{"duplicate CL", "POST /dup-cl HTTP/1.1\r\nHost: " + h + "\r\nContent-Length: 0\r\nContent-Length: " + fmt.Sprint(len(second)) + "\r\n\r\n" + second},
		{"obs-fold", "POST /fold HTTP/1.1\r\nHost: " + h + "\r\nContent-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + second},
	}
	var got []string
	for _, s := range shapes {
		conn, err := net.DialTimeout("tcp", e.gw.httpAddr, 5*time.Second)
		if err != nil {
			c.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		go io.WriteString(conn, s.raw)
		br := bufio.NewReader(conn)
		r := readResponse(br)
		if r.status != http.StatusBadRequest {
			c.Errorf("%s: got %v, want 400", s.name, r)
		}
		// Nothing more may come back: no answer to the smuggled request.
		if extra := readResponse(br); extra.err == nil {
			c.Errorf("%s: a second response on the connection: %v", s.name, extra)
		}
		conn.Close()
		got = append(got, fmt.Sprintf("%s %d", s.name, r.status))
	}
	if seen := be.seen(); len(seen) != before {
		var paths []string
		for _, r := range seen[before:] {
			paths = append(paths, r.URL.Path)
		}
		c.Errorf("smuggling shapes reached the backend: %v", paths)
	}
	return strings.Join(got, ", ") + "; the backend saw none of them"
}

func headerBomb(c *tc, e *env) string {
	be := startHTTPBackend(c)
	e.newAgent(c, agentSpec{names: []string{"bomb"}, backend: be.addr}).tunnel(c, "bomb")
	waitHTTP(c, e.gw.httpAddr, "bomb")
	before := len(be.seen())
	var req strings.Builder
	req.WriteString("GET /bomb HTTP/1.1\r\nHost: " + host("bomb", e.gw.httpAddr) + "\r\n")
	filler := strings.Repeat("a", 1000)
	for i := range 80 {
		fmt.Fprintf(&req, "X-Bomb-%d: %s\r\n", i, filler)
	}
	req.WriteString("\r\n")
	r := rawHTTP(e.gw.httpAddr, req.String(), 10*time.Second)
	if r.status != http.StatusRequestHeaderFieldsTooLarge {
		c.Fatalf("80 KiB of headers: got %v, want 431", r)
	}
	if len(be.seen()) != before {
		c.Fatalf("the header bomb reached the backend")
	}
	return "431, the backend saw nothing"
}

func slowloris(c *tc, e *env) string {
	be := startHTTPBackend(c)
	e.newAgent(c, agentSpec{names: []string{"slow"}, backend: be.addr}).tunnel(c, "slow")
	waitHTTP(c, e.gw.httpAddr, "slow")
	const n = 20
	var wg sync.WaitGroup
	var longest atomic.Int64
	var open atomic.Int64
	for range n {
		conn, err := net.DialTimeout("tcp", e.gw.httpAddr, 5*time.Second)
		if err != nil {
			c.Fatal(err)
		}
		c.Cleanup(func() { conn.Close() })
		wg.Add(2)
		start := time.Now()
		done := make(chan struct{})
		go func() { // one byte a second
			defer wg.Done()
			head := "GET / HTTP/1.1\r\nHost: " + host("slow", e.gw.httpAddr) + "\r\nX-Slow: "
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for i := 0; ; i++ {
				b := byte('a')
				if i < len(head) {
					b = head[i]
				}
				if _, err := conn.Write([]byte{b}); err != nil {
					return
				}
				select {
				case <-done:
					return
				case <-tick.C:
				}
			}
		}()
		go func() {
			defer wg.Done()
			defer close(done)
			// The header timeout is 10s; give it 5s more.
			if closed, _ := closedWithin(conn, 15*time.Second); !closed {
				open.Add(1)
			}
			took := int64(time.Since(start))
			for {
				m := longest.Load()
				if took <= m || longest.CompareAndSwap(m, took) {
					break
				}
			}
		}()
	}
	wg.Wait()
	if open.Load() > 0 {
		c.Fatalf("%d of %d visitors sending headers a byte a second still connected after 15s", open.Load(), n)
	}
	return fmt.Sprintf("all %d cut within %.1fs", n, time.Duration(longest.Load()).Seconds())
}

func rapidReset(c *tc, e *env) string {
	be := startHTTPBackend(c)
	e.newAgent(c, agentSpec{names: []string{"rr"}, backend: be.addr}).tunnel(c, "rr")
	waitHTTP(c, e.gw.httpAddr, "rr")
	before := len(be.seen())
	authority := host("rr", e.gw.httpsAddr)
	tc := &tls.Config{ServerName: "rr." + domain, NextProtos: []string{"h2"}, InsecureSkipVerify: true}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.gw.httpsAddr, tc)
	if err != nil {
		c.Fatalf("HTTPS ingress: %v", err)
	}
	defer conn.Close()
	if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
		c.Fatalf("HTTPS ingress negotiated %q, not h2", p)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		c.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		c.Fatal(err)
	}
	var goAway atomic.Bool
	read := make(chan struct{})
	go func() {
		defer close(read)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if _, ok := f.(*http2.GoAwayFrame); ok {
				goAway.Store(true)
			}
		}
	}()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	sent := 0
	for i := range 1000 {
		id := uint32(2*i + 1)
		hb.Reset()
		for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"}, {Name: ":authority", Value: authority}, {Name: ":path", Value: "/rr"}} {
			enc.WriteField(f)
		}
		if fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}) != nil {
			break
		}
		if fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
			break
		}
		sent++
	}
	conn.Close()
	<-read

	// A new HTTP/2 visitor is served.
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, e.gw.httpsAddr)
		},
	}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("https://" + authority + "/after")
	if err != nil {
		c.Fatalf("HTTP/2 request after the rapid reset: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		c.Fatalf("HTTP/2 request after the rapid reset: %s %s", resp.Proto, resp.Status)
	}
	return fmt.Sprintf("%d streams opened and reset (GOAWAY: %v); the backend saw %d of them; a new HTTP/2 request got 200",
		sent, goAway.Load(), len(be.seen())-before-1)
}

func nameSquatting(c *tc, e *env) string {
	a := e.newAgent(c, agentSpec{names: []string{"squat"}, token: "sq-alice", backend: e.echo})
	addr := a.tunnel(c, "squat")
	b := e.newAgent(c, agentSpec{names: []string{"squat"}, token: "sq-bob", backend: e.echo})
	code, ok := b.waitExit(10 * time.Second)
	if !ok {
		c.Fatalf("bob's agent registering alice's name still running after 10s: %s", oneLine(b.stdout.String()))
	}
	if code == 0 {
		c.Fatalf("bob's agent exited 0: %s", oneLine(b.stderr.tail(300)))
	}
	if err := roundTrip(addr, 256<<10, 10*time.Second); err != nil {
		c.Fatalf("alice's tunnel after bob's attempt: %v", err)
	}
	return fmt.Sprintf("bob refused (%q); alice kept serving", lastLine(b.stderr.String()))
}

func transfers(c *tc, e *env) string {
	transports := []string{"tcp", "quic", "ws"}
	addrs := make([]string, len(transports))
	for i, tr := range transports {
		addrs[i] = e.newAgent(c, agentSpec{names: []string{"xfer-" + tr}, transport: tr, backend: e.echo}).tunnel(c, "xfer-"+tr)
	}
	errs := make([]error, len(transports))
	var wg sync.WaitGroup
	for i := range transports {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = roundTrip(addrs[i], 8<<20, 60*time.Second)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			c.Errorf("8 MiB over %s: %v", transports[i], err)
		}
	}
	return "8 MiB each way intact over tcp, quic and ws"
}

func fakeGatewayRefused(c *tc, e *env) string {
	fake := startProc(c, "diglett-server", bin.server, standaloneGateway(c, c.TempDir())...)
	m := fake.mustMatch(c, fake.stdout, bannerRE, 20*time.Second)
	fakeAddr, fakeFP := m[1], m[2]
	known := filepath.Join(c.TempDir(), "known_gateways")
	if err := os.WriteFile(known, []byte(fakeAddr+" "+e.gw.fp+"\n"), 0o600); err != nil {
		c.Fatal(err)
	}
	a := e.newAgent(c, agentSpec{names: []string{"victim"}, backend: e.echo, pinFile: known, gateway: fakeAddr})
	code, ok := a.waitExit(10 * time.Second)
	if !ok {
		c.Fatalf("agent dialing a gateway with another key still running after 10s: %s", oneLine(a.stdout.String()))
	}
	out := a.stderr.String()
	if code == 0 || !strings.Contains(out, e.gw.fp) || !strings.Contains(out, fakeFP) {
		c.Fatalf("agent exited %d without naming both keys: %s", code, oneLine(out))
	}
	if strings.Contains(a.stdout.String(), "victim: ") {
		c.Fatalf("the agent published through the fake gateway")
	}
	return fmt.Sprintf("refused, exit %d, both fingerprints printed", code)
}

func configErrors(c *tc, _ *env) string {
	dir := c.TempDir()
	badTokens := filepath.Join(dir, "tokens.yaml")
	if err := os.WriteFile(badTokens, []byte("- token: x\n  names: [\"Not A Name!\"]\n"), 0o600); err != nil {
		c.Fatal(err)
	}
	var got []string
	for _, tt := range []struct {
		program, want string
		args          []string
	}{
		{bin.server, "--ports", standaloneGateway(c, dir, "--ports", "40000-30000")},
		{bin.server, "no-such-flag", standaloneGateway(c, dir, "--no-such-flag")},
		{bin.server, "/nonexistent/tokens.yaml", standaloneGateway(c, dir, "--tokens", "/nonexistent/tokens.yaml")},
		{bin.server, badTokens, standaloneGateway(c, dir, "--tokens", badTokens)},
		{bin.agent, "--transport", []string{"-g", "127.0.0.1:9", "-n", "x", "--transport", "carrier-pigeon", "9000"}},
	} {
		got = append(got, fmt.Sprintf("%q", expectRefusedStart(c, tt.program, tt.want, tt.args...)))
	}
	return "each exited non-zero within 5s: " + strings.Join(got, "; ")
}
