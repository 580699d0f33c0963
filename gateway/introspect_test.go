package gateway

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/diglett/diglett/internal/protocol"
)

func TestIntrospectAndActions(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	auth := &tableAuth{
		ids:   map[string]string{"secret-a": "alice", "secret-b": "bob"},
		names: map[string][]string{"alice": {"web", "api"}, "bob": {"api"}},
	}
	srv, addr, logs := reloadServer(t, auth)
	a1 := mustLogin(t, addr, "secret-a", "web", "api")
	a2 := mustLogin(t, addr, "secret-a", "web")

	agents := srv.Agents()
	if len(agents) != 2 || agents[0].Identity != "alice" || agents[0].Transport != "tcp" ||
		!slices.Equal(agents[0].Names, []string{"api", "web"}) || !slices.Equal(agents[1].Names, []string{"web"}) ||
		agents[0].ID >= agents[1].ID || time.Since(agents[0].Since) > time.Minute {
		t.Fatalf("agents: %+v", agents)
	}
	first := agents[0].ID
	tunnels := srv.Tunnels()
	if len(tunnels) != 2 || tunnels[0].Name != "api" || tunnels[1].Name != "web" {
		t.Fatalf("tunnels: %+v", tunnels)
	}
	web := tunnels[1]
	if web.State != StateLive || web.Identity != "alice" || web.Port < 20000 || len(web.Members) != 2 ||
		web.Members[0].Session != first || web.Members[1].Session != agents[1].ID || !web.LeaseEnds.IsZero() ||
		web.Hosts == nil || len(web.Hosts) != 0 {
		t.Fatalf("web: %+v", web)
	}
	if l := srv.Leases(); len(l) != 0 {
		t.Fatalf("leases: %+v", l)
	}

	// The first session goes: it is told why, in printable text, and
	// closed; api, which only it served, is leased, web goes on.
	if err := srv.Disconnect(first, "bye\x1b[31m"); err != nil {
		t.Fatal(err)
	}
	a1.expectRevoked(t, protocol.CodeShuttingDown, ReasonDisconnected+`: bye\x1b[31m`)
	a2.expectAlive(t)
	if err := srv.Disconnect(first, ""); !errors.Is(err, ErrNoSession) {
		t.Fatalf("second disconnect: %v", err)
	}
	if err := srv.Disconnect(12345, ""); !errors.Is(err, ErrNoSession) {
		t.Fatalf("unknown session: %v", err)
	}
	if !strings.Contains(logs.String(), `msg="agent session closed by the operator"`) {
		t.Errorf("no log line of the disconnect:\n%s", logs)
	}
	leases := srv.Leases()
	if len(leases) != 1 || leases[0].Name != "api" || leases[0].Identity != "alice" || time.Until(leases[0].Ends) < 30*time.Second {
		t.Fatalf("leases: %+v", leases)
	}
	if tn := srv.Tunnels(); tn[0].State != StateLeased || tn[0].LeaseEnds != leases[0].Ends || len(tn[0].Members) != 0 ||
		tn[1].State != StateLive || len(tn[1].Members) != 1 {
		t.Fatalf("tunnels: %+v", tn)
	}

	// bob cannot take api under alice's lease, and can once it is
	// released.
	if _, err := rawLogin(t, addr, "secret-b", "api"); err == nil {
		t.Fatal("bob took a leased name")
	}
	if err := srv.ReleaseLease("web"); !errors.Is(err, ErrTunnelLive) {
		t.Fatalf("release of a live tunnel: %v", err)
	}
	if err := srv.ReleaseLease("nope"); !errors.Is(err, ErrNoTunnel) {
		t.Fatalf("release of nothing: %v", err)
	}
	if err := srv.ReleaseLease("api"); err != nil {
		t.Fatal(err)
	}
	if l := srv.Leases(); len(l) != 0 {
		t.Fatalf("leases after the release: %+v", l)
	}
	mustLogin(t, addr, "secret-b", "api")
	if tn := srv.Tunnels(); tn[0].Name != "api" || tn[0].Identity != "bob" || tn[0].State != StateLive {
		t.Fatalf("tunnels: %+v", tn)
	}
}

// Listings and disconnects run beside logins, reloads and leaves
// without a data race (go test -race) or a deadlock.
func TestIntrospectRaces(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	auth := &tableAuth{
		ids:   map[string]string{"secret-a": "alice"},
		names: map[string][]string{"alice": {"web"}},
	}
	srv, addr, _ := reloadServer(t, auth)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			for _, a := range srv.Agents() {
				srv.Disconnect(a.ID, "race")
			}
			srv.Tunnels()
			srv.Leases()
		}
	}()
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			srv.Recheck(ctx)
		}
	}()
	for range 20 {
		if a, err := rawLogin(t, addr, "secret-a", "web"); err == nil {
			a.sess.Close()
		}
	}
	cancel()
	wg.Wait()
	// Every session ends; the tunnel is leased.
	err := waitUntil(10*time.Second, func() bool { return len(srv.Agents()) == 0 })
	if err != nil {
		t.Fatalf("sessions left: %+v", srv.Agents())
	}
}
