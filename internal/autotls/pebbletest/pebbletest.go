// Package pebbletest runs pebble, the ACME test server, for tests: a real
// CA that really validates HTTP-01 and TLS-ALPN-01 challenges against
// listeners on 127.0.0.1, with a DNS resolver that answers 127.0.0.1 for
// every name (or, for DNS-01, the test's own DNS server) and a front that
// counts the ACME requests it receives.
//
// pebble comes from the Debian package of the same name (see
// scripts/test-deps.sh). When it is missing, Start fails the test under
// CI=true and skips it otherwise.
package pebbletest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"

	"github.com/miekg/dns"
)

// Program is the name of the pebble binary looked up in PATH.
const Program = "pebble"

// startTimeout bounds how long Start waits for pebble's directory.
const startTimeout = 30 * time.Second

// Pebble is a running pebble. It stops when the test that started it ends.
type Pebble struct {
	// DirectoryURL is the ACME directory URL, served through the counting
	// front.
	DirectoryURL string
	// RootCAs trusts the HTTPS certificate of pebble and of its front: the
	// ACME client's trust for the CA's own endpoint.
	RootCAs *x509.CertPool
	// RootCAFile is the PEM file of that certificate, for a client
	// configured by file.
	RootCAFile string

	mgmtURL   string
	newOrder  string // path of the newOrder endpoint
	front     *httptest.Server
	requests  atomic.Int64
	orders    atomic.Int64
	transport *http.Transport // front to pebble
}

// Start runs pebble for the rest of t, and returns it ready.
//
// httpPort and tlsPort are the ports pebble's validator connects to for
// HTTP-01 and TLS-ALPN-01: those of the server under test, which listens on
// 127.0.0.1 (every name resolves to 127.0.0.1; there are no AAAA records).
// The ACME client under test uses DirectoryURL and trusts RootCAs; a client
// of the server under test verifies the issued certificates with
// IssuerRoots. Challenges are validated for real (PEBBLE_VA_ALWAYS_VALID is
// forced off) and authorizations are never reused, so every order solves
// its challenge.
func Start(t testing.TB, httpPort, tlsPort int) *Pebble {
	t.Helper()
	return StartWithOptions(t, httpPort, tlsPort, Options{})
}

// Options changes how StartWithOptions runs pebble. The zero value runs it
// as Start does.
type Options struct {
	// DNSServer is the address (host:port) of the DNS server pebble's
	// validator resolves names with: for DNS-01, an authoritative server
	// of the test for the names ordered. Default a server of the
	// package's own that answers 127.0.0.1 to every A query.
	DNSServer string
}

// StartWithOptions is Start with o.
func StartWithOptions(t testing.TB, httpPort, tlsPort int, o Options) *Pebble {
	t.Helper()
	bin := testutil.Program(t, Program)
	dir := t.TempDir()
	cert, roots, err := writeCert(dir)
	if err != nil {
		t.Fatalf("pebbletest: %v", err)
	}
	dnsAddr := o.DNSServer
	if dnsAddr == "" {
		dnsAddr = startDNS(t)
	}

	var out testutil.Buffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pebble output:\n%s", out.String())
		}
	})
	p := &Pebble{RootCAs: roots, RootCAFile: filepath.Join(dir, "cert.pem")}
	var pebbleURL string
	for attempt := 1; ; attempt++ {
		// Free ports are picked then released, so another process may
		// take one first; pebble then exits and is started again.
		pebbleURL, err = p.run(t, bin, dir, dnsAddr, httpPort, tlsPort, &out)
		if err == nil {
			break
		}
		if attempt == 3 {
			t.Fatalf("pebbletest: %v", err)
		}
	}

	p.transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
	target, err := url.Parse(pebbleURL)
	if err != nil {
		t.Fatalf("pebbletest: %v", err)
	}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			// pebble builds its URLs from Host: keep the front's, so
			// every later request comes through the front too.
			r.Out.Host = r.In.Host
		},
		Transport: p.transport,
		ErrorLog:  log.New(&out, "front: ", 0),
	}
	p.front = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.requests.Add(1)
		if r.Method == http.MethodPost && r.URL.Path == p.newOrder {
			p.orders.Add(1)
		}
		proxy.ServeHTTP(w, r)
	}))
	p.front.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	p.front.Config.ErrorLog = log.New(&out, "front: ", 0)
	p.front.StartTLS()
	t.Cleanup(func() {
		p.front.Close()
		p.transport.CloseIdleConnections()
	})
	p.DirectoryURL = p.front.URL + "/dir"
	return p
}

// run starts pebble on free loopback ports and waits for its directory. It
// returns pebble's own base URL.
func (p *Pebble) run(t testing.TB, bin, dir, dnsAddr string, httpPort, tlsPort int, out io.Writer) (string, error) {
	ports, err := freePorts(2)
	if err != nil {
		return "", err
	}
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	mgmt := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))
	conf := map[string]any{"pebble": map[string]any{
		"listenAddress":                  listen,
		"managementListenAddress":        mgmt,
		"certificate":                    filepath.Join(dir, "cert.pem"),
		"privateKey":                     filepath.Join(dir, "key.pem"),
		"httpPort":                       httpPort,
		"tlsPort":                        tlsPort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
	}}
	b, err := json.Marshal(conf)
	if err != nil {
		return "", err
	}
	confPath := filepath.Join(dir, "pebble-config.json")
	if err := os.WriteFile(confPath, b, 0o600); err != nil {
		return "", err
	}
	cmd := exec.Command(bin, "-config", confPath, "-dnsserver", dnsAddr)
	cmd.Env = append(os.Environ(),
		"PEBBLE_VA_NOSLEEP=1",      // validate at once
		"PEBBLE_WFE_NONCEREJECT=0", // accept every good nonce
		"PEBBLE_AUTHZREUSE=0",      // every order solves its challenge
		"PEBBLE_VA_ALWAYS_VALID=0", // really validate, whatever the environment says
	)
	cmd.Stdout, cmd.Stderr = out, out
	testutil.KillWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start pebble: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	stop := func() {
		cmd.Process.Kill()
		<-exited
	}

	base := "https://" + listen
	client := &http.Client{
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.RootCAs}},
		Timeout:   2 * time.Second,
	}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(startTimeout)
	for {
		newOrder, err := directory(client, base+"/dir")
		if err == nil {
			p.newOrder = newOrder
			p.mgmtURL = "https://" + mgmt
			t.Cleanup(stop)
			return base, nil
		}
		select {
		case <-exited:
			return "", errors.New("pebble exited at start")
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return "", fmt.Errorf("pebble directory did not answer within %v: %w", startTimeout, err)
		}
	}
}

// directory fetches the ACME directory at u and returns the path of its
// newOrder endpoint.
func directory(client *http.Client, u string) (string, error) {
	resp, err := client.Get(u)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("directory: %s", resp.Status)
	}
	var dir struct {
		NewOrder string `json:"newOrder"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&dir); err != nil {
		return "", fmt.Errorf("directory: %w", err)
	}
	no, err := url.Parse(dir.NewOrder)
	if err != nil || no.Path == "" {
		return "", fmt.Errorf("directory: bad newOrder %q", dir.NewOrder)
	}
	return no.Path, nil
}

// IssuerRoots returns a pool with pebble's issuing root, regenerated at
// every start, so a client can verify the certificates pebble issued.
func (p *Pebble) IssuerRoots(t testing.TB) *x509.CertPool {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.RootCAs}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := client.Get(p.mgmtURL + "/roots/0")
	if err != nil {
		t.Fatalf("pebbletest: get issuing root: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("pebbletest: get issuing root: %s %v", resp.Status, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatalf("pebbletest: no certificate in issuing root %q", b)
	}
	return pool
}

// Requests returns how many ACME requests pebble received so far.
func (p *Pebble) Requests() int64 { return p.requests.Load() }

// Orders returns how many new-order requests pebble received so far.
func (p *Pebble) Orders() int64 { return p.orders.Load() }

// CloseClientConnections closes the connections of ACME clients to pebble,
// such as the idle keep-alive connections of an ACME client's HTTP pool,
// and the front's idle connections to pebble.
func (p *Pebble) CloseClientConnections() {
	p.front.CloseClientConnections()
	p.transport.CloseIdleConnections()
}

// writeCert writes a self-signed certificate for 127.0.0.1, ::1 and
// localhost, with its key, to dir as cert.pem and key.pem.
func writeCert(dir string) (tls.Certificate, *x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "pebbletest"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := os.WriteFile(filepath.Join(dir, "cert.pem"), certPEM, 0o600); err != nil {
		return tls.Certificate{}, nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "key.pem"), keyPEM, 0o600); err != nil {
		return tls.Certificate{}, nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	return cert, roots, nil
}

// startDNS runs, for the rest of t, a DNS server on a free loopback UDP
// port that answers 127.0.0.1 to every A query and nothing to the rest.
// It returns its address.
func startDNS(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("pebbletest: dns: %v", err)
	}
	started := make(chan struct{})
	srv := &dns.Server{
		PacketConn:        pc,
		NotifyStartedFunc: func() { close(started) },
		Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(req)
			m.Authoritative = true
			for _, q := range req.Question {
				if q.Qtype == dns.TypeA && q.Qclass == dns.ClassINET {
					m.Answer = append(m.Answer, &dns.A{
						Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
						A:   net.IPv4(127, 0, 0, 1),
					})
				}
			}
			w.WriteMsg(m)
		}),
	}
	done := make(chan error, 1)
	go func() { done <- srv.ActivateAndServe() }()
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("pebbletest: dns: %v", err)
	}
	t.Cleanup(func() {
		srv.Shutdown()
		<-done
	})
	return pc.LocalAddr().String()
}

// freePorts returns n distinct loopback TCP ports that were free a moment
// ago.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
