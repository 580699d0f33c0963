package portmap_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/testutil/routertest"
	"github.com/diglett/diglett/portmap"
)

// tlog is a slog handler's writer that logs to t.
type tlog struct{ t *testing.T }

func (w tlog) Write(p []byte) (int, error) { w.t.Log(strings.TrimSpace(string(p))); return len(p), nil }

// TestKeeper checks, over both protocols, that a kept mapping with a 2s
// lifetime outlives it, comes back after the router drops it, and is
// deleted by Close.
func TestKeeper(t *testing.T) {
	t.Parallel()
	r := routertest.Start(t, routertest.Options{})
	for i, proto := range []string{portmap.ProtocolUPnP, portmap.ProtocolNATPMP} {
		res := discover(t, r, proto)
		k := portmap.NewKeeper(res.Mapper, portmap.KeeperOptions{Logger: slog.New(slog.NewTextHandler(tlog{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))})
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			k.Close(ctx)
		})
		port := uint16(43000 + i)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		// A lifetime long enough for a renewal due at its half to land on
		// a loaded machine, short enough to lapse within the check.
		if _, err := k.Add(ctx, portmap.Mapping{Proto: "tcp", InternalPort: port, Lifetime: 5 * time.Second}); err != nil {
			cancel()
			t.Fatalf("%s: add: %v", proto, err)
		}
		// Over two lifetimes: without renewal it would be gone by then.
		for end := time.Now().Add(12 * time.Second); time.Now().Before(end); {
			if !listed(t, r, "tcp", port) {
				cancel()
				t.Fatalf("%s: kept mapping tcp %d gone from the router", proto, port)
			}
			time.Sleep(200 * time.Millisecond) // sampling the router's list over time, not waiting for a condition
		}
		t.Logf("%s: tcp %d with a 5s lifetime still mapped after 12s", proto, port)

		// The router drops it (as after a reboot): the next refresh puts it back.
		// (It may be back before the list could show it gone: the
		// router's answer to the deletion is what proves it went.)
		if out := r.Upnpc(t, "-d", fmt.Sprint(port), "TCP"); !strings.Contains(out, "UPNP_DeletePortMapping() returned : 0") {
			cancel()
			t.Fatalf("%s: could not delete tcp %d on the router: %s", proto, port, out)
		}
		if err := testutil.Poll(10*time.Second, func() error {
			if !listed(t, r, "tcp", port) {
				return fmt.Errorf("tcp %d not back", port)
			}
			return nil
		}); err != nil {
			cancel()
			t.Fatalf("%s: %v", proto, err)
		}
		t.Logf("%s: tcp %d deleted on the router and put back by the keeper", proto, port)

		if err := k.Close(ctx); err != nil {
			cancel()
			t.Fatalf("%s: close: %v", proto, err)
		}
		cancel()
		if listed(t, r, "tcp", port) {
			t.Fatalf("%s: tcp %d still listed after Close", proto, port)
		}
		t.Logf("%s: Close deleted tcp %d", proto, port)
	}
}
