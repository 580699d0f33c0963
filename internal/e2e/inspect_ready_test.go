package e2e

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/diglett/diglett/internal/testutil"
)

// The agent's readiness follows its sessions: a gateway that goes away
// takes the agent out of service (/readyz 503, Listener.Sessions 0), and
// the agent is back in service once it has reconnected to a gateway
// started again on the same address with the same key.

// waitReadyz polls the inspector at base until /readyz answers want.
func waitReadyz(t *testing.T, base string, want int, within string) {
	t.Helper()
	err := testutil.Poll(3*eventually, func() error {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			return fmt.Errorf("/readyz %s: %d, want %d", within, resp.StatusCode, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestInspectorReadyFollowsSessions runs the agent command with the
// inspector, stops its gateway and starts it again.
func TestInspectorReadyFollowsSessions(t *testing.T) {
	parallel(t)
	g := startGateway(t, gatewayOptions{})
	_, base := startInspectedAgent(t, g, startEcho(t))
	waitReadyz(t, base, http.StatusOK, "with the tunnel registered")

	g.Close()
	waitReadyz(t, base, http.StatusServiceUnavailable, "with the gateway gone")

	g2 := startGateway(t, gatewayOptions{Addr: g.Addr, Key: g.Key})
	waitReadyz(t, base, http.StatusOK, "once the gateway is back")
	g2.Close()
	waitReadyz(t, base, http.StatusServiceUnavailable, "with the gateway gone again")
}

// TestListenerSessions checks the library's count of live sessions through
// the same outage, with two sessions to the gateway.
func TestListenerSessions(t *testing.T) {
	parallel(t)
	g := startGateway(t, gatewayOptions{})
	cfg := agentConfig(t, g, "web")
	cfg.Fingerprint = g.Fingerprint
	cfg.Connections = 2
	ln := mustListen(t, cfg)
	waitSessions := func(want int, when string) {
		t.Helper()
		err := testutil.Poll(3*eventually, func() error {
			if n := ln.Sessions(); n != want {
				return fmt.Errorf("%s: %d sessions, want %d", when, n, want)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	waitSessions(2, "connected")

	g.Close()
	waitSessions(0, "with the gateway gone")

	startGateway(t, gatewayOptions{Addr: g.Addr, Key: g.Key})
	waitSessions(2, "once the gateway is back")

	ln.Close()
	if n := ln.Sessions(); n != 0 {
		t.Errorf("after Close: %d sessions, want 0", n)
	}
}
