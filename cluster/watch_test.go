package cluster

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/testutil/etcdtest"
)

// waitClaims waits until every member lists want (NAME:HOLDER,HOLDER ...).
func waitClaims(t *testing.T, want []string, ms ...*Member) {
	t.Helper()
	if err := testutil.Poll(testTTL+margin, func() error {
		for _, m := range ms {
			var got []string
			for _, c := range m.Claims() {
				got = append(got, fmt.Sprintf("%s:%s:%d:%v", c.Name, c.Identity, c.Port, c.Holders))
			}
			if !slices.Equal(got, want) {
				return fmt.Errorf("%s lists %v, want %v", m.ID(), got, want)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// Every member follows which names are served and by which nodes: holds,
// unholds and a node that dies without a word.
func TestClaimsWatch(t *testing.T) {
	etcd := etcdtest.Start(t)
	eps := []string{etcd.Endpoint}
	log := logs(t)
	a := join(t, eps, "a", log)
	b := join(t, eps, "b", log)
	ctx := context.Background()
	if _, err := a.Hold(ctx, "web", "alice", 30001, 30000, 30010); err != nil {
		t.Fatal(err)
	}
	waitClaims(t, []string{"web:alice:30001:[a]"}, a, b)
	select {
	case <-b.ClaimChanges():
	case <-time.After(time.Second):
		t.Fatal("no change signalled")
	}
	if _, err := b.Hold(ctx, "web", "alice", 0, 30000, 30010); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Hold(ctx, "api", "bob", 0, 30000, 30000); err != nil {
		t.Fatal(err)
	}
	waitClaims(t, []string{"api:bob:30000:[b]", "web:alice:30001:[a b]"}, a, b)
	if err := a.Unhold(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	waitClaims(t, []string{"api:bob:30000:[b]", "web:alice:30001:[b]"}, a, b)
	t.Logf("holds and an unhold seen by both members")

	// b dies: its holds go with its lease; the names stay claimed, held
	// by no node, until released.
	start := time.Now()
	b.abandon()
	waitClaims(t, []string{"api:bob:30000:[]", "web:alice:30001:[]"}, a)
	t.Logf("b killed: its claims left a's view %v later (TTL %v)", time.Since(start).Round(100*time.Millisecond), testTTL)
}
