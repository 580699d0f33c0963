package e2e

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett"

	"github.com/diglett/diglett/auth/allowall"
	"github.com/diglett/diglett/auth/tokens"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/identity"
)

// twoIdentities is a tokens authenticator with identities alice and bob,
// each allowed every name.
func twoIdentities(t *testing.T) *tokens.Tokens {
	t.Helper()
	tokens, err := tokens.New([]tokens.Entry{
		{Token: "alice-token", Identity: "alice", Names: []string{"*"}},
		{Token: "bob-token", Identity: "bob", Names: []string{"*"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return tokens
}

// TestLeasesSurviveRestart restarts the gateway while alice's agent is
// down: the new gateway reserves alice's name and port from the lease
// file, so bob can take neither before alice is back, and alice gets her
// port again.
func TestLeasesSurviveRestart(t *testing.T) {
	checkLeaks(t)
	tokens := twoIdentities(t)
	leases := filepath.Join(t.TempDir(), "leases.json")
	g1 := startGateway(t, gatewayOptions{Auth: tokens, Lease: time.Minute, LeaseFile: leases})
	echo := startEcho(t)

	alice := agentConfig(t, g1, "shop")
	alice.Token = "alice-token"
	ln := mustListen(t, alice)
	forward(t, ln, echo)
	port := ln.Addr().(diglett.Addr).Port
	mustRoundTrip(t, ln.Addr().String(), "before")

	// The gateway stops first, then alice's agent: nothing is left to
	// reconnect to, and alice is offline when the new gateway starts.
	g1.Close()
	ln.Close()
	fi, err := os.Stat(leases)
	if err != nil {
		t.Fatalf("no lease file after the gateway stopped: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("lease file mode %v, want 0600", fi.Mode().Perm())
	}

	g2 := startGateway(t, gatewayOptions{Auth: tokens, Lease: time.Minute, LeaseFile: leases,
		Key: g1.Key, Addr: g1.Addr, PortMin: g1.PortMin, PortMax: g1.PortMax})
	waitFor(t, "gateway", g2.Logs, "name and port reserved after restart")
	// Nobody serves the port meanwhile, but it is held: visitors are
	// turned away at once.
	expectTurnedAway(t, ln.Addr().String())

	bob := agentConfig(t, g2, "shop")
	bob.Token = "bob-token"
	bob.KnownGateways = alice.KnownGateways
	if _, err := listen(t, bob); !errors.Is(err, diglett.ErrNameTaken) {
		t.Fatalf("bob took alice's name after the restart: err = %v, want ErrNameTaken", err)
	}
	bob.Name = "other"
	bob.Port = port
	if _, err := listen(t, bob); !errors.Is(err, diglett.ErrPortUnavailable) {
		t.Fatalf("bob took alice's port %d after the restart: err = %v, want ErrPortUnavailable", port, err)
	}

	alice.Gateway = g2.Addr
	ln2 := mustListen(t, alice)
	forward(t, ln2, echo)
	if got := ln2.Addr().(diglett.Addr).Port; got != port {
		t.Fatalf("alice came back to port %d, had %d", got, port)
	}
	mustRoundTrip(t, ln2.Addr().String(), "after")
}

// TestRestoredLeaseExpires: a lease restored from the file ends at the
// time it was given, and the name is then free for anyone.
func TestRestoredLeaseExpires(t *testing.T) {
	checkLeaks(t)
	tokens := twoIdentities(t)
	dir := t.TempDir()
	leases := filepath.Join(dir, "leases.json")
	const lease = 2 * time.Second
	g1 := startGateway(t, gatewayOptions{Auth: tokens, Lease: lease, LeaseFile: leases})
	alice := agentConfig(t, g1, "brief")
	alice.Token = "alice-token"
	ln := mustListen(t, alice)
	g1.Close()
	ln.Close()

	g2 := startGateway(t, gatewayOptions{Auth: tokens, Lease: lease, LeaseFile: leases,
		Key: g1.Key, Addr: g1.Addr, PortMin: g1.PortMin, PortMax: g1.PortMax})
	bob := agentConfig(t, g2, "brief")
	bob.Token = "bob-token"
	bob.KnownGateways = alice.KnownGateways
	if _, err := listen(t, bob); !errors.Is(err, diglett.ErrNameTaken) {
		t.Fatalf("bob during the restored lease: err = %v, want ErrNameTaken", err)
	}
	waitFor(t, "gateway", g2.Logs, "lease expired, name and port released")
	mustListen(t, bob)
}

// TestBrokenLeaseFile: a lease file that exists but cannot be read or
// parsed stops the gateway at start with an error naming the file.
func TestBrokenLeaseFile(t *testing.T) {
	t.Parallel()
	cases := map[string]func(path string) error{
		"garbage":  func(p string) error { return os.WriteFile(p, []byte("{not json"), 0o600) },
		"version":  func(p string) error { return os.WriteFile(p, []byte(`{"version": 99, "leases": []}`), 0o600) },
		"dangling": func(p string) error { return os.Symlink(filepath.Join(filepath.Dir(p), "gone"), p) },
		"dir":      func(p string) error { return os.Mkdir(p, 0o700) },
	}
	for name, make := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "leases.json")
			if err := make(path); err != nil {
				t.Fatal(err)
			}
			cert, err := identity.SelfSigned(newKey(t), "localhost")
			if err != nil {
				t.Fatal(err)
			}
			tc := &tls.Config{Certificates: []tls.Certificate{cert}}
			_, err = gateway.New(gateway.Config{TLS: tc, Auth: allowall.Authenticator{}, LeaseFile: path})
			if err == nil || !strings.Contains(err.Error(), path) {
				t.Fatalf("gateway.New with a %s lease file: err = %v, want an error naming %s", name, err, path)
			}
		})
	}
}

// TestQuotas: an identity holds at most its quota of names and sessions,
// the refusal names the quota, a token's own quota overrides the default,
// and other identities are not affected.
func TestQuotas(t *testing.T) {
	checkLeaks(t)
	tokens, err := tokens.New([]tokens.Entry{
		{Token: "greedy-token", Identity: "greedy", Names: []string{"demo-*"}},
		{Token: "big-token", Identity: "big", Names: []string{"big-*"}, Quota: gateway.Quota{Names: 5, Sessions: -1}},
		{Token: "other-token", Identity: "other", Names: []string{"other"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, gatewayOptions{Auth: tokens, Quota: gateway.Quota{Names: 3, Sessions: 2}})

	greedy := agentConfig(t, g, "demo-1")
	greedy.Token = "greedy-token"
	greedy.Names = []string{"demo-2", "demo-3"}
	mustListen(t, greedy)

	// A fourth name, on a second session: refused, naming the quota.
	more := greedy
	more.Name, more.Names = "demo-4", nil
	_, err = listen(t, more)
	if !errors.Is(err, diglett.ErrQuotaExceeded) || !strings.Contains(err.Error(), "quota of 3 names") {
		t.Fatalf("fourth name: err = %v, want ErrQuotaExceeded naming the quota of 3 names", err)
	}
	// A second session that registers what greedy holds already is fine;
	// a third is over the session quota.
	mustListen(t, greedy)
	_, err = listen(t, greedy)
	if !errors.Is(err, diglett.ErrQuotaExceeded) || !strings.Contains(err.Error(), "quota of 2 agent sessions") {
		t.Fatalf("third session: err = %v, want ErrQuotaExceeded naming the quota of 2 sessions", err)
	}

	// Another identity still gets names and ports.
	other := agentConfig(t, g, "other")
	other.Token = "other-token"
	other.KnownGateways = greedy.KnownGateways
	ln := mustListen(t, other)
	if ln.Addr().(diglett.Addr).Port == 0 {
		t.Fatal("other identity got no port")
	}

	// The token's own quota: five names, and no session limit.
	big := agentConfig(t, g, "big-1")
	big.Token = "big-token"
	big.KnownGateways = greedy.KnownGateways
	big.Names = []string{"big-2", "big-3", "big-4", "big-5"}
	mustListen(t, big)
	for range 3 {
		mustListen(t, big)
	}
	big.Name, big.Names = "big-6", nil
	if _, err := listen(t, big); !errors.Is(err, diglett.ErrQuotaExceeded) || !strings.Contains(err.Error(), "quota of 5 names") {
		t.Fatalf("sixth big name: err = %v, want the quota of 5 names", err)
	}
}

// TestCertOrderQuota: certificates are ordered for at most the identity's
// quota of hosts per hour; a host already ordered does not count again.
func TestCertOrderQuota(t *testing.T) {
	checkLeaks(t)
	g := startGateway(t, gatewayOptions{Domain: "tunnels.test", Quota: gateway.Quota{CertOrdersPerHour: 2}})
	cfg := agentConfig(t, g, "c1")
	cfg.Names = []string{"c2", "c3"}
	mustListen(t, cfg)
	ctx := t.Context()
	for i, host := range []string{"c1.tunnels.test", "c2.tunnels.test", "c1.tunnels.test"} {
		if err := g.HostAllowed(ctx, host); err != nil {
			t.Fatalf("order %d for %s: %v", i+1, host, err)
		}
	}
	err := g.HostAllowed(ctx, "c3.tunnels.test")
	if err == nil || !strings.Contains(err.Error(), "quota of 2 certificate orders per hour") {
		t.Fatalf("third host: err = %v, want the certificate order quota", err)
	}
	if err := g.HostAllowed(ctx, "nosuch.tunnels.test"); err == nil {
		t.Fatal("a certificate for a host with no tunnel was allowed")
	}
}

// TestServeConn: a connection accepted by the embedding program and handed
// to the gateway is served like one of its own listener's.
func TestServeConn(t *testing.T) {
	checkLeaks(t)
	g := startGateway(t, gatewayOptions{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		ln.Close()
		if err != nil {
			served <- err
			return
		}
		served <- g.ServeConn(c)
	}()
	cfg := agentConfig(t, g, "handed")
	cfg.Gateway = ln.Addr().String()
	cfg.Fingerprint = g.Fingerprint
	cfg.MaxBackoff = time.Hour // one session, the one handed over
	al := mustListen(t, cfg)
	forward(t, al, startEcho(t))
	mustRoundTrip(t, al.Addr().String(), "through a handed-over connection")
	al.Close()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("ServeConn: %v", err)
		}
	case <-time.After(eventually):
		t.Fatal("ServeConn did not return after the agent left")
	}
}
