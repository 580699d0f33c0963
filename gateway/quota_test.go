package gateway

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestSessionQuota: sessions are counted per identity up to the limit,
// and released; a negative limit is no limit.
func TestSessionQuota(t *testing.T) {
	t.Parallel()
	q := newQuotas()
	for range 2 {
		if err := q.addSession("alice", 2); err != nil {
			t.Fatal(err)
		}
	}
	err := q.addSession("alice", 2)
	if err == nil || !strings.Contains(err.Message, `identity "alice" has reached its quota of 2 agent sessions`) {
		t.Fatalf("third session: %v", err)
	}
	if err := q.addSession("bob", 2); err != nil {
		t.Fatalf("another identity: %v", err)
	}
	q.removeSession("alice")
	if err := q.addSession("alice", 2); err != nil {
		t.Fatalf("after one left: %v", err)
	}
	for range 100 {
		if err := q.addSession("unlimited", -1); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		q.removeSession("alice")
	}
	q.removeSession("bob")
	if _, ok := q.sessions["alice"]; ok || len(q.sessions) != 1 {
		t.Errorf("entries left at zero: %v", q.sessions)
	}
}

// TestCertOrderQuotaWindow: each host counts once per sliding hour; the limit
// frees up as orders leave the window; the refusal says when.
func TestCertOrderQuotaWindow(t *testing.T) {
	t.Parallel()
	q := newQuotas()
	t0 := time.Unix(1_000_000, 0)
	for i, host := range []string{"a", "b", "a", "b"} {
		if err := q.allowOrder("alice", host, 2, t0.Add(time.Duration(i)*time.Minute)); err != nil {
			t.Fatalf("order %d (%s): %v", i, host, err)
		}
	}
	err := q.allowOrder("alice", "c", 2, t0.Add(10*time.Minute))
	if err == nil || !strings.Contains(err.Error(), "quota of 2 certificate orders per hour (next in 50m0s)") {
		t.Fatalf("third host: %v", err)
	}
	if err := q.allowOrder("bob", "c", 2, t0.Add(10*time.Minute)); err != nil {
		t.Fatalf("another identity: %v", err)
	}
	// An hour after "a", it leaves the window and "c" fits.
	if err := q.allowOrder("alice", "c", 2, t0.Add(time.Hour)); err != nil {
		t.Fatalf("after the window: %v", err)
	}
	if err := q.allowOrder("alice", "d", -1, t0.Add(time.Hour)); err != nil {
		t.Fatalf("no limit: %v", err)
	}
	// A quota of 0 refuses every order, with no order in the window to
	// tell the next one from (it once panicked there).
	if err := q.allowOrder("carol", "e", 0, t0); err == nil || !strings.Contains(err.Error(), "its quota is 0 per hour") {
		t.Fatalf("quota 0: %v", err)
	}
}

// TestCertOrderSweep: identities whose orders all left the window are
// forgotten once many identities have ordered.
func TestCertOrderSweep(t *testing.T) {
	t.Parallel()
	q := newQuotas()
	t0 := time.Unix(1_000_000, 0)
	for i := range sweepAbove + 10 {
		if err := q.allowOrder("id-"+strconv.Itoa(i), "h", 1, t0); err != nil {
			t.Fatal(err)
		}
	}
	q.allowOrder("late", "h", 1, t0.Add(2*time.Hour))
	if n := len(q.orders); n != 1 {
		t.Errorf("%d identities remembered two hours later, want 1", n)
	}
}
