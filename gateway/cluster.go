package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/diglett/diglett/internal/protocol"
)

// Cluster makes the gateway one node of several that share one
// namespace: a name belongs to one identity and has one public port on
// every node, whichever node its agents reach. Package cluster gives one
// over etcd (cluster.Member.ForGateway).
//
// The gateway calls Hold before it publishes a name that it does not
// serve yet, Unhold when the last of its agents for the name left (its
// lease starts), and Release when the lease ended here (the name goes
// only if no other node holds it). Each call is bounded by
// Config.RegisterTimeout; the calls for one name never overlap.
type Cluster interface {
	// Hold claims name for identity through this node and returns its
	// port in the cluster: port when not 0 (ErrPortTaken when another
	// name has it), the name's when it has one, else a free one in
	// [portMin, portMax]. ErrNameTaken: another identity owns the name;
	// ErrClusterUnavailable: the claim cannot be checked now. rules are
	// the tunnel's visitor rules as this node applies them, which the
	// other nodes get in their RemoteTunnels (see SetRemoteTunnels); a
	// Hold made again with other rules replaces them.
	Hold(ctx context.Context, name, identity string, port, portMin, portMax int, rules []byte) (int, error)
	// Unhold says this node serves name no more.
	Unhold(ctx context.Context, name string) error
	// Release frees name and its port unless a node holds it.
	Release(ctx context.Context, name string) error
}

// Errors a Cluster returns, wrapped.
var (
	ErrNameTaken          = errors.New("name taken by another identity")
	ErrPortTaken          = errors.New("port taken")
	ErrClusterUnavailable = errors.New("cluster store unavailable")
)

// nameLocks serializes the cluster calls for each name: a Hold for a
// returning agent must not pass the Unhold of the agent that left before
// it. Entries live while someone holds or waits for them.
type nameLocks struct {
	mu sync.Mutex
	m  map[string]*nameLock
}

type nameLock struct {
	mu   sync.Mutex
	refs int
}

// lock locks name and returns its unlock.
func (l *nameLocks) lock(name string) func() {
	l.mu.Lock()
	if l.m == nil {
		l.m = make(map[string]*nameLock)
	}
	e := l.m[name]
	if e == nil {
		e = &nameLock{}
		l.m[name] = e
	}
	e.refs++
	l.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		l.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(l.m, name)
		}
		l.mu.Unlock()
	}
}

// clusterTimeout bounds one call to the cluster.
func (r *registry) clusterTimeout() (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.srv.ctx, r.srv.cfg.RegisterTimeout)
}

// hold claims req.Name for ss's identity in the cluster, unless this node
// already serves it for that identity, and sets req.Port to the name's
// port in the cluster. held says a claim was made (to be undone if the
// join fails). Called with the name locked.
func (r *registry) hold(ss *session, req *protocol.Register, pol *visitorPolicy) (held bool, perr *protocol.Error) {
	rules := pol.encode()
	r.mu.Lock()
	t := r.byName[req.Name]
	serving := t != nil && !t.removed && !t.remoteOnly && t.identity == ss.identity.Name && len(t.live()) > 0
	same := serving && bytes.Equal(t.policy().encode(), rules)
	r.mu.Unlock()
	if same {
		return false, nil
	}
	ctx, cancel := r.clusterTimeout()
	defer cancel()
	start := time.Now()
	port, err := r.srv.cfg.Cluster.Hold(ctx, req.Name, ss.identity.Name, req.Port, r.srv.cfg.PortMin, r.srv.cfg.PortMax, rules)
	switch {
	case serving && errors.Is(err, ErrClusterUnavailable):
		// Held already: the agent joins; the other nodes keep the
		// rules they had until the next hold.
		r.srv.log.Warn("visitor rules not published to the cluster", "name", req.Name, "err", err)
		return false, nil
	case err == nil:
		req.Port = port
		return true, nil
	case errors.Is(err, ErrNameTaken):
		return false, refuse(protocol.CodeNameTaken, "name %q is taken by another identity", req.Name)
	case errors.Is(err, ErrPortTaken):
		return false, refuse(protocol.CodePortUnavailable, "port %d is in use by another tunnel of the cluster", req.Port)
	default:
		r.srv.log.Warn("name not claimed in the cluster", "name", req.Name, "took", time.Since(start).Round(time.Millisecond), "err", err)
		return false, refuse(protocol.CodeUnavailable, "the gateway cannot claim name %q now: its cluster store is unreachable; new names and ports are refused until it is back", req.Name)
	}
}

// unhold tells the cluster this node serves name no more, unless an
// agent came back meanwhile.
func (r *registry) unhold(t *tunnel) {
	r.tellCluster(t, "cluster not told the tunnel left this node",
		func() bool { return r.byName[t.name] != t || len(t.live()) > 0 },
		func(ctx context.Context, c Cluster) error { return c.Unhold(ctx, t.name) })
}

// release frees t's name in the cluster (unless another node holds it),
// unless this node published the name again meanwhile.
func (r *registry) release(t *tunnel) {
	r.tellCluster(t, "name not released in the cluster; the cluster's sweep frees it later",
		func() bool { return r.byName[t.name] != nil },
		func(ctx context.Context, c Cluster) error { return c.Release(ctx, t.name) })
}

// tellCluster makes call for t's name, under the name's lock and bounded,
// unless moved (asked under r.mu) says the registry moved on meanwhile; a
// failure is logged as failed.
func (r *registry) tellCluster(t *tunnel, failed string, moved func() bool, call func(context.Context, Cluster) error) {
	c := r.srv.cfg.Cluster
	if c == nil {
		return
	}
	unlock := r.names.lock(t.name)
	defer unlock()
	r.mu.Lock()
	skip := moved()
	r.mu.Unlock()
	if skip {
		return
	}
	ctx, cancel := r.clusterTimeout()
	defer cancel()
	if err := call(ctx, c); err != nil {
		t.log.Warn(failed, "err", err)
	}
}

// undoHold takes back a claim a failed join made, unless the name is
// served here after all. Called with the name locked.
func (r *registry) undoHold(name string) {
	r.mu.Lock()
	t := r.byName[name]
	serving := t != nil && len(t.live()) > 0
	r.mu.Unlock()
	if serving {
		return
	}
	ctx, cancel := r.clusterTimeout()
	defer cancel()
	c := r.srv.cfg.Cluster
	err := c.Unhold(ctx, name)
	if t == nil && err == nil {
		err = c.Release(ctx, name)
	}
	if err != nil {
		r.srv.log.Warn("claim of a refused name not taken back; the cluster's sweep frees it later", "name", name, "err", fmt.Errorf("%w", err))
	}
}
