package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
)

// TestProxyProtocolGateway runs diglett-server with a proxy_protocol
// section listing 127.0.0.2, and agents: a "load balancer" from 127.0.0.2
// sends a v2 header naming the visitor 203.0.113.9:4242 on a tunnel's
// public TCP port and on the HTTP and HTTPS ports, and the backends see
// that visitor (the TCP one through the agent's own PROXY header, parsed
// by the library; the HTTP one in X-Forwarded-For), as do the access log
// and a tunnel's allow_ips. The same header forged from 127.0.0.1 is
// refused on the TCP and HTTP ports.
func TestProxyProtocolGateway(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	cfg := writeFile(t, dir, "gateway.yaml", "version: 1\nproxy_protocol:\n  from: [127.0.0.2]\n")
	cert, pool := testCA(t, "*."+testDomain)
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	lo, hi := randomPortWindow()
	httpAddr, httpsAddr := freeAddr(t), freeAddr(t)
	srv := startServerCommand(t, "-l", "127.0.0.1:0", "--data-dir", filepath.Join(dir, "data"),
		"--ports", fmt.Sprintf("%d-%d", lo, hi), "--public-bind", "127.0.0.1",
		"--domain", testDomain, "--http-addr", httpAddr, "--https-addr", httpsAddr,
		"--cert", certFile, "--key", keyFile, "--log-level", "debug", "--config", cfg)

	// A TCP backend that reads the agent's PROXY header and answers with
	// the visitor it names.
	tcpBackend := startPPBackend(t)
	tcpAgent := startAgentCommand(t, "-g", srv.Addr, "-n", "pp-tcp", "--fingerprint", srv.Fingerprint,
		"--known-gateways", filepath.Join(dir, "known_gateways_tcp"), "--proxy-protocol", "v1", tcpBackend)
	tcpAddr := tcpAgent.tunnel(t, "pp-tcp")
	// An echo behind an allow-list that has the balancer's visitor in it.
	allowAgent := startAgentCommand(t, "-g", srv.Addr, "-n", "pp-allow", "--fingerprint", srv.Fingerprint,
		"--known-gateways", filepath.Join(dir, "known_gateways_allow"), "--allow-ips", "203.0.113.0/24", startEcho(t))
	allowAddr := allowAgent.tunnel(t, "pp-allow")
	// An HTTP backend that answers with the visitor of X-Forwarded-For.
	webBackend := startHTTPBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "xff=%s", r.Header.Get("X-Forwarded-For"))
	}))
	webAgent := startAgentCommand(t, "-g", srv.Addr, "-n", "pp-web", "--fingerprint", srv.Fingerprint,
		"--known-gateways", filepath.Join(dir, "known_gateways_web"), webBackend)
	webAgent.tunnel(t, "pp-web")

	header := proxyproto.HeaderProxyFromAddrs(2,
		&net.TCPAddr{IP: net.ParseIP("203.0.113.9"), Port: 4242},
		&net.TCPAddr{IP: net.ParseIP("198.51.100.1"), Port: 443})
	request := "GET / HTTP/1.1\r\nHost: pp-web." + testDomain + "\r\nX-Forwarded-For: 192.0.2.66\r\nConnection: close\r\n\r\n"

	t.Run("balancer tcp", func(t *testing.T) {
		c := ppDial(t, "127.0.0.2", tcpAddr)
		if _, err := header.WriteTo(c); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatalf("read the backend's answer: %v", err)
		}
		if want := "visitor=203.0.113.9:4242\n"; line != want {
			t.Fatalf("backend answered %q, want %q", line, want)
		}
		c.Close()
		waitFor(t, "the access log line", &srv.stderr, `msg="tcp visitor" tunnel=pp-tcp visitor=203.0.113.9:4242`)
	})
	t.Run("balancer http", func(t *testing.T) {
		c := ppDial(t, "127.0.0.2", httpAddr)
		if _, err := header.WriteTo(c); err != nil {
			t.Fatal(err)
		}
		// The X-Forwarded-For the balancer's visitor sent is dropped: the
		// visitor is the header's.
		wantXFF(t, c, request, "203.0.113.9")
	})
	t.Run("balancer https", func(t *testing.T) {
		c := ppDial(t, "127.0.0.2", httpsAddr)
		if _, err := header.WriteTo(c); err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(c, &tls.Config{ServerName: "pp-web." + testDomain, RootCAs: pool, NextProtos: []string{"http/1.1"}})
		wantXFF(t, tc, request, "203.0.113.9")
	})
	t.Run("forged tcp", func(t *testing.T) {
		c := ppDial(t, "127.0.0.1", tcpAddr)
		header.WriteTo(c)
		got, _ := io.ReadAll(c) // reset, or closed
		if strings.Contains(string(got), "203.0.113.9") {
			t.Fatalf("a forged header reached the backend: %q", got)
		}
		waitFor(t, "the refusal", &srv.stderr, "visitor refused: PROXY protocol header from a source not allowed to send one")
	})
	t.Run("forged http", func(t *testing.T) {
		c := ppDial(t, "127.0.0.1", httpAddr)
		header.WriteTo(c)
		io.WriteString(c, request)
		if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
			resp.Body.Close()
			t.Fatalf("a forged header got an answer: %d", resp.StatusCode)
		}
		waitForN(t, "the refusals", &srv.stderr, "visitor refused: PROXY protocol header from a source not allowed to send one", 2)
	})
	t.Run("allow_ips", func(t *testing.T) {
		// The tunnel's allow_ips are checked against the visitor: the
		// balancer's is in them, a direct visitor is not.
		c := ppDial(t, "127.0.0.2", allowAddr)
		header.WriteTo(c)
		io.WriteString(c, "ping")
		c.(*net.TCPConn).CloseWrite()
		if got, err := io.ReadAll(c); err != nil || string(got) != "ping" {
			t.Fatalf("the balancer's visitor got %q, %v; want the echo", got, err)
		}
		expectTurnedAway(t, allowAddr)
		waitFor(t, "the refusal", &srv.stderr, "visitor refused: address not allowed")
	})
	t.Run("direct visitor", func(t *testing.T) {
		// The direct visitor's own address.
		wantXFF(t, ppDial(t, "127.0.0.1", httpAddr), request, "127.0.0.1")
	})
	if err := tcpAgent.stop(); err != nil {
		t.Errorf("tcp agent: %v", err)
	}
	if err := allowAgent.stop(); err != nil {
		t.Errorf("allow agent: %v", err)
	}
	if err := webAgent.stop(); err != nil {
		t.Errorf("web agent: %v", err)
	}
	srv.stop()
}

// ppDial connects to addr from the local address ip, for eventually at
// most.
func ppDial(t *testing.T, ip, addr string) net.Conn {
	t.Helper()
	c := dialFrom(t, net.ParseIP(ip), addr)
	c.SetDeadline(time.Now().Add(eventually))
	return c
}

// startPPBackend serves a TCP backend that requires a PROXY header on
// each connection and answers "visitor=ADDR\n" with the header's source,
// or "no header\n".
func startPPBackend(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pl := &proxyproto.Listener{
		Listener:          ln,
		ConnPolicy:        func(proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) { return proxyproto.REQUIRE, nil },
		ReadHeaderTimeout: eventually,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := pl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if pc, ok := c.(*proxyproto.Conn); !ok || pc.ProxyHeader() == nil {
					io.WriteString(c, "no header\n")
					return
				}
				io.WriteString(c, "visitor="+c.RemoteAddr().String()+"\n")
			}()
		}
	}()
	t.Cleanup(func() {
		pl.Close()
		<-done
	})
	return ln.Addr().String()
}

// wantXFF sends request on c and wants the backend's answer: 200 and the
// X-Forwarded-For it was given, xff.
func wantXFF(t *testing.T, c net.Conn, request, xff string) {
	t.Helper()
	io.WriteString(c, request)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := "xff=" + xff; resp.StatusCode != http.StatusOK || string(body) != want {
		t.Fatalf("got %d %q, want 200 %q", resp.StatusCode, body, want)
	}
}
