package homenet

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/portmap"
)

// stallRouter grants every mapping, and once stalled holds every address
// query until its caller gives up, as a router that is slow to answer.
type stallRouter struct {
	mu       sync.Mutex
	mapped   map[uint16]bool
	stalled  bool
	queried  chan struct{} // a stalled query has begun
	unmapped []uint16
}

func (r *stallRouter) ExternalIP(ctx context.Context) (netip.Addr, error) {
	r.mu.Lock()
	stalled := r.stalled
	r.mu.Unlock()
	if stalled {
		select {
		case r.queried <- struct{}{}:
		default:
		}
		<-ctx.Done()
		return netip.Addr{}, ctx.Err()
	}
	return netip.MustParseAddr("203.0.113.9"), nil
}

func (r *stallRouter) Map(ctx context.Context, m portmap.Mapping) (portmap.Mapping, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mapped[m.InternalPort] = true
	return m, nil
}

// Unmap fails on an ended context, as a request to a real router does.
func (r *stallRouter) Unmap(ctx context.Context, m portmap.Mapping) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.mapped, m.InternalPort)
	r.unmapped = append(r.unmapped, m.InternalPort)
	return nil
}

func (r *stallRouter) Protocol() string { return portmap.ProtocolUPnP }

func (r *stallRouter) isMapped(port uint16) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mapped[port]
}

// Close that lands while a round waits on the router deletes the
// mappings: the round it cut short is not taken for a router gone, which
// used to drop the keeper and leave the mappings to lapse.
func TestCloseDuringRoundDeletesMappings(t *testing.T) {
	t.Parallel()
	r := &stallRouter{mapped: map[uint16]bool{}, queried: make(chan struct{}, 1)}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	found := func(context.Context, portmap.Options) (portmap.Result, error) {
		return portmap.Result{Mapper: r, ExternalIP: netip.MustParseAddr("203.0.113.9")}, nil
	}
	e, err := build(ctx, Options{NAT: &NATOptions{Protocol: portmap.ProtocolUPnP, Refresh: time.Second, Lifetime: time.Minute}}, found)
	if err != nil {
		t.Fatal(err)
	}
	e.Set(State{Ports: []Port{{Proto: "tcp", Port: 45101, Service: "agents"}}})
	if err := testutil.Poll(20*time.Second, func() error {
		if !r.isMapped(45101) {
			return errors.New("tcp 45101 not mapped")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	r.mu.Lock()
	r.stalled = true
	r.mu.Unlock()
	e.poke()
	select {
	case <-r.queried:
	case <-ctx.Done():
		t.Fatal("no round asked the router for its address")
	}
	if err := e.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if r.isMapped(45101) {
		t.Fatalf("tcp 45101 still mapped after Close (unmapped: %v)", r.unmapped)
	}
}
