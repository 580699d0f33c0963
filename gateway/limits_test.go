package gateway

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

func newTestLimits(max, perTunnel int) (*visitorLimits, *testutil.Buffer) {
	var logs testutil.Buffer
	l := newVisitorLimits(Config{MaxVisitors: max, MaxVisitorsPerTunnel: perTunnel,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	return l, &logs
}

func TestVisitorLimits(t *testing.T) {
	t.Parallel()
	l, logs := newTestLimits(3, 2)
	a, b := &tunnel{name: "a"}, &tunnel{name: "b"}
	visitor := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 1234}

	ra1 := l.acquireTCP(a, visitor)
	ra2 := l.acquireTCP(a, visitor)
	if ra1 == nil || ra2 == nil {
		t.Fatal("visitors below the caps refused")
	}
	if l.acquireTCP(a, visitor) != nil {
		t.Fatal("third visitor of a tunnel capped at 2 let in")
	}
	rb := l.acquireTCP(b, visitor)
	if rb == nil {
		t.Fatal("another tunnel's visitor refused below the gateway's cap")
	}
	if l.acquireTCP(b, visitor) != nil {
		t.Fatal("fourth visitor of a gateway capped at 3 let in")
	}
	if l.acquireGateway(visitor) {
		t.Fatal("HTTP connection beyond the gateway's cap let in")
	}
	if got := (visitorStats{Held: l.held.Load(), RefusedGateway: l.refusedGateway.Load(), RefusedTunnel: l.refusedTunnel.Load()}); got != (visitorStats{Held: 3, RefusedGateway: 2, RefusedTunnel: 1}) {
		t.Errorf("stats = %+v; want 3 held, 2 refused for the gateway, 1 for the tunnel", got)
	}
	// One line for the three refusals: the first; the others are counted
	// for the next line.
	if n := strings.Count(logs.String(), "visitor refused: too many visitors"); n != 1 {
		t.Errorf("%d refusal lines; want 1 within %v:\n%s", n, refusalLogInterval, logs)
	}
	if !strings.Contains(logs.String(), "limit=tunnel max=2 tunnel=a visitor=192.0.2.1:1234 suppressed=0") {
		t.Errorf("refusal line lacks its details:\n%s", logs)
	}
	l.warnMu.Lock()
	suppressed := l.suppressed
	l.warnNext = time.Time{} // the interval is over
	l.warnMu.Unlock()
	if suppressed != 2 {
		t.Errorf("suppressed = %d; want 2", suppressed)
	}
	l.acquireTCP(a, visitor)
	if !strings.Contains(logs.String(), "suppressed=2") {
		t.Errorf("the next line does not count the refusals held back:\n%s", logs)
	}

	// Slots come back.
	ra1()
	if r := l.acquireTCP(a, visitor); r == nil {
		t.Error("slot not given back")
	} else {
		r()
	}
	ra2()
	rb()
	if l.held.Load() != 0 || len(l.tunnels) != 0 {
		t.Errorf("after every release: %d held, %d tunnels tracked; want none", l.held.Load(), len(l.tunnels))
	}
}

// The HTTP ingress's listener resets connections beyond the gateway's cap
// at accept, and a closed connection gives its slot back.
func TestLimitListener(t *testing.T) {
	t.Parallel()
	l, _ := newTestLimits(2, 1)
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &limitListener{Listener: raw, l: l}
	defer ln.Close()
	accepted := make(chan net.Conn, 4)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	take := func() net.Conn {
		select {
		case c := <-accepted:
			return c
		case <-time.After(5 * time.Second):
			t.Fatal("connection below the cap not accepted")
			return nil
		}
	}
	dial()
	dial()
	s1, s2 := take(), take()
	defer s2.Close()
	// The reset may come before the dial returns.
	if extra, err := net.Dial("tcp", raw.Addr().String()); err == nil {
		extra.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(extra); err == nil || limitTestTimeout(err) {
			t.Errorf("connection beyond the cap: read %v; want it reset at accept", err)
		}
		extra.Close()
	}
	if err := waitUntil(5*time.Second, func() bool { return l.refusedGateway.Load() == 1 }); err != nil {
		t.Errorf("refused = %d; want 1", l.refusedGateway.Load())
	}
	s1.Close()
	s1.Close() // a second Close gives nothing back twice
	if got := l.held.Load(); got != 1 {
		t.Errorf("held = %d after closing one of two; want 1", got)
	}
	dial()
	take().Close()
	ln.Close()
	<-done
}

func limitTestTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// waitUntil polls cond until it holds or timeout passes.
func waitUntil(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("condition not met")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}
