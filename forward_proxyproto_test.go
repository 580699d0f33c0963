package diglett_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/auth/allowall"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/identity"
)

// ppWait bounds every wait of these tests.
const ppWait = 10 * time.Second

// ppVisitorIP is where the tests' visitors connect from: a loopback
// address other than the 127.0.0.1 every process on the machine uses, so
// a backend seeing it has been told, not guessed.
var ppVisitorIP = net.IPv4(127, 0, 0, 7)

// startPPGateway runs a gateway on loopback until the test ends and
// returns an agent's Config for it publishing names.
func startPPGateway(t *testing.T, names ...string) diglett.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := identity.SelfSigned(key, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	fp, err := identity.Fingerprint(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := gateway.New(gateway.Config{
		TLS:        &tls.Config{Certificates: []tls.Certificate{cert}},
		Auth:       allowall.Authenticator{},
		PublicHost: "127.0.0.1",
		Logger:     quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-served
	})
	return diglett.Config{
		Gateway:       ln.Addr().String(),
		Transport:     diglett.TransportTCP,
		Connections:   1,
		Name:          names[0],
		Names:         names[1:],
		Fingerprint:   fp,
		KnownGateways: filepath.Join(t.TempDir(), "known_gateways"),
		Logger:        quiet,
	}
}

// listenPP runs diglett.Listen for cfg; the listener is closed when the
// test ends.
func listenPP(t *testing.T, cfg diglett.Config) *diglett.Listener {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), ppWait)
	defer cancel()
	ln, err := diglett.Listen(ctx, cfg)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// seen is what a backend got on one connection: the PROXY protocol
// header it parsed (nil without one), then every byte after it.
type seen struct {
	header *proxyproto.Header
	data   []byte
	err    error
}

// ppReply is what the backend sends before echoing the visitor's bytes.
const ppReply = "backend says: "

// serveParsing serves ln until the test ends: on each connection it
// parses a PROXY protocol header with the library's parser (if one is
// there), reads the rest up to the visitor's EOF, answers ppReply and
// those bytes, and reports what it saw on the returned channel.
func serveParsing(t *testing.T, ln net.Listener) <-chan seen {
	t.Helper()
	out := make(chan seen, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(ppWait))
				br := bufio.NewReader(c)
				var s seen
				s.header, s.err = proxyproto.Read(br)
				if errors.Is(s.err, proxyproto.ErrNoProxyProtocol) {
					s.err = nil
				}
				if s.err == nil {
					s.data, s.err = io.ReadAll(br)
				}
				if s.err == nil {
					_, s.err = c.Write(append([]byte(ppReply), s.data...))
				}
				out <- s
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return out
}

// visit connects to addr from ppVisitorIP, sends payload, half-closes and
// returns what comes back and the visitor's own address.
func visit(t *testing.T, addr, payload string) (got string, from *net.TCPAddr) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ppVisitorIP}, Timeout: ppWait}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("visitor dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ppWait))
	if _, err := io.WriteString(c, payload); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("visitor read: %v (got %q)", err, b)
	}
	return string(b), c.LocalAddr().(*net.TCPAddr)
}

// next waits for what the backend saw on its next connection.
func next(t *testing.T, ch <-chan seen) seen {
	t.Helper()
	select {
	case s := <-ch:
		if s.err != nil {
			t.Fatalf("backend: %v", s.err)
		}
		return s
	case <-time.After(ppWait):
		t.Fatal("the backend got no connection")
	}
	return seen{}
}

// TestForwardProxyProtocol: with ProxyProtocol set, the backend parses a
// PROXY protocol header (v1 and v2) whose source is the visitor's own
// address and whose destination is the backend's, followed by exactly the
// visitor's bytes (a forged header among them passes as data), and the
// visitor gets exactly the backend's bytes; with Dial too, where the
// destination of a connection that is not TCP is the unspecified address.
func TestForwardProxyProtocol(t *testing.T) {
	// The visitor's bytes start like a header of its own: the backend
	// must take them as data, after the agent's.
	const payload = "PROXY TCP4 203.0.113.9 127.0.0.1 4444 80\r\nGET / HTTP/1.0\r\n\r\n\x00\xff binary too"
	for _, v := range []int{diglett.ProxyProtocolV1, diglett.ProxyProtocolV2} {
		for _, mode := range []string{"Backends", "Dial"} {
			t.Run(fmt.Sprintf("v%d/%s", v, mode), func(t *testing.T) {
				cfg := startPPGateway(t, "pp")
				var (
					bl   net.Listener
					err  error
					o    = diglett.ForwardOptions{ProxyProtocol: v}
					want *net.TCPAddr
				)
				switch mode {
				case "Backends":
					bl, err = net.Listen("tcp", "127.0.0.1:0")
					want = bl.Addr().(*net.TCPAddr)
					o.Backends = map[string]string{"pp": bl.Addr().String()}
				case "Dial":
					// A unix socket: its connections have no TCP address.
					path := filepath.Join(t.TempDir(), "backend.sock")
					bl, err = net.Listen("unix", path)
					want = &net.TCPAddr{IP: net.IPv4zero}
					o.Dial = func(ctx context.Context, tunnel string) (net.Conn, error) {
						var d net.Dialer
						return d.DialContext(ctx, "unix", path)
					}
				}
				if err != nil {
					t.Fatal(err)
				}
				backend := serveParsing(t, bl)
				ln := listenPP(t, cfg)
				forwardPP(t, ln, "", o)

				got, from := visit(t, ln.Addr().String(), payload)
				if want := ppReply + payload; got != want {
					t.Errorf("visitor got %q; want %q", got, want)
				}
				s := next(t, backend)
				if s.header == nil {
					t.Fatalf("backend got no PROXY protocol header, only %q", s.data)
				}
				if s.header.Version != byte(v) || s.header.Command != proxyproto.PROXY || s.header.TransportProtocol != proxyproto.TCPv4 {
					t.Errorf("header: version %d, command %v, protocol %v; want %d, PROXY, TCPv4", s.header.Version, s.header.Command, s.header.TransportProtocol, v)
				}
				src, dst, ok := s.header.TCPAddrs()
				if !ok || !src.IP.Equal(ppVisitorIP) || src.Port != from.Port {
					t.Errorf("header source %v; want the visitor's %v", src, from)
				}
				if !ok || !dst.IP.Equal(want.IP) || dst.Port != want.Port {
					t.Errorf("header destination %v; want %v", dst, want)
				}
				if string(s.data) != payload {
					t.Errorf("backend got %q after the header; want exactly the visitor's %q", s.data, payload)
				}
			})
		}
	}
}

// TestForwardProxyProtocolPerTunnel: ProxyProtocols overrides
// ProxyProtocol by tunnel name, 0 sending no header; a version that does
// not exist makes Forward return an error at once.
func TestForwardProxyProtocolPerTunnel(t *testing.T) {
	cfg := startPPGateway(t, "v1", "plain", "v2")
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	backend := serveParsing(t, bl)
	ln := listenPP(t, cfg)
	forwardPP(t, ln, bl.Addr().String(), diglett.ForwardOptions{
		ProxyProtocol:  diglett.ProxyProtocolV2,
		ProxyProtocols: map[string]int{"v1": diglett.ProxyProtocolV1, "plain": 0},
	})
	public := map[string]string{}
	for _, tun := range ln.Tunnels() {
		public[tun.Name] = tun.Addr.String()
	}
	for name, want := range map[string]int{"v1": 1, "plain": 0, "v2": 2} {
		got, _ := visit(t, public[name], "hello "+name)
		if got != ppReply+"hello "+name {
			t.Errorf("visitor of %s got %q", name, got)
		}
		s := next(t, backend)
		switch {
		case want == 0 && s.header != nil:
			t.Errorf("tunnel %s: backend got a v%d header; want none", name, s.header.Version)
		case want != 0 && (s.header == nil || s.header.Version != byte(want)):
			t.Errorf("tunnel %s: backend got header %+v; want version %d", name, s.header, want)
		}
		if string(s.data) != "hello "+name {
			t.Errorf("tunnel %s: backend got %q", name, s.data)
		}
	}

	bad := listenPP(t, startPPGateway(t, "bad"))
	done := make(chan error, 1)
	go func() { done <- diglett.Forward(t.Context(), bad, "", diglett.ForwardOptions{ProxyProtocol: 3}) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "proxy protocol version 3") {
			t.Errorf("Forward with ProxyProtocol 3 returned %v; want an error naming the version", err)
		}
	case <-time.After(ppWait):
		t.Fatal("Forward with ProxyProtocol 3 did not return")
	}
	select {
	case <-bad.Done():
	case <-time.After(ppWait):
		t.Error("Forward returned an error but left its listener open")
	}
}

// forwardPP runs diglett.Forward on ln to backend with o until the test
// ends.
func forwardPP(t *testing.T, ln *diglett.Listener, backend string, o diglett.ForwardOptions) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- diglett.Forward(context.Background(), ln, backend, o) }()
	t.Cleanup(func() {
		ln.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Forward: %v", err)
			}
		case <-time.After(ppWait):
			t.Error("Forward did not return after its listener closed")
		}
	})
}
