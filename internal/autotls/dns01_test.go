package autotls

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/goleak"

	"github.com/diglett/diglett/dnsupdate"
	"github.com/diglett/diglett/internal/autotls/pebbletest"
	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/testutil/dnstest"
)

// dnsProvider is a DNS-01 provider for the configurations that are only
// validated.
var dnsProvider certmagic.DNSProvider = (*dnsupdate.Provider)(nil)

// dialName does a TLS handshake with the gateway for serverName, verifying
// the chain and the name against roots, and returns the leaf.
func dialName(t *testing.T, g *gateway, serverName string, roots *x509.CertPool) (*x509.Certificate, error) {
	t.Helper()
	d := &tls.Dialer{
		NetDialer: &net.Dialer{Timeout: 10 * time.Second},
		Config:    &tls.Config{ServerName: serverName, RootCAs: roots},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", g.httpsAddr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.(*tls.Conn).ConnectionState().PeerCertificates[0], nil
}

// TestDNS01Wildcard obtains a wildcard certificate and one for the zone's
// apex through DNS-01 alone: the records are written by RFC 2136 updates
// to a real authoritative server, which the CA's validator resolves
// through, and no HTTP-01 or TLS-ALPN-01 challenge can be answered (no
// plain HTTP listener, both challenges off, the CA's validation ports
// closed). A handshake for any name under the zone then gets the wildcard
// certificate without a new order.
func TestDNS01Wildcard(t *testing.T) {
	b := make([]byte, 4)
	rand.Read(b)
	zone := fmt.Sprintf("w%x.test", b)
	wildcard := "*." + zone
	ns := dnstest.Start(t, zone)
	client, err := dnsupdate.New(dnsupdate.Options{
		Server:  ns.Addr,
		Zone:    zone,
		TSIG:    &dnsupdate.TSIG{Name: ns.KeyName, Algorithm: ns.KeyAlgorithm, Secret: ns.Secret},
		Timeout: 5 * time.Second,
		Logger:  testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}

	g, lns := newGateway(t, false)
	p := pebbletest.StartWithOptions(t, closedPort(t), closedPort(t), pebbletest.Options{DNSServer: ns.Addr})
	roots := p.IssuerRoots(t)

	var (
		mu       sync.Mutex
		obtained []string
		failed   []string
		allowed  atomic.Int64
	)
	m, logs := newManager(t, g, p, t.TempDir(), func(c *Config) {
		c.Allow = allowHost(&allowed)
		c.DisableHTTP01 = true
		c.DisableTLSALPN01 = true
		c.DNS01 = client.Provider()
		// The propagation check asks the test's server: the system's
		// resolvers know nothing of the zone.
		c.DNSResolvers = []string{ns.Addr}
		c.Names = []string{wildcard, zone}
		c.OnCertificate = func(host string, ok bool) {
			mu.Lock()
			defer mu.Unlock()
			if ok {
				obtained = append(obtained, host)
			} else {
				failed = append(failed, host)
			}
		}
	})
	g.mgr.Store(m)
	g.start(t, lns)

	// Both are ordered at start, with no handshake asking for them.
	err = testutil.Poll(3*time.Minute, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(failed) > 0 {
			return nil
		}
		if !slices.Contains(obtained, wildcard) || !slices.Contains(obtained, zone) {
			return fmt.Errorf("obtained %q", obtained)
		}
		return nil
	})
	mu.Lock()
	if err != nil || len(failed) > 0 {
		t.Fatalf("certificates not obtained: %v, failed %q", err, failed)
	}
	mu.Unlock()
	if n := logs.count("certificate obtained"); n != 2 {
		t.Errorf("%d \"certificate obtained\" lines, want 2", n)
	}
	orders := p.Orders()
	t.Logf("checked: %s and %s obtained at start through DNS-01 (%d orders), OnCertificate told of both", wildcard, zone, orders)

	// Handshakes: served from the cache, verified against the CA's root.
	// The cache is filled just after the order ends: poll.
	var leaf *x509.Certificate
	if err := testutil.Poll(30*time.Second, func() error {
		var err error
		leaf, err = dialName(t, g, "anything."+zone, roots)
		return err
	}); err != nil {
		t.Fatalf("handshake for anything.%s: %v", zone, err)
	}
	if !slices.Contains(leaf.DNSNames, wildcard) {
		t.Fatalf("anything.%s got a certificate for %q, want %s", zone, leaf.DNSNames, wildcard)
	}
	other, err := dialName(t, g, "other."+zone, roots)
	if err != nil || other.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Fatalf("other.%s: %v, serial %v, want the wildcard's %v", zone, err, other, leaf.SerialNumber)
	}
	apex, err := dialName(t, g, zone, roots)
	if err != nil || !slices.Contains(apex.DNSNames, zone) {
		t.Fatalf("handshake for %s: %v", zone, err)
	}
	if n := p.Orders(); n != orders {
		t.Errorf("orders after the handshakes = %d, want %d: a name under the wildcard was ordered", n, orders)
	}
	if n := allowed.Load(); n != 0 {
		t.Errorf("Allow asked %d times for names the managed certificates cover", n)
	}
	// A name two labels down is not covered by the wildcard: it is an
	// on-demand name, which Allow refuses here.
	if _, err := dialName(t, g, "a.b."+zone, roots); err == nil {
		t.Errorf("a.b.%s got a certificate", zone)
	}
	if allowed.Load() == 0 {
		t.Error("Allow not asked about a name the wildcard does not cover")
	}
	t.Logf("checked: anything.%s and other.%s got the wildcard certificate (SANs %q) verified against the CA's root, %s its own, with no new order", zone, zone, leaf.DNSNames, zone)

	if g.alpnChallenges.Load() != 0 {
		t.Errorf("%d TLS-ALPN-01 challenges reached the gateway", g.alpnChallenges.Load())
	}
	// The challenge records were cleaned up.
	if err := testutil.Poll(30*time.Second, func() error {
		if out := strings.TrimSpace(ns.Dig(t, "+short", "_acme-challenge."+zone, "TXT")); out != "" {
			return fmt.Errorf("_acme-challenge.%s TXT = %q", zone, out)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	t.Log("checked: no TLS-ALPN-01 challenge reached the gateway; the challenge TXT records are gone (dig)")
}

// TestDNS01RefusedUpdateFailsOrderAndCloseEnds has the DNS-01 provider use
// a key the server does not accept: the order fails with the server's
// refusal in the log and OnCertificate is told; Close then ends the
// background retries at once, leaving no goroutine behind.
func TestDNS01RefusedUpdateFailsOrderAndCloseEnds(t *testing.T) {
	b := make([]byte, 4)
	rand.Read(b)
	zone := fmt.Sprintf("f%x.test", b)
	ns := dnstest.Start(t, zone)
	client, err := dnsupdate.New(dnsupdate.Options{
		Server:  ns.Addr,
		Zone:    zone,
		TSIG:    &dnsupdate.TSIG{Name: "not-the-key", Secret: ns.Secret},
		Timeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	g, lns := newGateway(t, false)
	p := pebbletest.StartWithOptions(t, closedPort(t), closedPort(t), pebbletest.Options{DNSServer: ns.Addr})
	g.start(t, lns)
	baseline := goleak.IgnoreCurrent()

	var failed atomic.Int64
	logs := newRecorder(t)
	var logBuf testutil.Buffer
	m, err := New(Config{
		CA:           p.DirectoryURL,
		RootCAs:      p.RootCAs,
		Dir:          t.TempDir(),
		Allow:        allowHost(nil),
		DNS01:        client.Provider(),
		DNSResolvers: []string{ns.Addr},
		Names:        []string{zone},
		Logger:       slog.New(teeHandler{logs, slog.NewTextHandler(&logBuf, nil)}),
		OnCertificate: func(host string, ok bool) {
			if !ok && host == zone {
				failed.Add(1)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	g.mgr.Store(m)
	if err := testutil.Poll(2*time.Minute, func() error {
		if failed.Load() == 0 {
			return errors.New("no failed order reported")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if logs.count("certificate order failed") == 0 || !strings.Contains(logBuf.String(), "NOTAUTH") {
		t.Fatalf("the failure is not logged with the server's refusal:\n%s", logBuf.String())
	}
	if _, err := dialName(t, g, zone, nil); err == nil {
		t.Fatal("handshake succeeded with no certificate")
	}
	t.Log("checked: a refused DNS update fails the order, logged with NOTAUTH, OnCertificate told; no certificate served")

	start := time.Now()
	m.Close()
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("Close took %v", took)
	}
	p.CloseClientConnections()
	if err := findLeaks(baseline, ignoreRateLimiter); err != nil {
		t.Error(err)
	}
	t.Log("checked: Close ended the background retries; no goroutine left")
}

// teeHandler sends records to two handlers.
type teeHandler struct{ a, b slog.Handler }

func (h teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.a.Enabled(ctx, l) || h.b.Enabled(ctx, l)
}

func (h teeHandler) Handle(ctx context.Context, r slog.Record) error {
	if h.a.Enabled(ctx, r.Level) {
		h.a.Handle(ctx, r.Clone())
	}
	if h.b.Enabled(ctx, r.Level) {
		h.b.Handle(ctx, r.Clone())
	}
	return nil
}

func (h teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return teeHandler{h.a.WithAttrs(as), h.b.WithAttrs(as)}
}

func (h teeHandler) WithGroup(name string) slog.Handler {
	return teeHandler{h.a.WithGroup(name), h.b.WithGroup(name)}
}

// TestDNS01OnDemand has both listener challenges off and a DNS-01
// provider without Names: a name Allow accepts is ordered on demand, in
// the handshake, through DNS-01.
func TestDNS01OnDemand(t *testing.T) {
	b := make([]byte, 4)
	rand.Read(b)
	zone := fmt.Sprintf("o%x.test", b)
	name := "app." + zone
	ns := dnstest.Start(t, zone)
	client, err := dnsupdate.New(dnsupdate.Options{
		Server:  ns.Addr,
		Zone:    zone,
		TSIG:    &dnsupdate.TSIG{Name: ns.KeyName, Algorithm: ns.KeyAlgorithm, Secret: ns.Secret},
		Timeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	g, lns := newGateway(t, false)
	p := pebbletest.StartWithOptions(t, closedPort(t), closedPort(t), pebbletest.Options{DNSServer: ns.Addr})
	roots := p.IssuerRoots(t)
	m, _ := newManager(t, g, p, t.TempDir(), func(c *Config) {
		c.Allow = func(_ context.Context, host string) error {
			if host != name {
				return errors.New("unknown host")
			}
			return nil
		}
		c.DisableHTTP01 = true
		c.DisableTLSALPN01 = true
		c.DNS01 = client.Provider()
		c.DNSResolvers = []string{ns.Addr}
	})
	g.mgr.Store(m)
	g.start(t, lns)

	leaf, err := dialName(t, g, name, roots)
	if err != nil {
		t.Fatalf("handshake for %s: %v", name, err)
	}
	if !slices.Equal(leaf.DNSNames, []string{name}) || p.Orders() != 1 {
		t.Fatalf("got a certificate for %q after %d orders, want %s after 1", leaf.DNSNames, p.Orders(), name)
	}
	if g.alpnChallenges.Load() != 0 {
		t.Errorf("%d TLS-ALPN-01 challenges reached the gateway", g.alpnChallenges.Load())
	}
	t.Logf("checked: %s ordered on demand through DNS-01 alone, verified against the CA's root", name)
}
