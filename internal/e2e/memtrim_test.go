package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/internal/testutil"
)

var trimLine = regexp.MustCompile(`msg="memory returned to the system after a burst of sessions" sessions=(\d+)`)

// TestGatewayReturnsMemoryAfterBurst: the server command returns memory
// to the system once a burst of agent logins and departures is over, and
// says so in its debug log.
func TestGatewayReturnsMemoryAfterBurst(t *testing.T) {
	parallel(t)
	lo, hi := randomPortWindow()
	s := startServerCommand(t, "-l", "127.0.0.1:0", "--no-quic", "--data-dir", t.TempDir(),
		"--ports", fmt.Sprintf("%d-%d", lo, hi), "--public-bind", "127.0.0.1", "--log-level", "debug")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	// 32 agents log in, then leave: 64 session events, the least that
	// makes a trim.
	var lns []*diglett.Listener
	for i := range 32 {
		ctx, cancel := context.WithTimeout(t.Context(), eventually)
		ln, err := diglett.Listen(ctx, diglett.Config{
			Gateway: s.Addr, Fingerprint: s.Fingerprint, Name: fmt.Sprintf("burst%02d", i),
			Transport: diglett.TransportTCP, Connections: 1, Logger: log,
		})
		cancel()
		if err != nil {
			t.Fatalf("agent %d: %v", i, err)
		}
		lns = append(lns, ln)
	}
	if trimLine.MatchString(s.stderr.String()) {
		t.Fatalf("memory trimmed before the burst was over:\n%s", &s.stderr)
	}
	for _, ln := range lns {
		ln.Close()
	}
	start := time.Now()
	var m []string
	if err := testutil.Poll(eventually, func() error {
		if m = trimLine.FindStringSubmatch(s.stderr.String()); m == nil {
			return errors.New("no trim logged")
		}
		return nil
	}); err != nil {
		t.Fatalf("%v:\n%s", err, &s.stderr)
	}
	// 64, or more if an agent's session was replaced on the way.
	if n, _ := strconv.Atoi(m[1]); n < 64 {
		t.Errorf("trim after %d session events, want 64 at least: %s", n, m[0])
	}
	t.Logf("trimmed %v after the last agent left: %s", time.Since(start).Round(time.Millisecond), m[0])
}
