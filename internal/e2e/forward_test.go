package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/diglett/diglett"
)

// startForward runs diglett.Forward on ln until the test ends; the
// returned channel receives what it returns.
func startForward(t *testing.T, ctx context.Context, ln *diglett.Listener, backend string, o diglett.ForwardOptions) <-chan error {
	done := make(chan error, 1)
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		done <- diglett.Forward(ctx, ln, backend, o)
	}()
	t.Cleanup(func() {
		ln.Close()
		<-returned
	})
	return done
}

// TestForwardDrainTimeout: when its context ends, Forward tells the
// gateway, waits for open connections up to DrainTimeout, then resets
// those still open (here half-closed visitors on a backend that never
// answers nor closes) and returns, its listener closed.
func TestForwardDrainTimeout(t *testing.T) {
	parallel(t)
	const drain = time.Second
	g := startGateway(t, gatewayOptions{})
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	eofs := silentBackend(t, bl)
	logger, logs := newLogger(t, "forward")
	ln := mustListen(t, agentConfig(t, g, "drain"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := startForward(t, ctx, ln, bl.Addr().String(), diglett.ForwardOptions{DrainTimeout: drain, Logger: logger})
	conns := halfClosedVisitors(t, ln.Addr().String(), 3, eofs)

	cancel()
	stopped := time.Now()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Forward returned %v; want nil", err)
		}
	case <-time.After(drain + promptly):
		t.Fatalf("Forward still running %v after its context ended (drain timeout %v)", drain+promptly, drain)
	}
	// A timer cannot fire early: returning sooner means the open relays
	// were not waited for.
	if took := time.Since(stopped); took < drain {
		t.Errorf("Forward returned %v after its context ended, before the drain timeout %v", took, drain)
	}
	for _, want := range []string{"shutting down: waiting for open connections", "drain time is up: closing the connections still open"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
	select {
	case <-ln.Done():
	case <-time.After(promptly):
		t.Error("listener still open after Forward returned")
	}
	for _, c := range conns {
		expectClosed(t, c, promptly)
	}
}

// TestForwardPerTunnelBackends: one listener serving several names sends
// each name's visitors to its own backend, chosen by Backends or by Dial;
// a name with no backend is refused.
func TestForwardPerTunnelBackends(t *testing.T) {
	checkLeaks(t)
	g := startGateway(t, gatewayOptions{})
	// Each backend says who it is and closes.
	backends := map[string]string{}
	for _, name := range []string{"web", "api"} {
		backends[name] = startBackend(t, func(c *net.TCPConn) { io.WriteString(c, "backend of "+name+"\n") })
	}
	var (
		mu     sync.Mutex
		dialed []string
	)
	dial := func(ctx context.Context, tunnel string) (net.Conn, error) {
		mu.Lock()
		dialed = append(dialed, tunnel)
		mu.Unlock()
		addr, ok := backends[tunnel]
		if !ok {
			return nil, fmt.Errorf("no backend for %s", tunnel)
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
	for _, tc := range []struct {
		name string
		o    diglett.ForwardOptions
	}{
		{"Backends", diglett.ForwardOptions{Backends: backends}},
		{"Dial", diglett.ForwardOptions{Dial: dial}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := agentConfig(t, g, "web")
			cfg.Names = []string{"api", "none"}
			ln := mustListen(t, cfg)
			logger, logs := newLogger(t, "forward")
			tc.o.Logger = logger
			startForward(t, t.Context(), ln, "", tc.o)
			public := map[string]string{}
			for _, tun := range ln.Tunnels() {
				public[tun.Name] = tun.Addr.String()
			}
			for _, name := range []string{"web", "api", "web"} {
				c := dialVisitor(t, public[name])
				c.SetReadDeadline(time.Now().Add(promptly))
				got, err := io.ReadAll(c)
				if want := "backend of " + name + "\n"; string(got) != want {
					t.Errorf("visitor of %s got %q, %v; want %q", name, got, err, want)
				}
			}
			expectTurnedAway(t, public["none"])
			waitFor(t, "forward log", logs, "backend refused the connection")
		})
	}
	mu.Lock()
	defer mu.Unlock()
	if got, want := strings.Join(dialed, ","), "web,api,web,none"; got != want {
		t.Errorf("Dial called for %s; want %s", got, want)
	}
}

// TestForwardBackendDown: a visitor whose backend is down has its
// connection reset, and the tunnel serves again once the backend is up.
func TestForwardBackendDown(t *testing.T) {
	checkLeaks(t)
	g := startGateway(t, gatewayOptions{})
	backend := unusedAddr(t)
	logger, logs := newLogger(t, "forward")
	ln := mustListen(t, agentConfig(t, g, "down"))
	startForward(t, t.Context(), ln, backend, diglett.ForwardOptions{Logger: logger})

	// The visitor is reset: after its dial returned, or before.
	var n int64
	c, err := net.DialTimeout("tcp", ln.Addr().String(), promptly)
	if err == nil {
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(promptly))
		n, err = io.Copy(io.Discard, c)
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("visitor of a tunnel whose backend is down: got %d bytes, %v; want a reset", n, err)
	}
	waitFor(t, "forward log", logs, "backend refused the connection")
	if !strings.Contains(logs.String(), backend) {
		t.Errorf("log does not name the backend %s:\n%s", backend, logs)
	}

	bl, err := net.Listen("tcp", backend)
	if err != nil {
		t.Fatal(err)
	}
	serveEcho(t, bl)
	mustRoundTrip(t, ln.Addr().String(), "backend is back")
}
