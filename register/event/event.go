// Package event turns a function that tells something outside the gateway
// of one event of a route (a command run, a POST) into a registerer: the
// register event when a route is published, unregister when it is taken
// down, and sweep once when the gateway puts the registerer in force. The
// exec and webhook modules are built on it.
package event

import (
	"context"
	"io"
	"sync"

	"github.com/diglett/diglett/gateway"
)

// The events.
const (
	Register   = "register"   // a route is published
	Unregister = "unregister" // a route is taken down
	Sweep      = "sweep"      // forget every route told of before: an earlier run's
)

// Notify tells of event for r (nil for Sweep), within ctx; an error makes
// the gateway retry later.
type Notify func(ctx context.Context, event string, r *gateway.Route) error

// Registerer is a registerer, and a sweeper, that calls Notify for each
// event. It is safe for concurrent use if Notify is.
type Registerer struct {
	Notify Notify
}

var _ gateway.Sweeper = Registerer{}

// Register tells of the register event of r; the returned Closer tells of
// its unregister event (a gateway.ContextCloser).
func (e Registerer) Register(ctx context.Context, r gateway.Route) (io.Closer, error) {
	if err := e.Notify(ctx, Register, &r); err != nil {
		return nil, err
	}
	return &route{notify: e.Notify, r: r}, nil
}

// Sweep tells of the sweep event: the receiver should forget every route
// it was told of before, since the routes of the tunnels still alive are
// registered again next.
func (e Registerer) Sweep(ctx context.Context) error {
	return e.Notify(ctx, Sweep, nil)
}

// route is a published route: closing it tells of its unregister event.
type route struct {
	notify Notify
	r      gateway.Route

	mu   sync.Mutex
	done bool // unregister told: closing again does nothing
}

var _ gateway.ContextCloser = (*route)(nil)

// Close tells of the unregister event, without a bound of its own.
func (r *route) Close() error { return r.CloseContext(context.Background()) }

// CloseContext tells of the unregister event within ctx. Once that
// succeeded, closing again does nothing.
func (r *route) CloseContext(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return nil
	}
	if err := r.notify(ctx, Unregister, &r.r); err != nil {
		return err
	}
	r.done = true
	return nil
}
