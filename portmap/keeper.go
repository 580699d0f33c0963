package portmap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// minRefresh is the shortest wait between two refreshes.
const minRefresh = time.Second

// refreshTimeout bounds one round of refreshes.
const refreshTimeout = 30 * time.Second

// opTimeout bounds one request to the router. A request once sent is
// never cut short by Close or by its caller's cancellation: a router may
// still act on a request whose client hung up, after a delete sent later,
// and leave a mapping no one keeps.
const opTimeout = 10 * time.Second

// key names a mapping in a Keeper: NAT-PMP names mappings by internal
// port, so the Keeper does too.
type key struct {
	proto string
	port  uint16
}

// Keeper keeps a set of mappings on a router: it renews each before it
// expires (at half its granted lifetime, or every KeeperOptions.Refresh
// when that is sooner), which also puts back a mapping the router dropped
// (after a reboot, say), and deletes them all on Close.
type Keeper struct {
	mapper Mapper
	log    *slog.Logger
	every  time.Duration
	// op serializes the calls to the router, so a refresh cannot put
	// back a mapping being removed.
	op sync.Mutex

	mu       sync.Mutex
	mappings map[key]Mapping // as asked for
	granted  map[key]Mapping // as granted by the router
	// asked holds the mappings asked of the router whose answer was
	// lost (an error): the router may hold them, so Close deletes them.
	asked  map[key]Mapping
	wake   chan struct{}
	closed bool

	stop context.CancelFunc
	done chan struct{}
}

// KeeperOptions shape a Keeper. The zero value is usable.
type KeeperOptions struct {
	// Refresh is the longest wait between two rounds of renewals; 0
	// means only at half of each mapping's granted lifetime. A mapping
	// the router dropped is put back at the next round, and one that
	// could not be made is tried again then.
	Refresh time.Duration
	// Logger receives refresh failures (Warn) and renewals (Debug); nil
	// discards them.
	Logger *slog.Logger
}

// NewKeeper starts a Keeper over m. Refresh failures are logged and
// retried at the next round.
func NewKeeper(m Mapper, o KeeperOptions) *Keeper {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	k := &Keeper{
		mapper:   m,
		log:      log,
		every:    o.Refresh,
		mappings: make(map[key]Mapping),
		granted:  make(map[key]Mapping),
		asked:    make(map[key]Mapping),
		wake:     make(chan struct{}, 1),
		stop:     cancel,
		done:     make(chan struct{}),
	}
	go k.run(ctx)
	return k
}

// Add maps m now and keeps it; it returns what the router granted.
func (k *Keeper) Add(ctx context.Context, m Mapping) (Mapping, error) {
	if err := check(m); err != nil {
		return Mapping{}, err
	}
	k.op.Lock()
	defer k.op.Unlock()
	k.mu.Lock()
	closed := k.closed
	k.mu.Unlock()
	if closed {
		return Mapping{}, errors.New("portmap: keeper closed")
	}
	got, err := k.mapOne(ctx, m)
	if err != nil {
		return Mapping{}, err
	}
	k.mu.Lock()
	id := key{m.Proto, m.InternalPort}
	k.mappings[id] = m
	k.granted[id] = got
	k.mu.Unlock()
	k.poke()
	return got, nil
}

// Remove stops keeping the mapping of m's protocol and internal port and
// deletes it from the router.
func (k *Keeper) Remove(ctx context.Context, m Mapping) error {
	id := key{m.Proto, m.InternalPort}
	k.op.Lock()
	defer k.op.Unlock()
	k.mu.Lock()
	got, ok := k.granted[id]
	lost, asked := k.asked[id]
	delete(k.mappings, id)
	delete(k.granted, id)
	delete(k.asked, id)
	k.mu.Unlock()
	if !ok {
		if asked {
			k.mapper.Unmap(ctx, lost) // most likely never made
		}
		return nil
	}
	return k.mapper.Unmap(ctx, got)
}

// Set makes want the whole set of mappings kept (the latest Set wins):
// mappings kept but not in want are deleted from the router, and those
// of want not yet granted, or asked for differently, are mapped now. A
// mapping the router refuses stays wanted and is tried again at the next
// round; the errors are returned joined.
func (k *Keeper) Set(ctx context.Context, want []Mapping) error {
	next := make(map[key]Mapping, len(want))
	for _, m := range want {
		if err := check(m); err != nil {
			return err
		}
		next[key{m.Proto, m.InternalPort}] = m
	}
	k.op.Lock()
	defer k.op.Unlock()
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return errors.New("portmap: keeper closed")
	}
	var gone []Mapping
	for id, got := range k.granted {
		if _, ok := next[id]; !ok {
			gone = append(gone, got)
			delete(k.granted, id)
		}
	}
	var todo []Mapping
	for id, m := range next {
		if _, ok := k.granted[id]; !ok || k.mappings[id] != m {
			todo = append(todo, m)
		}
	}
	k.mappings = next
	k.mu.Unlock()
	var errs []error
	for _, m := range gone {
		if err := k.mapper.Unmap(ctx, m); err != nil {
			errs = append(errs, err)
		}
	}
	for _, m := range todo {
		got, err := k.mapOne(ctx, m)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %d: %w", m.Proto, m.InternalPort, err))
			continue
		}
		k.mu.Lock()
		if k.mappings[key{m.Proto, m.InternalPort}] == m {
			k.granted[key{m.Proto, m.InternalPort}] = got
		}
		k.mu.Unlock()
	}
	k.poke()
	return errors.Join(errs...)
}

// Mappings returns the mappings kept, as last granted.
func (k *Keeper) Mappings() []Mapping {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]Mapping, 0, len(k.granted))
	for _, m := range k.granted {
		out = append(out, m)
	}
	return out
}

// Close stops refreshing and deletes every mapping kept from the router,
// within ctx, and those asked for whose answer was lost. Unlike a map, a
// delete cut short is harmless: the mapping lapses with its lifetime.
func (k *Keeper) Close(ctx context.Context) error {
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return nil
	}
	k.closed = true
	k.mu.Unlock()
	k.stop()
	<-k.done
	k.op.Lock()
	defer k.op.Unlock()
	k.mu.Lock()
	all, lost := k.granted, k.asked
	k.mappings, k.granted, k.asked = map[key]Mapping{}, map[key]Mapping{}, map[key]Mapping{}
	k.mu.Unlock()
	var errs []error
	for _, m := range all {
		if err := k.mapper.Unmap(ctx, m); err != nil {
			errs = append(errs, err)
		}
	}
	for id, m := range lost {
		if _, ok := all[id]; !ok {
			k.mapper.Unmap(ctx, m) // most likely never made: no error to report
		}
	}
	return errors.Join(errs...)
}

// poke makes the refresh loop recompute its next wake-up.
func (k *Keeper) poke() {
	select {
	case k.wake <- struct{}{}:
	default:
	}
}

// next returns how long to wait before the next refresh: half the
// shortest granted lifetime, or the refresh interval when sooner (or when
// a wanted mapping is not granted yet), at least minRefresh; zero when
// nothing is kept.
func (k *Keeper) next() time.Duration {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.mappings) == 0 {
		return 0
	}
	d := k.every
	for _, m := range k.granted {
		if h := m.Lifetime / 2; d <= 0 || h < d {
			d = h
		}
	}
	if d <= 0 {
		// Wanted but never granted, and no refresh interval: retry
		// at the default lifetime's pace.
		d = DefaultLifetime / 2
	}
	return max(d, minRefresh)
}

func (k *Keeper) run(ctx context.Context) {
	defer close(k.done)
	for {
		var tick <-chan time.Time
		var t *time.Timer
		if d := k.next(); d > 0 {
			t = time.NewTimer(d)
			tick = t.C
		}
		select {
		case <-ctx.Done():
		case <-k.wake:
		case <-tick:
			k.refresh(ctx)
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// refresh maps every kept mapping again.
func (k *Keeper) refresh(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, refreshTimeout)
	defer cancel()
	k.op.Lock()
	defer k.op.Unlock()
	k.mu.Lock()
	want := make(map[key]Mapping, len(k.mappings))
	for id, m := range k.mappings {
		want[id] = m
	}
	k.mu.Unlock()
	for id, m := range want {
		if ctx.Err() != nil {
			return
		}
		got, err := k.mapOne(ctx, m)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			k.log.Warn("port mapping refresh failed", "protocol", k.mapper.Protocol(),
				"proto", m.Proto, "port", m.InternalPort, "err", err)
			continue
		}
		k.mu.Lock()
		if _, kept := k.mappings[id]; kept {
			k.granted[id] = got
		}
		k.mu.Unlock()
		k.log.Debug("port mapping refreshed", "protocol", k.mapper.Protocol(),
			"proto", got.Proto, "port", got.InternalPort, "external_port", got.ExternalPort,
			"lifetime", got.Lifetime)
	}
}

// mapOne asks the router for m. The request runs to its answer (or
// opTimeout) even when ctx ends first; a lost answer leaves m in asked,
// and a granted one takes it out. The caller holds op.
func (k *Keeper) mapOne(ctx context.Context, m Mapping) (Mapping, error) {
	if err := ctx.Err(); err != nil {
		return Mapping{}, err
	}
	octx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	defer cancel()
	got, err := k.mapper.Map(octx, m)
	id := key{m.Proto, m.InternalPort}
	k.mu.Lock()
	if err != nil {
		k.asked[id] = m
	} else {
		delete(k.asked, id)
	}
	k.mu.Unlock()
	return got, err
}
