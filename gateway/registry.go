package gateway

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/diglett/diglett/internal/lazylog"
	"github.com/diglett/diglett/internal/protocol"
)

// registry maps names and ports to tunnels. A tunnel outlives its agents by
// the lease: its name and port stay reserved for the identity that owns
// them until the lease ends.
type registry struct {
	srv    *Server
	mu     sync.Mutex
	byName map[string]*tunnel
	byPort map[int]*tunnel
	owned  map[string]int // identity -> tunnels it holds, live or leased
	closed bool
	leases *leaseWriter // nil without Config.LeaseFile
	names  nameLocks    // serializes the cluster's calls per name

	// routes is a copy of byName for the HTTP ingress, replaced (never
	// changed) under mu whenever a tunnel is added or removed, so that
	// routing a request takes no lock.
	routes atomic.Pointer[map[string]*tunnel]
}

func newRegistry(s *Server) *registry {
	r := &registry{srv: s, byName: make(map[string]*tunnel), byPort: make(map[int]*tunnel), owned: make(map[string]int)}
	r.publishLocked()
	return r
}

// keepLeases restores the leases of Config.LeaseFile and keeps the file up
// to date from then on.
func (r *registry) keepLeases(now time.Time) error {
	path := r.srv.cfg.LeaseFile
	recs, err := readLeases(path)
	if err != nil {
		return err
	}
	r.restore(recs, now)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.leases = newLeaseWriter(path, r.srv.log, func() []leaseRecord {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.snapshotLocked()
	})
	r.persistLocked()
	return nil
}

// publishLocked replaces the routes snapshot. Called under r.mu.
func (r *registry) publishLocked() {
	m := make(map[string]*tunnel, len(r.byName))
	for k, v := range r.byName {
		m[k] = v
	}
	r.routes.Store(&m)
}

// route returns the tunnel published as name, live or leased.
func (r *registry) route(name string) *tunnel {
	return (*r.routes.Load())[name]
}

// tunnel is a published name with its public port and the live agent
// sessions serving it.
type tunnel struct {
	reg      *registry
	name     string
	identity string
	port     int
	ln       net.Listener // nil while a restored lease could not bind its port
	udp      bool         // a UDP tunnel: ln is its *udpPort (udp.go)
	log      *slog.Logger
	quota    Quota // the owner's, for its certificate orders

	// What Admit returns to give a slot of the visitor cap back, made
	// once rather than for every request.
	releaseOnce sync.Once
	releaseSlot func()

	members  atomic.Pointer[[]*session] // copy-on-write; written under reg.mu
	next     atomic.Uint64              // round-robin cursor
	lease    *time.Timer                // running while no agent is online; under reg.mu
	leaseEnd time.Time                  // when lease fires; under reg.mu
	removed  bool                       // under reg.mu

	// regs is the tunnel's state with each registerer, made by its first
	// reconcile while live; under reg.mu (see reconcile.go).
	regs []*registration

	visitors atomic.Pointer[visitorPolicy] // set by the latest registration
	view     atomic.Pointer[memberView]    // members as Members returns them

	// In a cluster: the other nodes serving the tunnel (remote.go), and
	// whether only they do (no agent of this node has joined it, or its
	// lease here ended while they still served it); under reg.mu.
	remote     atomic.Pointer[[]Member]
	remoteOnly bool
}

// policy is how the tunnel treats visitors.
func (t *tunnel) policy() *visitorPolicy { return t.visitors.Load() }

// logAttrs are the attributes of the tunnel's log lines (see t.log).
func (t *tunnel) logAttrs() []slog.Attr { return []slog.Attr{slog.String("tunnel", t.name)} }

func (t *tunnel) live() []*session {
	if m := t.members.Load(); m != nil {
		return *m
	}
	return nil
}

// inTurn offers members to take one by one, from the tunnel's round-robin
// cursor on, until take takes one; false when none did. Each visitor
// starts one further along, so that visitors spread over a group.
func inTurn[M any](t *tunnel, members []M, take func(M) bool) bool {
	start := int(t.next.Add(1))
	for i := range members {
		if take(members[(start+i)%len(members)]) {
			return true
		}
	}
	return false
}

func refuse(code protocol.Code, format string, args ...any) *protocol.Error {
	return &protocol.Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// join adds ss to the tunnel for req.Name, creating it (and its public
// port) if needed. In a cluster the name is claimed first, and the tunnel
// gets the name's port in the cluster.
func (r *registry) join(ss *session, req *protocol.Register) (*tunnel, *protocol.Error) {
	pol, err := newVisitorPolicy(req)
	if err != nil {
		return nil, refuse(protocol.CodeBadRequest, "%v", err)
	}
	if r.srv.cfg.Cluster == nil {
		return r.joinLocal(ss, req, pol)
	}
	unlock := r.names.lock(req.Name)
	own := *req
	held, perr := r.hold(ss, &own, pol)
	if perr != nil {
		unlock()
		return nil, perr
	}
	t, perr := r.joinLocal(ss, &own, pol)
	if perr != nil && held {
		r.undoHold(req.Name)
	}
	unlock()
	return t, perr
}

// joinLocal is join on this node.
func (r *registry) joinLocal(ss *session, req *protocol.Register, pol *visitorPolicy) (*tunnel, *protocol.Error) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, refuse(protocol.CodeShuttingDown, "gateway is shutting down")
	}
	t := r.byName[req.Name]
	if t != nil {
		if t.identity != ss.identity.Name {
			r.mu.Unlock()
			return nil, refuse(protocol.CodeNameTaken, "name %q is taken by another identity", req.Name)
		}
		if t.udp != req.UDP {
			r.mu.Unlock()
			return nil, refuse(protocol.CodePortUnavailable, "name %q is a %s tunnel: every registration of a name must agree on udp", req.Name, protoName(t.udp))
		}
		if t.remoteOnly {
			// Served by other nodes so far: this node serves it too now.
			if perr := r.checkQuotaLocked(ss); perr != nil {
				r.mu.Unlock()
				return nil, perr
			}
			t.remoteOnly = false
			r.owned[t.identity]++
		}
		if t.ln == nil {
			// A lease restored without its port: bind one now.
			ln, port, perr := r.listen(&protocol.Register{Port: req.Port, PreferPort: t.port, UDP: t.udp})
			if perr != nil {
				r.mu.Unlock()
				return nil, perr
			}
			t.ln, t.port = ln, port
			r.byPort[port] = t
			r.srv.visitors.Add(1)
			go t.serve()
		}
		if req.Port != 0 && req.Port != t.port {
			r.mu.Unlock()
			return nil, refuse(protocol.CodePortUnavailable, "name %q already has port %d", req.Name, t.port)
		}
	} else {
		if perr := r.checkQuotaLocked(ss); perr != nil {
			r.mu.Unlock()
			return nil, perr
		}
		ln, port, perr := r.listen(req)
		if perr != nil {
			r.mu.Unlock()
			return nil, perr
		}
		t = &tunnel{
			reg:      r,
			name:     req.Name,
			identity: ss.identity.Name,
			port:     port,
			ln:       ln,
			udp:      req.UDP,
		}
		t.log = lazylog.Func(r.srv.log, t.logAttrs)
		// The ingress may see the tunnel as soon as it is published.
		t.visitors.Store(pol)
		r.addLocked(t)
	}
	if t.lease != nil {
		t.lease.Stop()
		t.lease = nil
		t.leaseEnd = time.Time{}
	}
	t.quota = ss.quota
	t.visitors.Store(pol)
	old := t.live()
	members := make([]*session, 0, len(old)+1)
	members = append(members, old...)
	members = append(members, ss)
	t.members.Store(&members)
	r.persistLocked()
	r.srv.obs.TunnelChanged(t.name, TunnelLive, len(members))
	r.mu.Unlock()
	if len(old) > 0 && newAgent(old, ss) {
		agents := countAgents(members)
		t.log.Info("agent joined a tunnel's group", "session", ss.id, "members", len(members), "agents", agents)
		t.noticeJoined(old, agents)
	}

	if !ss.addTunnel(t) {
		r.leave(t, ss)
		return nil, refuse(protocol.CodeInternal, "session ended")
	}
	t.reconcile()
	return t, nil
}

// addLocked publishes a new tunnel and serves its port. Called under r.mu.
func (r *registry) addLocked(t *tunnel) {
	r.byName[t.name] = t
	if t.ln != nil {
		r.byPort[t.port] = t
		r.srv.visitors.Add(1)
		go t.serve()
	}
	r.owned[t.identity]++
	r.publishLocked()
}

// checkQuotaLocked refuses a new tunnel for ss's identity when it holds
// as many names or ports as its quota allows. Called under r.mu.
func (r *registry) checkQuotaLocked(ss *session) *protocol.Error {
	id, q := ss.identity.Name, ss.quota
	n := r.owned[id]
	if q.Names >= 0 && n >= q.Names {
		return quotaError(id, q.Names, "names (live or leased)")
	}
	// Every tunnel holds one public port.
	if q.Ports >= 0 && n >= q.Ports {
		return quotaError(id, q.Ports, "public ports")
	}
	return nil
}

// listen opens the public port for a new tunnel. Called under r.mu.
func (r *registry) listen(req *protocol.Register) (net.Listener, int, *protocol.Error) {
	lo, hi := r.srv.cfg.PortMin, r.srv.cfg.PortMax
	if req.Port != 0 {
		if req.Port < lo || req.Port > hi {
			return nil, 0, refuse(protocol.CodePortUnavailable, "port %d is outside the gateway's range %d-%d", req.Port, lo, hi)
		}
		if r.byPort[req.Port] != nil {
			return nil, 0, refuse(protocol.CodePortUnavailable, "port %d is in use by another tunnel", req.Port)
		}
		ln, err := r.bindPort(req.UDP, req.Port)
		if err != nil {
			return nil, 0, refuse(protocol.CodePortUnavailable, "port %d is not available on the gateway", req.Port)
		}
		return ln, req.Port, nil
	}
	if p := req.PreferPort; p >= lo && p <= hi && r.byPort[p] == nil {
		if ln, err := r.bindPort(req.UDP, p); err == nil {
			return ln, p, nil
		}
	}
	n := hi - lo + 1
	start := rand.IntN(n)
	failures := 0
	for i := 0; i < n && failures < 128; i++ {
		p := lo + (start+i)%n
		if r.byPort[p] != nil {
			continue
		}
		ln, err := r.bindPort(req.UDP, p)
		if err != nil {
			failures++
			continue
		}
		return ln, p, nil
	}
	return nil, 0, refuse(protocol.CodePortUnavailable, "no free port in the gateway's range %d-%d", lo, hi)
}

func (r *registry) bind(port int) (net.Listener, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(r.srv.cfg.PublicHost, strconv.Itoa(port)))
	if err != nil {
		return nil, err
	}
	return r.srv.portListener(ln), nil
}

// leave removes ss from t; the last member to leave starts the lease.
func (r *registry) leave(t *tunnel, ss *session) {
	r.mu.Lock()
	old := t.live()
	members := make([]*session, 0, len(old))
	for _, m := range old {
		if m != ss {
			members = append(members, m)
		}
	}
	t.members.Store(&members)
	switch {
	case len(members) > 0 && len(members) < len(old):
		r.srv.obs.TunnelChanged(t.name, TunnelLive, len(members))
	case len(members) == 0 && !t.removed && t.lease == nil:
		t.log.Info("agent offline, name and port leased", "port", t.port, "lease", r.srv.cfg.Lease)
		r.srv.obs.LeaseStarted(t.name)
		r.startLeaseLocked(t, time.Now().Add(r.srv.cfg.Lease))
		r.persistLocked()
		if r.srv.cfg.Cluster != nil {
			// Off this path: a join of the name may hold its lock now.
			// unhold looks again at what it finds when its turn comes.
			go r.unhold(t)
		}
	}
	r.mu.Unlock()
	t.reconcile()
}

// startLeaseLocked frees t at end unless an agent comes back. Called
// under r.mu.
func (r *registry) startLeaseLocked(t *tunnel, end time.Time) {
	// The callback reads timer only under r.mu, which is held here while
	// timer is set.
	var timer *time.Timer
	timer = time.AfterFunc(time.Until(end), func() { r.expire(t, &timer) })
	t.lease = timer
	t.leaseEnd = end
	r.srv.obs.TunnelChanged(t.name, TunnelLeased, 0)
}

// expire frees t when its lease ends with no agent back; timer is the
// lease's, read under r.mu.
func (r *registry) expire(t *tunnel, timer **time.Timer) {
	r.mu.Lock()
	if t.lease != *timer || t.removed || len(t.live()) > 0 {
		r.mu.Unlock()
		return
	}
	t.lease = nil
	r.srv.obs.LeaseExpired(t.name)
	if len(t.remoteMembers()) > 0 {
		// Other nodes serve it: this node keeps forwarding to them.
		t.remoteOnly = true
		if r.owned[t.identity]--; r.owned[t.identity] <= 0 {
			delete(r.owned, t.identity)
		}
		r.srv.obs.TunnelChanged(t.name, TunnelLive, 0)
		r.persistLocked()
		r.mu.Unlock()
		t.log.Info("lease expired here; other nodes serve the tunnel, visitors go to them")
		t.reconcile()
		return
	}
	r.removeLocked(t)
	r.persistLocked()
	r.mu.Unlock()
	t.log.Info("lease expired, name and port released", "port", t.port)
	t.reconcile()
	r.release(t)
}

func (r *registry) removeLocked(t *tunnel) {
	t.removed = true
	r.srv.obs.TunnelChanged(t.name, TunnelRemoved, 0)
	if r.byName[t.name] == t {
		delete(r.byName, t.name)
	}
	if t.ln != nil && r.byPort[t.port] == t {
		delete(r.byPort, t.port)
	}
	if !t.remoteOnly {
		if r.owned[t.identity]--; r.owned[t.identity] <= 0 {
			delete(r.owned, t.identity)
		}
	}
	t.setRemoteLocked(nil, nil)
	r.publishLocked()
	if t.lease != nil {
		t.lease.Stop()
		t.lease = nil
	}
	if t.ln != nil {
		t.ln.Close()
	}
}

// closeListeners closes every public port; the registry accepts no more
// tunnels.
func (r *registry) closeListeners() {
	r.mu.Lock()
	r.closed = true
	for _, t := range r.byName {
		if t.ln != nil {
			t.ln.Close()
		}
	}
	r.mu.Unlock()
}

// close removes every tunnel.
func (r *registry) close() {
	r.mu.Lock()
	r.closed = true
	if r.leases != nil {
		// The tunnels' final state, before they are removed: a restart
		// honours their leases.
		final := r.snapshotLocked()
		r.mu.Unlock()
		r.leases.close(final)
		r.mu.Lock()
	}
	ts := make([]*tunnel, 0, len(r.byName))
	for _, t := range r.byName {
		ts = append(ts, t)
		r.removeLocked(t)
	}
	r.mu.Unlock()
	for _, t := range ts {
		t.reconcile()
	}
}
