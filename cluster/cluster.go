// Package cluster makes several gateways one namespace through etcd:
// membership (each node's key lives on its etcd session lease, so a node
// that dies leaves when its lease expires), names and public ports
// claimed in etcd transactions so that no two nodes give one name to two
// identities or one port to two names, and leader election for the work
// that must run once per cluster.
//
// Nothing here is a consensus of its own: liveness is etcd's leases,
// atomicity etcd's transactions, and elections the etcd client's
// concurrency package.
package cluster

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Defaults of Options.
const (
	DefaultPrefix  = "/diglett/"
	DefaultTTL     = 5 * time.Second
	DefaultTimeout = 5 * time.Second
	// MinTTL is the shortest membership lease allowed.
	MinTTL = 2 * time.Second
)

// Options configures a Member. Zero values are the documented defaults.
type Options struct {
	// Endpoints are etcd's client URLs. Required.
	Endpoints []string
	// TLS is the client TLS configuration for etcd; nil for none.
	TLS *tls.Config
	// Username and Password authenticate to etcd; empty for none.
	Username, Password string
	// Prefix is where the cluster's keys live; "/diglett/" by default.
	// A missing trailing "/" is added.
	Prefix string
	// Node is this node's unique id, [a-z0-9-]{1,63}. Required.
	Node string
	// Advertise is host:port other nodes reach this one at. Required.
	Advertise string
	// Cert is this node's node-to-node certificate (PEM), published for
	// peers; optional.
	Cert []byte
	// TTL is the membership lease: a node that stops answering leaves
	// after it. 5s by default, at least 2s.
	TTL time.Duration
	// Timeout bounds each call to etcd: past it the call fails with
	// ErrUnavailable. 5s by default.
	Timeout time.Duration
	// Logger receives the cluster's logs; discarded when nil.
	Logger *slog.Logger
}

var nodeID = regexp.MustCompile(`^[a-z0-9-]{1,63}$`)

// Validate reports what is wrong with o, ignoring the fields that have
// defaults.
func (o *Options) Validate() error {
	if len(o.Endpoints) == 0 {
		return errors.New("cluster: no etcd endpoints")
	}
	if !nodeID.MatchString(o.Node) {
		return fmt.Errorf("cluster: node id %q: want 1 to 63 of a-z, 0-9 and -", o.Node)
	}
	if _, _, err := net.SplitHostPort(o.Advertise); err != nil || o.Advertise == "" {
		return fmt.Errorf("cluster: advertise address %q: want host:port", o.Advertise)
	}
	if o.TTL != 0 && o.TTL < MinTTL {
		return fmt.Errorf("cluster: ttl %v is shorter than %v", o.TTL, MinTTL)
	}
	if o.Timeout < 0 {
		return fmt.Errorf("cluster: timeout %v is negative", o.Timeout)
	}
	return nil
}

// Node is one live member of the cluster.
type Node struct {
	ID        string    `json:"id"`
	Advertise string    `json:"advertise"`
	Cert      []byte    `json:"cert,omitempty"`
	Joined    time.Time `json:"joined"`
}

// Member is this node's membership: its etcd session, the live members
// it watches, and the names it holds. Its methods are safe for
// concurrent use.
type Member struct {
	o      Options
	log    *slog.Logger
	cli    *clientv3.Client
	self   []byte // this node's membership value
	ttlSec int

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// swap is read-locked by calls that write holder keys and
	// write-locked while the session is replaced, so that no hold is
	// written on a session that is being given up.
	swap    sync.RWMutex
	mu      sync.Mutex
	sess    *concurrency.Session
	sessNew chan struct{}     // closed and replaced when sess changes
	held    map[string][]byte // name -> the name's value when held
	rules   map[string][]byte // name -> the rules of this node's hold

	reachable    atomic.Bool
	nodes        atomic.Pointer[[]Node]
	changes      chan struct{}
	claims       atomic.Pointer[[]Claim] // see watch.go
	claimChanges chan struct{}
	forwarded    atomic.Uint64 // see node.go
	closed       atomic.Bool
	runs         sync.WaitGroup // Lead's runs; added to under mu while not closed

	// testHookRelease, when set by a test, runs in Release between its
	// read of the name and its transaction.
	testHookRelease func(name string)
}

// Join starts this node's etcd session and puts its membership key,
// refusing when a live node already has its id. The member keeps its
// session (and re-establishes it after etcd was lost) until Close.
func Join(ctx context.Context, o Options) (*Member, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if !strings.HasSuffix(o.Prefix, "/") {
		o.Prefix += "/"
	}
	if o.TTL == 0 {
		o.TTL = DefaultTTL
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	self, err := json.Marshal(Node{ID: o.Node, Advertise: o.Advertise, Cert: o.Cert, Joined: time.Now().UTC()})
	if err != nil {
		return nil, fmt.Errorf("cluster: encode node: %w", err)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            o.Endpoints,
		TLS:                  o.TLS,
		Username:             o.Username,
		Password:             o.Password,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		PermitWithoutStream:  true,
		// Dial again soon after etcd comes back, however long it was
		// away (the default backoff grows to two minutes).
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: o.Timeout,
		})},
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: etcd client: %w", err)
	}
	mctx, cancel := context.WithCancel(context.Background())
	m := &Member{
		o:       o,
		log:     log.With("node", o.Node),
		cli:     cli,
		self:    self,
		ttlSec:  int((o.TTL + time.Second - 1) / time.Second),
		ctx:     mctx,
		cancel:  cancel,
		sessNew: make(chan struct{}),
		held:    make(map[string][]byte),
		rules:   make(map[string][]byte),
		changes: make(chan struct{}, 1),

		claimChanges: make(chan struct{}, 1),
	}
	m.nodes.Store(&[]Node{})
	m.claims.Store(&[]Claim{})
	var s *concurrency.Session
	err = m.do(ctx, "join", func(ctx context.Context) (err error) {
		s, err = m.establish(ctx, clientv3.NoLease)
		return err
	})
	if err != nil {
		cancel()
		cli.Close()
		return nil, err
	}
	m.sess = s
	m.reachable.Store(true)
	m.wg.Add(4)
	go m.keep(s)
	go m.watchMembers()
	go m.watchClaims()
	go m.probe()
	m.log.Info("cluster: joined", "advertise", o.Advertise, "lease", fmt.Sprintf("%x", s.Lease()))
	return m, nil
}

// key is the full key of rel.
func (m *Member) key(rel string) string { return m.o.Prefix + rel }

func (m *Member) memberKey() string { return m.key("members/" + m.o.Node) }

// opCtx bounds one call to etcd and asks for a member with a leader, so
// a partitioned member fails fast instead of answering stale.
func (m *Member) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	c, cancel := context.WithTimeout(ctx, m.o.Timeout)
	return clientv3.WithRequireLeader(c), cancel
}

// unavailable wraps err, a failed call to etcd, as ErrUnavailable unless
// the caller's ctx ended.
func unavailable(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("cluster: %s: %w", what, ctx.Err())
	}
	return fmt.Errorf("cluster: %s: %w (%v)", what, ErrUnavailable, err)
}

// etcdError marks, inside do, a call to etcd that failed.
type etcdError struct{ err error }

func (e etcdError) Error() string { return e.err.Error() }
func (e etcdError) Unwrap() error { return e.err }

// retryPause is the pause before do runs an operation again.
const retryPause = 100 * time.Millisecond

// do runs op with a context bounded by Options.Timeout, and again after
// a call to etcd failed (a leader change, a member gone) until that
// bound, past which it returns ErrUnavailable. Every op is a cycle of
// reads and conditional (or idempotent) writes, so running it again
// after a call whose outcome is unknown is safe.
func (m *Member) do(ctx context.Context, what string, op func(ctx context.Context) error) error {
	octx, cancel := m.opCtx(ctx)
	defer cancel()
	for {
		err := op(octx)
		var ee etcdError
		if !errors.As(err, &ee) {
			return err
		}
		select {
		case <-time.After(retryPause):
		case <-octx.Done():
			return unavailable(ctx, what, ee.err)
		}
	}
}

// establish grants a lease, puts the membership key on it and re-puts
// the holds this node still has. old is the lease of the session being
// replaced (NoLease at join): a membership key still on it is this
// node's own and is taken over; a key on any other lease is another live
// node's.
func (m *Member) establish(ctx context.Context, old clientv3.LeaseID) (*concurrency.Session, error) {
	lease, err := m.cli.Grant(ctx, int64(m.ttlSec))
	if err != nil {
		return nil, etcdError{fmt.Errorf("grant lease: %w", err)}
	}
	s, err := concurrency.NewSession(m.cli, concurrency.WithLease(lease.ID), concurrency.WithTTL(m.ttlSec), concurrency.WithContext(m.ctx))
	if err != nil {
		m.revoke(lease.ID)
		return nil, etcdError{fmt.Errorf("keep lease alive: %w", err)}
	}
	if err := m.putSelf(ctx, s.Lease(), old); err != nil {
		s.Orphan()
		m.revoke(lease.ID)
		return nil, err
	}
	return s, nil
}

// putSelf puts the membership key on lease if it is absent or still on
// old, this node's previous lease.
func (m *Member) putSelf(ctx context.Context, lease, old clientv3.LeaseID) error {
	k := m.memberKey()
	for range 3 {
		resp, err := m.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
			Then(clientv3.OpPut(k, string(m.self), clientv3.WithLease(lease))).
			Else(clientv3.OpGet(k)).Commit()
		if err != nil {
			return etcdError{err}
		}
		if resp.Succeeded {
			return nil
		}
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			continue // gone in between
		}
		kv := kvs[0]
		if old == clientv3.NoLease || clientv3.LeaseID(kv.Lease) != old {
			var other Node
			json.Unmarshal(kv.Value, &other)
			return fmt.Errorf("cluster: node id %s is in use by a live node at %s", m.o.Node, other.Advertise)
		}
		resp, err = m.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(k), "=", kv.ModRevision)).
			Then(clientv3.OpPut(k, string(m.self), clientv3.WithLease(lease))).Commit()
		if err != nil {
			return etcdError{err}
		}
		if resp.Succeeded {
			return nil
		}
	}
	return etcdError{errors.New("the membership key kept changing")}
}

// revoke ends lease, best effort and bounded: keys left on a lease that
// is not revoked go when it expires.
func (m *Member) revoke(lease clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), m.o.Timeout)
	defer cancel()
	if _, err := m.cli.Revoke(ctx, lease); err != nil {
		m.log.Debug("cluster: revoke lease", "lease", fmt.Sprintf("%x", lease), "error", err)
	}
}

// session returns the live session, or nil while there is none.
func (m *Member) session() *concurrency.Session {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sess
}

// setSession replaces the session and wakes those waiting for one.
func (m *Member) setSession(s *concurrency.Session) {
	m.mu.Lock()
	m.sess = s
	close(m.sessNew)
	m.sessNew = make(chan struct{})
	m.mu.Unlock()
}

// waitSession returns the live session, waiting for one while etcd is
// lost; it fails when ctx ends or the member is closed.
func (m *Member) waitSession(ctx context.Context) (*concurrency.Session, error) {
	for {
		m.mu.Lock()
		s, ch := m.sess, m.sessNew
		m.mu.Unlock()
		if s != nil {
			return s, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-m.ctx.Done():
			return nil, errClosed
		}
	}
}

var errClosed = errors.New("cluster: member closed")

// keep waits for the session to end and establishes a new one, with the
// membership key and this node's holds, until the member is closed.
func (m *Member) keep(s *concurrency.Session) {
	defer m.wg.Done()
	for {
		select {
		case <-s.Done():
		case <-m.ctx.Done():
			return
		}
		m.swap.Lock()
		m.setSession(nil)
		m.swap.Unlock()
		m.log.Warn("cluster: etcd session lost; re-establishing it", "lease", fmt.Sprintf("%x", s.Lease()))
		old := s.Lease()
		wait := 200 * time.Millisecond
		for attempt := 1; ; attempt++ {
			ns, err := m.reestablish(old)
			if err == nil {
				s = ns
				break
			}
			if m.ctx.Err() != nil {
				return
			}
			if attempt == 1 || attempt%20 == 0 {
				m.log.Warn("cluster: etcd session not re-established yet", "attempts", attempt, "error", err)
			}
			select {
			case <-time.After(wait):
			case <-m.ctx.Done():
				return
			}
			wait = min(2*wait, m.o.TTL/2)
		}
	}
}

// reestablish makes a new session replacing the one on lease old, re-puts
// the holds, and only then publishes the session and revokes old.
func (m *Member) reestablish(old clientv3.LeaseID) (*concurrency.Session, error) {
	var s *concurrency.Session
	err := m.do(m.ctx, "re-establish the session", func(ctx context.Context) (err error) {
		s, err = m.establish(ctx, old)
		return err
	})
	if err != nil {
		return nil, err
	}
	m.swap.Lock()
	var kept int
	err = m.do(m.ctx, "hold again", func(ctx context.Context) (err error) {
		kept, err = m.reputHolds(ctx, s.Lease())
		return err
	})
	if err != nil {
		m.swap.Unlock()
		s.Orphan()
		m.revoke(s.Lease())
		return nil, err
	}
	m.setSession(s)
	m.swap.Unlock()
	m.revoke(old)
	m.reachable.Store(true)
	m.log.Info("cluster: etcd session re-established", "lease", fmt.Sprintf("%x", s.Lease()), "holds", kept)
	return s, nil
}

// watchMembers keeps the snapshot of live members from a watch on the
// members' keys, listing again whenever the watch breaks.
func (m *Member) watchMembers() {
	defer m.wg.Done()
	prefix := m.key("members/")
	for m.ctx.Err() == nil {
		ctx, cancel := m.opCtx(m.ctx)
		resp, err := m.cli.Get(ctx, prefix, clientv3.WithPrefix())
		cancel()
		if err != nil {
			select {
			case <-time.After(250 * time.Millisecond):
			case <-m.ctx.Done():
			}
			continue
		}
		cur := make(map[string]Node, len(resp.Kvs))
		for _, kv := range resp.Kvs {
			if n, ok := decodeNode(kv); ok {
				cur[n.ID] = n
			}
		}
		m.publish(cur)
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(m.ctx))
		for wr := range m.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
			if wr.Err() != nil {
				break
			}
			for _, ev := range wr.Events {
				id := strings.TrimPrefix(string(ev.Kv.Key), prefix)
				if ev.Type == mvccpb.DELETE {
					delete(cur, id)
				} else if n, ok := decodeNode(ev.Kv); ok {
					cur[n.ID] = n
				}
			}
			m.publish(cur)
		}
		wcancel()
	}
}

func decodeNode(kv *mvccpb.KeyValue) (Node, bool) {
	var n Node
	if err := json.Unmarshal(kv.Value, &n); err != nil || n.ID == "" {
		return Node{}, false
	}
	return n, true
}

// publish stores cur as the snapshot when it differs, logs who came and
// went, and signals Changes.
func (m *Member) publish(cur map[string]Node) {
	next := make([]Node, 0, len(cur))
	for _, n := range cur {
		next = append(next, n)
	}
	slices.SortFunc(next, func(a, b Node) int { return strings.Compare(a.ID, b.ID) })
	prev := *m.nodes.Load()
	if slices.EqualFunc(prev, next, sameNode) {
		return
	}
	m.nodes.Store(&next)
	for _, n := range next {
		if !slices.ContainsFunc(prev, func(p Node) bool { return p.ID == n.ID }) {
			m.log.Info("cluster: node joined", "member", n.ID, "advertise", n.Advertise)
		}
	}
	for _, p := range prev {
		if !slices.ContainsFunc(next, func(n Node) bool { return p.ID == n.ID }) {
			m.log.Info("cluster: node left", "member", p.ID, "advertise", p.Advertise)
		}
	}
	select {
	case m.changes <- struct{}{}:
	default:
	}
}

func sameNode(a, b Node) bool {
	return a.ID == b.ID && a.Advertise == b.Advertise && string(a.Cert) == string(b.Cert) && a.Joined.Equal(b.Joined)
}

// probe checks that etcd answers with a leader a few times per TTL, for
// Healthy; it logs when etcd stops and starts answering.
func (m *Member) probe() {
	defer m.wg.Done()
	every := m.o.TTL / 5
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-m.ctx.Done():
			return
		}
		ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(m.ctx), every)
		_, err := m.cli.Get(ctx, m.memberKey(), clientv3.WithKeysOnly())
		cancel()
		if m.ctx.Err() != nil {
			return
		}
		if err != nil && m.reachable.Swap(false) {
			m.log.Warn("cluster: etcd unreachable; refusing new names and ports until it is back", "error", err)
		}
		if err == nil && !m.reachable.Swap(true) {
			m.log.Info("cluster: etcd reachable again")
		}
	}
}

// Nodes returns the live members, sorted by ID, as last seen by the
// watch. The slice is the caller's.
func (m *Member) Nodes() []Node { return slices.Clone(*m.nodes.Load()) }

// Changes is signalled when Nodes changes; signals are coalesced.
func (m *Member) Changes() <-chan struct{} { return m.changes }

// Healthy reports whether this node has an etcd session and etcd
// answers; while it does not, new names and ports are refused.
func (m *Member) Healthy() bool { return m.reachable.Load() && m.session() != nil }

// ID is this node's id.
func (m *Member) ID() string { return m.o.Node }

// Close revokes this node's session, so it leaves the membership and
// drops its holds at once, and stops the member. ctx bounds the revoke;
// past it the lease expires on its own within the TTL.
func (m *Member) Close(ctx context.Context) error {
	if m.closed.Swap(true) {
		return nil
	}
	// Stop the goroutines first, so no session is made after this one
	// is read; the session's keep-alive ends with them.
	m.cancel()
	m.wg.Wait()
	// Let the runs of Lead end before the lease goes, so that another
	// node's run never starts while one of this node's is still going.
	m.mu.Lock() // after this no run starts: see lead
	m.mu.Unlock()
	waitCtx(ctx, &m.runs)
	var err error
	if s := m.session(); s != nil {
		s.Orphan()
		rctx, cancel := context.WithTimeout(ctx, m.o.Timeout)
		if _, rerr := m.cli.Revoke(rctx, s.Lease()); rerr != nil {
			err = unavailable(ctx, "leave", rerr)
		}
		cancel()
	}
	m.cli.Close()
	m.log.Info("cluster: left")
	return err
}

// waitCtx waits for wg, or until ctx ends.
func waitCtx(ctx context.Context, wg *sync.WaitGroup) {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// Client is m's etcd client, for what else the node keeps in the store
// (its certificates, see cluster/certstore); valid until Close.
func (m *Member) Client() *clientv3.Client { return m.cli }
