package certstore

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/testutil/etcdtest"
)

// lockKeys counts the holder and waiters of the lock name of s.
func lockKeys(t *testing.T, c *clientv3.Client, s *Storage, name string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Get(ctx, s.lockPrefix+url.PathEscape(name)+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

// leases counts the leases etcd has.
func leases(t *testing.T, c *clientv3.Client) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Leases)
}

// waitKeys polls until the lock name has n keys.
func waitKeys(t *testing.T, c *clientv3.Client, s *Storage, name string, n int64) {
	t.Helper()
	err := testutil.Poll(20*time.Second, func() error {
		if got := lockKeys(t, c, s, name); got != n {
			return fmt.Errorf("%d keys of lock %s, want %d", got, name, n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// lockAsync calls s.Lock(ctx, name) and returns the channel of its result.
func lockAsync(ctx context.Context, s *Storage, name string) <-chan error {
	got := make(chan error, 1)
	go func() { got <- s.Lock(ctx, name) }()
	return got
}

// result waits a bounded time for a result of lockAsync.
func result(t *testing.T, got <-chan error) error {
	t.Helper()
	select {
	case err := <-got:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("Lock did not return")
		return nil
	}
}

func notReturned(t *testing.T, got <-chan error, why string) {
	t.Helper()
	select {
	case err := <-got:
		t.Fatalf("Lock returned (%v) %s", err, why)
	default:
	}
}

func TestLockContention(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a := newStorage(t, srv.Client, Options{})
	b := newStorage(t, newClient(t, srv.Endpoint), Options{})
	c := newStorage(t, newClient(t, srv.Endpoint), Options{})
	const name = "issue_cert_contended.test"

	if err := a.Lock(ctx, name); err != nil {
		t.Fatal(err)
	}
	if ok, err := c.TryLock(ctx, name); ok || err != nil {
		t.Fatalf("TryLock of a held lock on another node: %v, %v", ok, err)
	}
	var released atomic.Bool
	got := lockAsync(ctx, b, name)
	waitKeys(t, srv.Client, a, name, 2) // b waits in line
	notReturned(t, got, "while another node held the lock")
	released.Store(true)
	if err := a.Unlock(ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := result(t, got); err != nil {
		t.Fatal(err)
	}
	if !released.Load() {
		t.Fatal("b took the lock before a released it")
	}
	t.Log("checked: the second node waited for the first to unlock, then took the lock; TryLock on a third said no")

	if err := a.Unlock(ctx, name); !errors.Is(err, ErrNotLocked) {
		t.Errorf("unlock of a released lock: %v, want ErrNotLocked", err)
	}
	if err := a.Unlock(ctx, "never_taken"); !errors.Is(err, ErrNotLocked) {
		t.Errorf("unlock of a lock never taken: %v, want ErrNotLocked", err)
	}

	// Within one node, the same lock excludes too.
	got = lockAsync(ctx, b, name)
	waitKeys(t, srv.Client, a, name, 2)
	notReturned(t, got, "while the same node held the lock")
	if err := b.Unlock(ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := result(t, got); err != nil {
		t.Fatal(err)
	}
	t.Log("checked: two callers on one node exclude each other")

	// Names with '/' are not prefixes of one another.
	if ok, err := c.TryLock(ctx, name+"/sub"); !ok || err != nil {
		t.Errorf("TryLock of a lock under a held one's name: %v, %v", ok, err)
	}
	if err := c.Unlock(ctx, name+"/sub"); err != nil {
		t.Error(err)
	}
	if err := b.Unlock(ctx, name); err != nil {
		t.Fatal(err)
	}
	if ok, err := c.TryLock(ctx, name); !ok || err != nil {
		t.Fatalf("TryLock of a free lock: %v, %v", ok, err)
	}
	if err := c.Unlock(ctx, name); err != nil {
		t.Fatal(err)
	}
	if n := lockKeys(t, srv.Client, a, name); n != 0 {
		t.Errorf("%d lock keys left", n)
	}
	if n := leases(t, srv.Client); n != 0 {
		t.Errorf("%d leases left", n)
	}
	t.Log("checked: TryLock of a free lock, nested names, no keys or leases left")
}

func TestLockFreedWhenNodeDies(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const ttl = 2 * time.Second
	const name = "issue_cert_dead.test"
	live := newStorage(t, srv.Client, Options{LockTTL: ttl})
	doomedClient := newClient(t, srv.Endpoint)
	doomed := newStorage(t, doomedClient, Options{LockTTL: ttl})

	if err := doomed.Lock(ctx, name); err != nil {
		t.Fatal(err)
	}
	got := lockAsync(ctx, live, name)
	waitKeys(t, srv.Client, live, name, 2)
	notReturned(t, got, "while the other node was alive")
	// The node dies: its client goes away without a word; nothing is
	// unlocked or revoked.
	killed := time.Now()
	doomedClient.Close()
	if err := result(t, got); err != nil {
		t.Fatal(err)
	}
	took := time.Since(killed)
	if margin := 5 * time.Second; took > ttl+margin {
		t.Errorf("the dead node's lock was freed after %v, want within %v + %v", took, ttl, margin)
	}
	t.Logf("checked: the lock of a node killed while holding it was freed %v later (lock TTL %v)", took.Round(time.Millisecond), ttl)
	if err := live.Unlock(ctx, name); err != nil {
		t.Fatal(err)
	}
}

func TestLockHonoursContext(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a := newStorage(t, srv.Client, Options{})
	b := newStorage(t, newClient(t, srv.Endpoint), Options{})
	const name = "issue_cert_ctx.test"

	if err := a.Lock(ctx, name); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	if err := b.Lock(short, name); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock until a deadline: %v, want the deadline", err)
	}
	ended, cancelEnded := context.WithCancel(ctx)
	cancelEnded()
	if err := b.Lock(ended, name); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock with an ended context: %v, want canceled", err)
	}
	if n := lockKeys(t, srv.Client, a, name); n != 1 {
		t.Errorf("%d lock keys after the waits ended, want the holder's only", n)
	}
	t.Log("checked: Lock returns when its context ends, leaving no waiter behind")

	// Close aborts a wait, and refuses new locks.
	got := lockAsync(ctx, b, name)
	waitKeys(t, srv.Client, a, name, 2)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := result(t, got); !errors.Is(err, ErrClosed) {
		t.Fatalf("Lock waiting at Close: %v, want ErrClosed", err)
	}
	if err := b.Lock(ctx, "other"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Lock after Close: %v, want ErrClosed", err)
	}
	if n := lockKeys(t, srv.Client, a, name); n != 1 {
		t.Errorf("%d lock keys after Close, want the holder's only", n)
	}

	// Close releases the locks held.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if n := lockKeys(t, srv.Client, a, name); n != 0 {
		t.Errorf("%d lock keys after the holder closed", n)
	}
	err := testutil.Poll(10*time.Second, func() error {
		if n := leases(t, srv.Client); n != 0 {
			return fmt.Errorf("%d leases left after the holder closed", n)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	t.Log("checked: Close aborts a waiting Lock, refuses new ones, releases held locks and revokes their leases")
}
