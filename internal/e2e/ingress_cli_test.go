package e2e

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/autotls/pebbletest"
)

// TestCommandLineHTTPS runs both command lines with the HTTP ingress and a
// fixed certificate (--cert/--key): the agent prints the tunnel's URLs and
// a visitor reaches the backend over HTTPS by host name, behind basic auth.
func TestCommandLineHTTPS(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
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
		"--domain", strings.ToUpper(testDomain)+".", "--http-addr", httpAddr, "--https-addr", httpsAddr,
		"--cert", certFile, "--key", keyFile)

	backend := nameBackend(t, "through the command lines")
	a := startAgentCommand(t, "-g", srv.Addr, "-n", "example", "--fingerprint", srv.Fingerprint,
		"--known-gateways", filepath.Join(dir, "known_gateways"), "--basic-auth", "alice:secret", backend)
	a.tunnel(t, "example")
	_, httpPort, _ := strings.Cut(httpAddr, ":")
	_, httpsPort, _ := strings.Cut(httpsAddr, ":")
	for _, want := range []string{
		"example: https://example.gw.test:" + httpsPort + " -> " + backend + "\n",
		"example: http://example.gw.test:" + httpPort + " -> " + backend + "\n",
	} {
		if !strings.Contains(a.stdout.String(), want) {
			t.Errorf("agent did not print %q; it printed:\n%s", want, &a.stdout)
		}
	}

	g := &testGateway{HTTPAddr: httpAddr, HTTPSAddr: httpsAddr, CA: pool}
	c := g.httpClient(t)
	if code, _ := get(t, c, "https://example.gw.test/"); code != http.StatusUnauthorized {
		t.Fatalf("without the password: status %d, want 401", code)
	}
	req, _ := http.NewRequest("GET", "https://example.gw.test/", nil)
	req.SetBasicAuth("alice", "secret")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Fatalf("with the password: %s %d, want HTTP/2 200", resp.Proto, resp.StatusCode)
	}
	// The gateway keeps idle HTTP streams to the agent; a stopping agent
	// has them closed (drain) instead of waiting out its 10 s grace.
	start := time.Now()
	if err := a.stop(); err != nil {
		t.Fatalf("agent command: %v", err)
	}
	if d := time.Since(start); d > promptly {
		t.Errorf("agent took %v to stop with only idle HTTP streams open", d)
	}
	srv.stop()
}

// TestCommandLineACME runs both command lines with certificates from a
// real ACME server (pebble), configured by the server's flags only. Its
// tunnel's name is its own: the ACME library orders a name once per
// process at a time, so parallel tests must not share names.
func TestCommandLineACME(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	httpAddr, httpsAddr := freeAddr(t), freeAddr(t)
	p := pebbletest.Start(t, addrPort(t, httpAddr), addrPort(t, httpsAddr))
	// After the server has stopped: its ACME client's keep-alive
	// connections end only when the CA closes them.
	t.Cleanup(p.CloseClientConnections)
	lo, hi := randomPortWindow()
	srv := startServerCommand(t, "-l", "127.0.0.1:0", "--data-dir", filepath.Join(dir, "data"),
		"--ports", fmt.Sprintf("%d-%d", lo, hi), "--public-bind", "127.0.0.1",
		"--domain", testDomain, "--http-addr", httpAddr, "--https-addr", httpsAddr,
		"--acme-ca", p.DirectoryURL, "--acme-ca-root", p.RootCAFile, "--acme-email", "ops@example.com",
		"--admin-addr", "127.0.0.1:0")
	a := startAgentCommand(t, "-g", srv.Addr, "-n", "cli-secure", "--fingerprint", srv.Fingerprint,
		"--known-gateways", filepath.Join(dir, "known_gateways"), nameBackend(t, "cli-secure"))
	a.tunnel(t, "cli-secure")
	if want := "cli-secure: https://cli-secure.gw.test:" + fmt.Sprint(addrPort(t, httpsAddr)); !strings.Contains(a.stdout.String(), want) {
		t.Errorf("agent did not print %q:\n%s", want, &a.stdout)
	}

	g := &testGateway{HTTPAddr: httpAddr, HTTPSAddr: httpsAddr, CA: p.IssuerRoots(t)}
	if code, body := get(t, g.httpClient(t), "https://cli-secure.gw.test/"); code != 200 || body != "cli-secure" {
		t.Fatalf("status %d body %q", code, body)
	}
	if n := p.Orders(); n != 1 {
		t.Errorf("%d certificate orders, want 1", n)
	}
	var stored []string
	filepath.WalkDir(filepath.Join(dir, "data", "certs"), func(path string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(path, ".crt") {
			stored = append(stored, filepath.Base(path))
		}
		return nil
	})
	if len(stored) != 1 || stored[0] != "cli-secure.gw.test.crt" {
		t.Errorf("certificates stored under the data dir: %v", stored)
	}
	// The order is counted in the metrics, with no label for the host.
	adm := &trafficGateway{adminAddr: logged(t, srv, adminLine)}
	adm.awaitMetrics(t, map[string]float64{
		`diglett_certificates_total result="obtained"`: 1,
		`diglett_certificates_total result="failed"`:   0,
	})
	a.stop()
	srv.stop()
}

func addrPort(t *testing.T, addr string) int {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return int(ap.Port())
}
