package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/diglett/diglett"
)

// The reference paths, measured beside the transports to show what part
// of the gap to direct comes from the design and what the library gives:
//
//   - floor: two chained plain TCP relay processes ("bench relay"), no
//     encryption and no multiplexing, the cheapest two-process path (a
//     gateway and an agent) on the machine; by Host, the standard
//     library's reverse proxy ("bench proxy") in front of the inner relay;
//   - library: the app serves HTTP itself on diglett.Listen over TLS over
//     TCP ("bench libbackend"), with no agent process and no hop from an
//     agent to a backend; no iperf3 behind it, so no bulk figures.
const (
	refFloor   = "floor"
	refLibrary = "library"
)

// refOrder is the order of the reference columns, after the transports.
var refOrder = []string{refLibrary, refFloor, refCluster}

// relayBufSize is the size of each of the relay's copy buffers.
const relayBufSize = 32 << 10

// relayBufs holds the relay's copy buffers between connections.
var relayBufs = sync.Pool{New: func() any { return new([relayBufSize]byte) }}

// relay forwards the connections accepted on its listeners to their
// targets and ends them all on shutdown.
type relay struct {
	wg     sync.WaitGroup // accept loops and connections
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// runRelay listens on a fresh loopback port for each target, prints
// "relay ADDR -> TARGET" for each, and forwards every connection accepted
// there to the target, both ways, until SIGTERM or SIGINT.
func runRelay(targets []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var lns []net.Listener
	for range targets {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return fmt.Errorf("listen: %w", err)
		}
		lns = append(lns, ln)
	}
	r := &relay{conns: map[net.Conn]struct{}{}}
	for i, ln := range lns {
		fmt.Printf("relay %s -> %s\n", ln.Addr(), targets[i])
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.serve(ln, targets[i])
		}()
	}
	<-ctx.Done()
	for _, ln := range lns {
		ln.Close()
	}
	r.mu.Lock()
	r.closed = true
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
	return nil
}

// serve accepts connections on ln and relays each to target, until ln is
// closed.
func (r *relay) serve(ln net.Listener, target string) {
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// Out of file descriptors, say: wait a little and go on.
			fmt.Fprintln(os.Stderr, "relay: accept:", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if !r.track(c) {
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer r.untrack(c)
			r.forward(c, target)
		}()
	}
}

// track records c so that shutdown closes it; false (and c closed) when
// the relay is shutting down.
func (r *relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		c.Close()
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

// untrack closes c and forgets it.
func (r *relay) untrack(c net.Conn) {
	c.Close()
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
}

// forward dials target for the visitor c and copies both ways until both
// directions have ended.
func (r *relay) forward(c net.Conn, target string) {
	d, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay: dial:", err)
		return
	}
	if !r.track(d) {
		return
	}
	defer r.untrack(d)
	done := make(chan struct{})
	go func() {
		defer close(done)
		pipe(d, c)
	}()
	pipe(c, d)
	<-done
}

// pipe copies src to dst through a 32 KiB buffer. When src ends, it
// half-closes dst so the end reaches the other side; on an error it
// closes both, which ends the other direction too.
func pipe(dst, src net.Conn) {
	buf := relayBufs.Get().(*[relayBufSize]byte)
	defer relayBufs.Put(buf)
	// The wrappers hide the connections' ReadFrom and WriteTo, through
	// which io.CopyBuffer would splice in the kernel and leave the buffer
	// unused: the bytes go through the process, as in any tunnel that has
	// to read them.
	_, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf[:])
	if err == nil {
		if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			return
		}
	}
	dst.Close()
	src.Close()
}

// runLibBackend publishes the backend's handler as the app itself: it
// listens with diglett.Listen (TLS over TCP) on gateway as name, prints
// the tunnel's public addresses as the agent does ("NAME: URL -> app"),
// and serves HTTP on the listener.
func runLibBackend(gateway, fingerprint, name, knownGateways string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	ln, err := diglett.Listen(ctx, diglett.Config{
		Gateway:       gateway,
		Name:          name,
		Fingerprint:   fingerprint,
		KnownGateways: knownGateways,
		Transport:     diglett.TransportTCP,
		Logger:        slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	cancel()
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	fmt.Printf("%s: tcp://%s -> app\n", name, ln.Addr())
	httpURL := "http://" + name + "." + domain
	for _, t := range ln.Tunnels() {
		if t.Name == name && t.HTTPURL != "" {
			httpURL = t.HTTPURL
		}
	}
	fmt.Printf("%s: %s -> app\n", name, httpURL)
	if err := serveBackend(ln); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// startLibrary starts "bench libbackend" on the main gateway and adds it
// as the library path.
func (b *bench) startLibrary(exe, knownGateways string) error {
	const name = "http-library"
	p, err := startProc(b.logDir, "libbackend", exe, "libbackend", b.gwAddr, b.fp, name, knownGateways)
	if err != nil {
		return err
	}
	b.ps.add(p)
	m, err := p.waitLines(30*time.Second,
		regexp.MustCompile(`^`+name+`: tcp://(\S+) -> `),
		regexp.MustCompile(`^`+name+`: http://(\S+) -> `))
	if err != nil {
		return err
	}
	host, _, _ := strings.Cut(m[1][1], ":")
	b.targets = append(b.targets, &target{name: refLibrary, server: p, httpAddr: m[0][1], hostName: host})
	return nil
}

// startFloor starts two chained "bench relay" processes in front of the
// HTTP backend and the iperf3 server and adds them as the floor path: the
// outer one models the gateway, the inner one the agent.
func (b *bench) startFloor(exe string, iperfPort int) error {
	relayTo := func(name string, targets ...string) ([]string, error) {
		p, err := startProc(b.logDir, name, exe, append([]string{"relay"}, targets...)...)
		if err != nil {
			return nil, err
		}
		b.ps.add(p)
		var res []*regexp.Regexp
		for _, t := range targets {
			res = append(res, regexp.MustCompile(`^relay (\S+) -> `+regexp.QuoteMeta(t)+`$`))
		}
		m, err := p.waitLines(10*time.Second, res...)
		if err != nil {
			return nil, err
		}
		var addrs []string
		for _, s := range m {
			addrs = append(addrs, s[1])
		}
		return addrs, nil
	}
	inner, err := relayTo("relay-inner", b.backend, net.JoinHostPort("127.0.0.1", strconv.Itoa(iperfPort)))
	if err != nil {
		return err
	}
	outer, err := relayTo("relay-outer", inner...)
	if err != nil {
		return err
	}
	// By Host: the standard library's reverse proxy in the gateway's
	// place, in front of the same inner relay.
	px, err := startProc(b.logDir, "proxy", exe, "proxy", inner[0])
	if err != nil {
		return err
	}
	b.ps.add(px)
	pm, err := px.waitLines(10*time.Second, regexp.MustCompile(`^proxy (\S+) -> `))
	if err != nil {
		return err
	}
	_, ps, _ := net.SplitHostPort(outer[1])
	port, err := strconv.Atoi(ps)
	if err != nil {
		return fmt.Errorf("relay printed %q: %w", outer[1], err)
	}
	b.targets = append(b.targets, &target{name: refFloor, httpAddr: outer[0], bulkPort: port, hostName: "floor." + domain, hostAddr: pm[0][1]})
	return nil
}

// runProxy serves HTTP on a fresh loopback port with the standard
// library's reverse proxy to target (keep-alive, up to 256 idle
// connections, no compression: as the gateway's ingress is set up), prints
// "proxy ADDR -> TARGET", and runs until SIGTERM or SIGINT.
func runProxy(target string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	u := &url.URL{Scheme: "http", Host: target}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Host = r.In.Host
			r.SetXForwarded()
		},
		Transport: &http.Transport{
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
	}
	srv := &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second}
	fmt.Printf("proxy %s -> %s\n", ln.Addr(), target)
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
