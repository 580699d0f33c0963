package gateway

import (
	"context"
	"io"
	"slices"
)

// Route is a tunnel as registerers see it.
type Route struct {
	Name     string // tunnel name
	Port     int    // public port on the gateway: TCP, or UDP when UDP is set
	Identity string // owner of the name
	// UDP says the tunnel is a UDP tunnel: Port is a UDP port, and it
	// has no Hosts (no HTTP address).
	UDP bool
	// Hosts are the host names HTTP(S) visitors reach the tunnel by:
	// NAME.Domain first, when the gateway has a domain, then the further
	// hosts of its tunnel group (Config.Hosts), sorted. Empty without
	// either.
	Hosts []string
}

// Equal reports whether r and o publish the same thing.
func (r Route) Equal(o Route) bool {
	return r.Name == o.Name && r.Port == o.Port && r.Identity == o.Identity && r.UDP == o.UDP && slices.Equal(r.Hosts, o.Hosts)
}

// Registerer publishes routes somewhere outside the gateway (a log, a
// proxy's configuration, a DNS zone). Register is called when a tunnel
// is made, that is when its first agent session joins or when the
// gateway restores its lease at start; the returned Closer is closed when
// the tunnel goes away (its lease ended with no agent back, or the
// gateway closes). A tunnel whose agents are all offline keeps its route
// through its lease: visitors the proxy sends get the gateway's answer
// (503) rather than the proxy's 404. When the route changes (its hosts,
// after a reload), the old one is closed and the new one registered.
// Register and Close are never called at once for one tunnel, but are for
// different tunnels: implementations must be safe for concurrent use.
//
// Calls run off the agent's path: an agent's registration never waits for
// a registerer. Register's context ends after Config.RegisterTimeout or
// when the gateway closes. An error from Register or Close is logged at
// Warn and retried with backoff until the registerer agrees with the
// tunnel's latest state. Closing a route that is already gone should
// succeed. See also ContextCloser, to bound Close, and Sweeper, to clear
// what an earlier life of the gateway left behind.
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

// Sweeper is a Registerer that can remove what it published in an
// earlier life of the gateway: the routes a crash left behind. The
// gateway calls Sweep once when it puts the registerer in force (New,
// SetRegisterers), before the registerer's first Register, with a context
// that ends after Config.RegisterTimeout; the routes of the tunnels alive
// or leased are then registered again. An error is logged at Warn and
// Sweep retried with backoff; until it succeeds the registerer gets no
// Register. Sweep must remove only what this registerer publishes (its
// files, its routes' ids), never the proxy's other routes.
type Sweeper interface {
	Registerer
	Sweep(ctx context.Context) error
}

// RegistererFunc adapts a function to a Registerer.
type RegistererFunc func(ctx context.Context, r Route) (io.Closer, error)

// Register calls f.
func (f RegistererFunc) Register(ctx context.Context, r Route) (io.Closer, error) { return f(ctx, r) }

var _ Registerer = RegistererFunc(nil)
