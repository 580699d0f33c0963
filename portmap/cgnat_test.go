package portmap_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil/routertest"
	"github.com/diglett/diglett/portmap"
)

// TestCGNATRouter runs the router with a WAN address from the
// carrier-grade NAT range: the router refuses to report it as external, and
// Discover still finds the router, with a zero external address that
// IsPrivate calls private, so the caller can warn.
func TestCGNATRouter(t *testing.T) {
	t.Parallel()
	r := routertest.Start(t, routertest.Options{CGNAT: true})
	wan := r.WAN
	if !portmap.IsPrivate(wan) {
		t.Fatalf("IsPrivate(%v) = false", wan)
	}
	for _, proto := range []string{portmap.ProtocolUPnP, portmap.ProtocolNATPMP} {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		res, err := portmap.Discover(ctx, portmap.Options{Protocol: proto, Gateway: r.LAN})
		if err != nil {
			cancel()
			t.Fatalf("%s: discover: %v\nrouter log:\n%s", proto, err, r.Log)
		}
		if res.Mapper.Protocol() != proto || !portmap.IsPrivate(res.ExternalIP) {
			cancel()
			t.Fatalf("%s: got %s with external address %v, want a private one", proto, res.Mapper.Protocol(), res.ExternalIP)
		}
		_, err = res.Mapper.ExternalIP(ctx)
		cancel()
		if !errors.Is(err, portmap.ErrNoExternalAddress) {
			t.Fatalf("%s: ExternalIP error %v, want ErrNoExternalAddress", proto, err)
		}
		t.Logf("%s: router with WAN %v found; it reports no usable external address (%v), IsPrivate true", proto, wan, err)
	}
}

func TestDiscoverNoRouter(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	// A loopback address no router listens on: both protocols time out.
	_, err := portmap.Discover(ctx, portmap.Options{Gateway: netip.MustParseAddr("127.0.0.9"), Timeout: 500 * time.Millisecond})
	if !errors.Is(err, portmap.ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("discover took %v with a 500ms timeout per protocol", d)
	}
	t.Logf("no router: %v after %v", err, time.Since(start).Round(10*time.Millisecond))
}
