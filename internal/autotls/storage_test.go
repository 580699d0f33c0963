package autotls

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/diglett/diglett/cluster/certstore"
	"github.com/diglett/diglett/internal/autotls/pebbletest"
	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/testutil/etcdtest"
)

// etcdStorage returns an etcd certificate storage for one node: a client
// of its own on endpoint, both closed when the test ends.
func etcdStorage(t *testing.T, endpoint, prefix string) *certstore.Storage {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := certstore.New(c, certstore.Options{Prefix: prefix, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestSharedStorage runs two certificate managers, two nodes of a cluster
// each with its own etcd client, on one etcd storage: a handshake on the
// first orders a certificate, a handshake for the same host on the second
// is served that certificate from etcd, with no second order.
func TestSharedStorage(t *testing.T) {
	srv := etcdtest.Start(t)
	b := make([]byte, 4)
	rand.Read(b)
	name := fmt.Sprintf("shared-%x.example.test", b) // certmagic shares orders by name process-wide
	const prefix = "/test/certs/"

	gA, lnsA := newGateway(t, true)
	gB, lnsB := newGateway(t, true)
	// The CA validates against node A's listeners.
	p := pebbletest.Start(t, port(t, gA.httpAddr), port(t, gA.httpsAddr))
	roots := p.IssuerRoots(t)
	allow := func(_ context.Context, host string) error {
		if host != name {
			return errors.New("unknown host")
		}
		return nil
	}
	newNode := func(g *gateway) *Manager {
		m, err := New(Config{
			CA:        p.DirectoryURL,
			RootCAs:   p.RootCAs,
			Storage:   etcdStorage(t, srv.Endpoint, prefix),
			Allow:     allow,
			HTTPAddr:  g.httpAddr,
			HTTPSAddr: g.httpsAddr,
			Logger:    testLogger(t),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		g.mgr.Store(m)
		return m
	}
	newNode(gA)
	newNode(gB)
	gA.start(t, lnsA)
	gB.start(t, lnsB)

	first, err := dialName(t, gA, name, roots)
	if err != nil {
		t.Fatalf("handshake on node A: %v", err)
	}
	if n := p.Orders(); n != 1 {
		t.Fatalf("orders after node A's handshake = %d, want 1", n)
	}
	t.Logf("node A obtained serial %s for %s", first.SerialNumber, name)

	// The account and the certificate are in etcd, not on a disk.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := srv.Client.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var crt, acct bool
	for _, kv := range resp.Kvs {
		k := strings.TrimPrefix(string(kv.Key), prefix)
		crt = crt || (strings.HasPrefix(k, "certificates/") && strings.HasSuffix(k, "/"+name+".crt"))
		acct = acct || (strings.HasPrefix(k, "acme/") && strings.Contains(k, "/users/") && strings.HasSuffix(k, ".key"))
	}
	if !crt || !acct {
		t.Fatalf("in etcd: certificate %v, account key %v, among %d keys", crt, acct, len(resp.Kvs))
	}

	second, err := dialName(t, gB, name, roots)
	if err != nil {
		t.Fatalf("handshake on node B: %v", err)
	}
	if !second.Equal(first) {
		t.Errorf("node B serves serial %s, want node A's %s", second.SerialNumber, first.SerialNumber)
	}
	if n := p.Orders(); n != 1 {
		t.Errorf("orders after node B's handshake = %d, want 1", n)
	}

	// The order's lock in etcd was released.
	err = testutil.Poll(10*time.Second, func() error {
		resp, err := srv.Client.Get(ctx, strings.TrimSuffix(prefix, "/")+".locks/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return err
		}
		if resp.Count != 0 {
			return fmt.Errorf("%d lock keys left", resp.Count)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	t.Logf("checked: account and certificate stored in etcd by node A; node B served the same certificate (serial %s) from etcd; %d order in all; no lock left", second.SerialNumber, p.Orders())
}
