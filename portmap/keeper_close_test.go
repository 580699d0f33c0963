package portmap_test

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/diglett/diglett/portmap"
)

// slowRouter plays a router that acts on a map request even when its
// client stops waiting: Map blocks until release is closed, ignores its
// context (as a router that already read the request does), and then
// holds the mapping.
type slowRouter struct {
	release chan struct{}
	started chan struct{}
	lose    bool // the answer is lost on the way back (a reset, say)
	mu      sync.Mutex
	held    map[uint16]bool
}

func (r *slowRouter) ExternalIP(context.Context) (netip.Addr, error) {
	return netip.MustParseAddr("11.0.0.1"), nil
}

func (r *slowRouter) Map(ctx context.Context, m portmap.Mapping) (portmap.Mapping, error) {
	select {
	case r.started <- struct{}{}:
	default:
	}
	<-r.release
	r.mu.Lock()
	r.held[m.InternalPort] = true
	r.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return portmap.Mapping{}, err // the client gave up: the answer is lost
	}
	if r.lose {
		return portmap.Mapping{}, errors.New("connection reset by peer")
	}
	return m, nil
}

func (r *slowRouter) Unmap(_ context.Context, m portmap.Mapping) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.held[m.InternalPort] {
		return errors.New("no such mapping")
	}
	delete(r.held, m.InternalPort)
	return nil
}

func (r *slowRouter) Protocol() string { return portmap.ProtocolUPnP }

func (r *slowRouter) holds(port uint16) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.held[port]
}

// A Set whose caller gives up while the router works on the request: the
// request still runs to its answer, and Close deletes what the router
// made, though the Set reported an error and nothing was granted.
func TestKeeperCloseDeletesMappingsWhoseAnswerWasCut(t *testing.T) {
	t.Parallel()
	r := &slowRouter{release: make(chan struct{}), started: make(chan struct{}, 1), held: map[uint16]bool{}}
	k := portmap.NewKeeper(r, portmap.KeeperOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	set := make(chan error, 1)
	go func() {
		set <- k.Set(ctx, []portmap.Mapping{{Proto: "tcp", InternalPort: 40001, Lifetime: time.Minute}})
	}()
	select {
	case <-r.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the keeper never asked the router")
	}
	cancel() // the caller stops waiting while the router works
	close(r.release)
	select {
	case err := <-set:
		t.Logf("Set returned %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Set hung after the router answered")
	}
	if !r.holds(40001) {
		t.Fatal("the router does not hold the mapping: the request was not run to its end")
	}
	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	if err := k.Close(cctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if r.holds(40001) {
		t.Fatal("tcp 40001 still held by the router after Close")
	}
}

// A map request the router acted on but whose answer was lost: nothing is
// granted, yet Close deletes it, and reports no error for it.
func TestKeeperCloseDeletesMappingsWhoseAnswerWasLost(t *testing.T) {
	t.Parallel()
	r := &slowRouter{release: make(chan struct{}), started: make(chan struct{}, 1), held: map[uint16]bool{}, lose: true}
	close(r.release)
	k := portmap.NewKeeper(r, portmap.KeeperOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := k.Set(ctx, []portmap.Mapping{{Proto: "udp", InternalPort: 40002, Lifetime: time.Minute}, {Proto: "tcp", InternalPort: 40003}}); err == nil {
		t.Fatal("Set reported no error for answers that were lost")
	}
	if len(k.Mappings()) != 0 {
		t.Fatalf("granted %v though no answer came", k.Mappings())
	}
	if !r.holds(40002) || !r.holds(40003) {
		t.Fatal("the router should hold both")
	}
	if err := k.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if r.holds(40002) || r.holds(40003) {
		t.Fatal("a mapping whose answer was lost is still held after Close")
	}
}
