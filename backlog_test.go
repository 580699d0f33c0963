package diglett_test

import (
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/testutil"
)

// TestBacklogGrace: a visitor that finds the accept backlog full waits
// for room. Accepted within the grace, it is served; otherwise it is
// refused as busy, once the grace (half a second) has passed.
func TestBacklogGrace(t *testing.T) {
	noLeaks(t)
	g := startFakeGateway(t, diglett.TransportTCP, nil)
	var logs testutil.Buffer
	cfg := g.config(t, diglett.TransportTCP)
	cfg.Name, cfg.UDP, cfg.Backlog = "web", false, 1
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ln := listenUDP(t, cfg)
	fs := g.session(t)
	visitor := func(i int) protocol.StreamHeader {
		return protocol.StreamHeader{Name: "web", Visitor: fmt.Sprintf("198.51.100.%d:4000", i)}
	}
	waiting := func(n int) {
		t.Helper()
		if err := testutil.Poll(udpWait, func() error {
			if got := strings.Count(logs.String(), "accept backlog full: the visitor waits for room"); got < n {
				return fmt.Errorf("%d visitors waiting for room, want %d; log:\n%s", got, n, logs.String())
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	accept := func() net.Conn {
		t.Helper()
		got := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				t.Error(err)
			}
			got <- c
		}()
		select {
		case c := <-got:
			if c == nil {
				t.FailNow()
			}
			t.Cleanup(func() { c.Close() })
			return c
		case <-time.After(udpWait):
			t.Fatal("Accept returned nothing")
			return nil
		}
	}

	// Two visitors for a backlog of one: the second waits, and Accept
	// makes room for it in time.
	flows := []*fakeFlow{fs.start(t, visitor(1)), fs.start(t, visitor(2))}
	waiting(1)
	for range flows {
		if _, err := accept().Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	for i, f := range flows {
		if s := f.status(t); s != protocol.StatusOK {
			t.Fatalf("visitor %d: status %v, want ok", i+1, s)
		}
	}
	if strings.Contains(logs.String(), "visitor refused") {
		t.Fatalf("a visitor was refused:\n%s", logs.String())
	}

	// Nobody accepts: of two more, one waits in the backlog and the
	// other is refused as busy after the grace.
	start := time.Now()
	flows = []*fakeFlow{fs.start(t, visitor(3)), fs.start(t, visitor(4))}
	statuses := make(chan protocol.Status, 2)
	for _, f := range flows {
		go func() {
			f.st.SetReadDeadline(time.Now().Add(udpWait))
			s, err := protocol.ReadStatus(f.st)
			if err != nil {
				return // the one still queued: no status before the deadline
			}
			statuses <- s
		}()
	}
	select {
	case s := <-statuses:
		if s != protocol.StatusBusy {
			t.Fatalf("status %v for a visitor beyond the backlog, want busy", s)
		}
		if d := time.Since(start); d < 500*time.Millisecond {
			t.Fatalf("refused %v after it came, before the grace of 500ms", d)
		}
	case <-time.After(udpWait):
		t.Fatal("neither visitor beyond the backlog was answered")
	}
	if !strings.Contains(logs.String(), "visitor refused: accept backlog full") {
		t.Fatalf("no warning for the refused visitor:\n%s", logs.String())
	}
	// The one in the backlog is still served.
	if _, err := accept().Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-statuses:
		if s != protocol.StatusOK {
			t.Fatalf("queued visitor: status %v, want ok", s)
		}
	case <-time.After(udpWait):
		t.Fatal("the queued visitor was not answered once accepted")
	}
}
