package gateway

import (
	"context"
	"io"
)

// Route is a live tunnel as registerers see it.
type Route struct {
	Name     string // tunnel name
	Port     int    // public TCP port on the gateway
	Identity string // owner of the name
}

// Registerer publishes routes somewhere outside the gateway (a log, a
// proxy's configuration, a DNS zone). Register is called when a tunnel
// goes live, that is when its first agent session joins; the returned
// Closer is closed when the tunnel goes away (its last session left, or
// the gateway closes). Register and Close are never called at once for
// one tunnel, but are for different tunnels: implementations must be safe
// for concurrent use.
//
// Calls run off the agent's path: an agent's registration never waits for
// a registerer. Register's context ends after Config.RegisterTimeout or
// when the gateway closes. An error from Register or Close is logged at
// Warn and retried with backoff until the registerer agrees with the
// tunnel's latest state.
type Registerer interface {
	Register(ctx context.Context, r Route) (io.Closer, error)
}

// ContextCloser is a route's Closer whose unregistering can be bounded:
// when the Closer a Registerer returns implements it, the gateway calls
// CloseContext, with a context that ends after Config.RegisterTimeout,
// instead of Close. Registerers that talk to something remote (a proxy's
// API, a router) should return one, so that one that hangs costs a retry
// later rather than a worker for ever.
type ContextCloser interface {
	io.Closer
	CloseContext(ctx context.Context) error
}

// RegistererFunc adapts a function to a Registerer.
type RegistererFunc func(ctx context.Context, r Route) (io.Closer, error)

// Register calls f.
func (f RegistererFunc) Register(ctx context.Context, r Route) (io.Closer, error) { return f(ctx, r) }

var _ Registerer = RegistererFunc(nil)
