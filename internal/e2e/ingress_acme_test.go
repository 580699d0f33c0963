package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"testing"

	"github.com/diglett/diglett/internal/autotls"
	"github.com/diglett/diglett/internal/autotls/pebbletest"
)

// TestHTTPSACME has the gateway obtain a certificate from a real ACME
// server (pebble, which validates the challenge against the gateway's own
// ports) for a registered tunnel, and order none for unknown names.
func TestHTTPSACME(t *testing.T) {
	parallel(t)
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := pebbletest.Start(t, hl.Addr().(*net.TCPAddr).Port, tl.Addr().(*net.TCPAddr).Port)

	var gw atomic.Pointer[testGateway]
	log, _ := newLogger(t, "acme")
	mgr, err := autotls.New(autotls.Config{
		CA:      p.DirectoryURL,
		RootCAs: p.RootCAs,
		Dir:     t.TempDir(),
		Allow: func(ctx context.Context, host string) error {
			g := gw.Load()
			if g == nil {
				return errors.New("gateway not started")
			}
			return g.HostAllowed(ctx, host)
		},
		HTTPAddr:  hl.Addr().String(),
		HTTPSAddr: tl.Addr().String(),
		Logger:    log,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		mgr.Close()
		// The ACME client's keep-alive connections end only when the CA
		// closes them.
		p.CloseClientConnections()
	})
	g := httpGateway(t, gatewayOptions{HTTPLn: hl, HTTPSLn: tl, HTTPSTLS: mgr.TLSConfig(), HTTPChallenge: mgr.HTTPChallengeHandler})
	gw.Store(g)
	startHTTPAgent(t, g, "secure", nameBackend(t, "secure"))

	// A flood of handshakes for names that are no tunnel's orders nothing.
	for i := range 100 {
		name := fmt.Sprintf("nobody-%d.gw.test", i)
		if i%10 == 0 {
			name = fmt.Sprintf("host-%d.elsewhere.test", i)
		}
		c, err := tls.Dial("tcp", g.HTTPSAddr, &tls.Config{ServerName: name, InsecureSkipVerify: true})
		if err == nil {
			c.Close()
			t.Fatalf("handshake for %s succeeded", name)
		}
	}
	if n := p.Orders(); n != 0 {
		t.Fatalf("unknown names caused %d certificate orders", n)
	}

	// The registered tunnel's host gets a certificate that chains to the
	// CA's root, with HTTP/2.
	g.CA = p.IssuerRoots(t)
	c := g.httpClient(t)
	code, body := get(t, c, "https://secure.gw.test/")
	if code != 200 || body != "secure" {
		t.Fatalf("status %d body %q", code, body)
	}
	resp, err := c.Get("https://secure.gw.test/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.TLS == nil || resp.TLS.PeerCertificates[0].DNSNames[0] != "secure.gw.test" {
		t.Fatalf("served %s with certificate for %v", resp.Proto, resp.TLS.PeerCertificates[0].DNSNames)
	}
	if n := p.Orders(); n != 1 {
		t.Fatalf("%d orders, want 1", n)
	}
}
