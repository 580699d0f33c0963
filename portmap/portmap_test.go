package portmap_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/testutil/routertest"
	"github.com/diglett/diglett/portmap"
)

// listed reports whether the router's list, as the UPnP client program
// prints it, has a forward of proto port to the test's address.
func listed(t *testing.T, r *routertest.Router, proto string, port uint16) bool {
	t.Helper()
	want := fmt.Sprintf("%s %5d->%s:%d ", strings.ToUpper(proto), port, r.Client, port)
	out := r.Upnpc(t, "-l")
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(strings.Join(strings.Fields(line), " "), strings.Join(strings.Fields(want), " ")+" ") {
			return true
		}
	}
	if !strings.Contains(out, "ExternalIPAddress") {
		t.Fatalf("upnpc -l did not reach the router: %s", out)
	}
	return false
}

func discover(t *testing.T, r *routertest.Router, proto string) portmap.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	res, err := portmap.Discover(ctx, portmap.Options{Protocol: proto, Gateway: r.LAN})
	if err != nil {
		t.Fatalf("discover %s: %v\nrouter log:\n%s", proto, err, r.Log)
	}
	return res
}

// exercise maps a TCP and a UDP port, checks them with the UPnP client
// program, unmaps them and checks they are gone, then maps one with a
// short lifetime and waits for the router to drop it.
func exercise(t *testing.T, r *routertest.Router, m portmap.Mapper, base uint16) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i, proto := range []string{"tcp", "udp"} {
		port := base + uint16(i)
		got, err := m.Map(ctx, portmap.Mapping{Proto: proto, InternalPort: port, Lifetime: time.Hour, Description: "diglett test"})
		if err != nil {
			t.Fatalf("map: %v\nrouter log:\n%s", err, r.Log)
		}
		if got.ExternalPort != port || got.Lifetime <= 0 {
			t.Fatalf("map %s %d: granted %+v", proto, port, got)
		}
		if !listed(t, r, proto, port) {
			t.Fatalf("%s %d not in the router's list: %s", proto, port, r.Upnpc(t, "-l"))
		}
		t.Logf("%s: %s %d mapped (granted %v) and listed by the router", m.Protocol(), proto, port, got.Lifetime)
		if err := m.Unmap(ctx, got); err != nil {
			t.Fatalf("unmap: %v", err)
		}
		if listed(t, r, proto, port) {
			t.Fatalf("%s %d still listed after unmap", proto, port)
		}
		t.Logf("%s: %s %d unmapped and gone from the router's list", m.Protocol(), proto, port)
	}

	port := base + 2
	if _, err := m.Map(ctx, portmap.Mapping{Proto: "tcp", InternalPort: port, Lifetime: 3 * time.Second}); err != nil {
		t.Fatalf("map short: %v", err)
	}
	if !listed(t, r, "tcp", port) {
		t.Fatalf("tcp %d (3s) not listed", port)
	}
	start := time.Now()
	err := testutil.Poll(30*time.Second, func() error {
		if listed(t, r, "tcp", port) {
			return fmt.Errorf("tcp %d still listed", port)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("mapping with a 3s lifetime: %v", err)
	}
	t.Logf("%s: tcp %d with a 3s lifetime dropped by the router after %v", m.Protocol(), port, time.Since(start).Round(100*time.Millisecond))
}

func TestUPnP(t *testing.T) {
	t.Parallel()
	r := routertest.Start(t, routertest.Options{})
	res := discover(t, r, portmap.ProtocolUPnP)
	if res.Mapper.Protocol() != portmap.ProtocolUPnP || res.ExternalIP != r.WAN {
		t.Fatalf("discover: %s %v, want upnp %v", res.Mapper.Protocol(), res.ExternalIP, r.WAN)
	}
	t.Logf("upnp: router at %v found, external address %v", r.LAN, res.ExternalIP)
	exercise(t, r, res.Mapper, 41000)
}

func TestNATPMP(t *testing.T) {
	t.Parallel()
	r := routertest.Start(t, routertest.Options{})
	res := discover(t, r, portmap.ProtocolNATPMP)
	if res.Mapper.Protocol() != portmap.ProtocolNATPMP || res.ExternalIP != r.WAN {
		t.Fatalf("discover: %s %v, want natpmp %v", res.Mapper.Protocol(), res.ExternalIP, r.WAN)
	}
	if out := r.Natpmpc(t); !strings.Contains(out, "Public IP address : "+r.WAN.String()) {
		t.Fatalf("natpmpc does not agree on the external address: %s", out)
	}
	t.Logf("natpmp: router at %v answered, external address %v (as natpmpc says)", r.LAN, res.ExternalIP)
	exercise(t, r, res.Mapper, 42000)
}

func TestAutoPrefersUPnP(t *testing.T) {
	t.Parallel()
	r := routertest.Start(t, routertest.Options{})
	res := discover(t, r, portmap.ProtocolAuto)
	if res.Mapper.Protocol() != portmap.ProtocolUPnP {
		t.Fatalf("auto picked %s, want upnp", res.Mapper.Protocol())
	}
	t.Logf("auto: upnp answered first, external address %v", res.ExternalIP)
}
