package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Errors of the claims; they come wrapped with the name or port.
var (
	// ErrNameTaken: another identity owns the name in the cluster.
	ErrNameTaken = errors.New("name taken")
	// ErrPortTaken: the port asked for belongs to another name, the name
	// has another port, or no port of the range is free.
	ErrPortTaken = errors.New("port taken")
	// ErrUnavailable: etcd cannot be reached (or this node has no
	// session), so nothing that would need a check is granted.
	ErrUnavailable = errors.New("cluster store unavailable")
)

// Claim is a name of the cluster's namespace.
type Claim struct {
	Name string
	// Identity owns the name.
	Identity string
	// Port is the name's public port; 0 for none.
	Port int
	// Holders are the ids of the nodes serving the name, sorted.
	Holders []string
	// Rules are the words of the latest hold (HoldWith), as given; nil
	// when none were.
	Rules []byte
}

// The keys, under the prefix:
//
//	names/NAME          {"identity":..., "port":N}   no lease
//	ports/NNNNN         NAME                          no lease
//	holders/NAME/NODE   ""                            the node's session lease
//	orphans/NAME        when the last holder went     no lease
//
// Names hold no "/", so holders/NAME/ are exactly the name's holders.
type nameValue struct {
	Identity string `json:"identity"`
	Port     int    `json:"port,omitempty"`
}

func (m *Member) nameKey(name string) string       { return m.key("names/" + name) }
func (m *Member) portKey(port int) string          { return m.key(fmt.Sprintf("ports/%05d", port)) }
func (m *Member) holdersPrefix(name string) string { return m.key("holders/" + name + "/") }
func (m *Member) holderKey(name string) string     { return m.holdersPrefix(name) + m.o.Node }
func (m *Member) orphanKey(name string) string     { return m.key("orphans/" + name) }

// noOtherHolders compares true, inside a transaction, when no node other
// than this one holds name: no key in holders/NAME/ before or after this
// node's own.
func (m *Member) noOtherHolders(name string) []clientv3.Cmp {
	p, mine := m.holdersPrefix(name), m.holderKey(name)
	return []clientv3.Cmp{
		clientv3.Compare(clientv3.CreateRevision(p), "=", 0).WithRange(mine),
		clientv3.Compare(clientv3.CreateRevision(mine+"\x00"), "=", 0).WithRange(clientv3.GetPrefixRangeEnd(p)),
	}
}

// noHolders compares true, inside a transaction, when no node holds name.
func (m *Member) noHolders(name string) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(m.holdersPrefix(name)), "=", 0).WithPrefix()
}

func checkName(name string) error {
	if name == "" || len(name) > 253 || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("cluster: invalid name %q", name)
	}
	return nil
}

// maxConflicts bounds the transactions of one Hold beyond one per port
// of its range.
const maxConflicts = 16

// maxRules bounds the rules of one hold.
const maxRules = 16 << 10

// Hold claims name for identity and records that this node serves it.
// When the name is free it gets port, or with port 0 a free port of
// [portMin, portMax] (no port when the range is 0-0), in one transaction
// that fails if another node claimed the name or the port first (then it
// is tried again). When the name is identity's already, Hold returns its
// port (ErrPortTaken when another port is asked for); when it is another
// identity's, ErrNameTaken. The hold is a key on this node's session
// lease: it goes with the node. Without etcd, Hold fails with
// ErrUnavailable within Options.Timeout.
func (m *Member) Hold(ctx context.Context, name, identity string, port, portMin, portMax int) (Claim, error) {
	return m.HoldWith(ctx, name, identity, port, portMin, portMax, nil)
}

// HoldWith is Hold with rules, this node's words for how the name is
// served (a gateway's visitor rules), which the other members see in
// Claims (Claim.Rules: the rules of the latest hold). A hold made again
// with other rules replaces them.
func (m *Member) HoldWith(ctx context.Context, name, identity string, port, portMin, portMax int, rules []byte) (Claim, error) {
	if len(rules) > maxRules {
		return Claim{}, fmt.Errorf("cluster: hold %q: rules of %d bytes, at most %d", name, len(rules), maxRules)
	}
	if err := checkName(name); err != nil {
		return Claim{}, err
	}
	if identity == "" {
		return Claim{}, fmt.Errorf("cluster: hold %q: no identity", name)
	}
	if port < 0 || port > 65535 || portMin < 0 || portMax > 65535 || portMin > portMax || (portMin == 0) != (portMax == 0) {
		return Claim{}, fmt.Errorf("cluster: hold %q: invalid port %d or range %d-%d", name, port, portMin, portMax)
	}
	m.swap.RLock()
	defer m.swap.RUnlock()
	s := m.session()
	if s == nil {
		return Claim{}, fmt.Errorf("cluster: hold %q: %w (no etcd session)", name, ErrUnavailable)
	}
	what := fmt.Sprintf("hold %q", name)
	var claim Claim
	err := m.do(ctx, what, func(ctx context.Context) (err error) {
		claim, err = m.hold(ctx, s, what, name, identity, port, portMin, portMax, rules)
		return err
	})
	return claim, err
}

// hold is one try of Hold.
func (m *Member) hold(ctx context.Context, s *concurrency.Session, what, name, identity string, port, portMin, portMax int, rules []byte) (Claim, error) {
	nk, hk, ok := m.nameKey(name), m.holderKey(name), m.orphanKey(name)
	hold := clientv3.OpPut(hk, string(rules), clientv3.WithLease(s.Lease()))

	var free []int // the range's free ports, read once
	freeRead := false
	for range maxConflicts + (portMax - portMin + 1) {
		reads := []clientv3.Op{
			clientv3.OpGet(nk),
			clientv3.OpGet(m.holdersPrefix(name), clientv3.WithPrefix(), clientv3.WithKeysOnly()),
		}
		if port == 0 && portMin > 0 && !freeRead {
			reads = append(reads, clientv3.OpGet(m.portKey(portMin), clientv3.WithRange(m.portKey(portMax+1)), clientv3.WithKeysOnly()))
		}
		resp, err := m.cli.Txn(ctx).Then(reads...).Commit()
		if err != nil {
			return Claim{}, etcdError{err}
		}
		holders := m.holderIDs(name, resp.Responses[1].GetResponseRange().Kvs)
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			kv := kvs[0]
			var v nameValue
			if err := json.Unmarshal(kv.Value, &v); err != nil {
				return Claim{}, fmt.Errorf("cluster: %s: bad value in etcd: %w", what, err)
			}
			if v.Identity != identity {
				return Claim{}, fmt.Errorf("cluster: %s: %w: another identity owns it", what, ErrNameTaken)
			}
			if port != 0 && port != v.Port {
				return Claim{}, fmt.Errorf("cluster: %s: %w: the name keeps port %d", what, ErrPortTaken, v.Port)
			}
			tr, err := m.cli.Txn(ctx).
				If(clientv3.Compare(clientv3.ModRevision(nk), "=", kv.ModRevision)).
				Then(hold, clientv3.OpDelete(ok)).Commit()
			if err != nil {
				return Claim{}, etcdError{err}
			}
			if !tr.Succeeded {
				continue // changed in between: read again
			}
			m.setHeld(name, kv.Value, rules)
			return Claim{Name: name, Identity: identity, Port: v.Port, Holders: withID(holders, m.o.Node), Rules: rules}, nil
		}

		p := port
		if p == 0 && portMin > 0 {
			if !freeRead {
				free = freePorts(portMin, portMax, m.portNumbers(resp.Responses[2].GetResponseRange().Kvs))
				freeRead = true
			}
			if len(free) == 0 {
				return Claim{}, fmt.Errorf("cluster: %s: %w: no free port in %d-%d", what, ErrPortTaken, portMin, portMax)
			}
			p = free[rand.IntN(len(free))]
		}
		value, _ := json.Marshal(nameValue{Identity: identity, Port: p})
		conds := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(nk), "=", 0)}
		ops := []clientv3.Op{clientv3.OpPut(nk, string(value)), hold, clientv3.OpDelete(ok)}
		if p > 0 {
			conds = append(conds, clientv3.Compare(clientv3.CreateRevision(m.portKey(p)), "=", 0))
			ops = append(ops, clientv3.OpPut(m.portKey(p), name))
		}
		tr, err := m.cli.Txn(ctx).If(conds...).Then(ops...).Else(clientv3.OpGet(nk, clientv3.WithKeysOnly())).Commit()
		if err != nil {
			return Claim{}, etcdError{err}
		}
		if tr.Succeeded {
			m.setHeld(name, value, rules)
			return Claim{Name: name, Identity: identity, Port: p, Holders: []string{m.o.Node}, Rules: rules}, nil
		}
		if len(tr.Responses[0].GetResponseRange().Kvs) > 0 {
			continue // the name was claimed first: read it
		}
		// The port was taken first.
		if port != 0 {
			return Claim{}, fmt.Errorf("cluster: %s: %w: port %d belongs to another name", what, ErrPortTaken, port)
		}
		free = slices.DeleteFunc(free, func(q int) bool { return q == p })
	}
	return Claim{}, fmt.Errorf("cluster: %s: gave up after too many conflicting claims", what)
}

func (m *Member) setHeld(name string, value, rules []byte) {
	m.mu.Lock()
	m.held[name] = value
	m.rules[name] = rules
	m.mu.Unlock()
}

func (m *Member) dropHeld(name string) {
	m.mu.Lock()
	delete(m.held, name)
	delete(m.rules, name)
	m.mu.Unlock()
}

// holderIDs returns the node ids of holder keys of name.
func (m *Member) holderIDs(name string, kvs []*mvccpb.KeyValue) []string {
	p := m.holdersPrefix(name)
	ids := make([]string, 0, len(kvs))
	for _, kv := range kvs {
		ids = append(ids, strings.TrimPrefix(string(kv.Key), p))
	}
	slices.Sort(ids)
	return ids
}

func withID(ids []string, id string) []string {
	if i, found := slices.BinarySearch(ids, id); !found {
		ids = slices.Insert(ids, i, id)
	}
	return ids
}

// portNumbers returns the ports of port keys.
func (m *Member) portNumbers(kvs []*mvccpb.KeyValue) map[int]bool {
	used := make(map[int]bool, len(kvs))
	p := m.key("ports/")
	for _, kv := range kvs {
		var n int
		if _, err := fmt.Sscanf(strings.TrimPrefix(string(kv.Key), p), "%d", &n); err == nil {
			used[n] = true
		}
	}
	return used
}

func freePorts(lo, hi int, used map[int]bool) []int {
	var free []int
	for p := lo; p <= hi; p++ {
		if !used[p] {
			free = append(free, p)
		}
	}
	return free
}

// Unhold records that this node no longer serves name (its agents are
// gone); the name stays claimed. When no other node holds it either, the
// time is recorded in the same transaction, for Sweep.
func (m *Member) Unhold(ctx context.Context, name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	m.swap.RLock()
	defer m.swap.RUnlock()
	m.dropHeld(name)
	hk, ok := m.holderKey(name), m.orphanKey(name)
	conds := append(m.noOtherHolders(name),
		clientv3.Compare(clientv3.CreateRevision(m.nameKey(name)), ">", 0),
		clientv3.Compare(clientv3.CreateRevision(ok), "=", 0))
	return m.do(ctx, fmt.Sprintf("unhold %q", name), func(ctx context.Context) error {
		_, err := m.cli.Txn(ctx).If(conds...).
			Then(clientv3.OpDelete(hk), clientv3.OpPut(ok, time.Now().UTC().Format(time.RFC3339Nano))).
			Else(clientv3.OpDelete(hk)).Commit()
		if err != nil {
			return etcdError{err}
		}
		return nil
	})
}

// Release ends this node's hold of name because the tunnel's lease ended
// here, and frees the name and its port when no other node holds it:
// the "no other holder" condition is a comparison of the transaction
// that deletes them, so a hold put by another node at the same moment
// keeps the name.
func (m *Member) Release(ctx context.Context, name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	m.swap.RLock()
	defer m.swap.RUnlock()
	m.dropHeld(name)
	what := fmt.Sprintf("release %q", name)
	return m.do(ctx, what, func(ctx context.Context) error { return m.release(ctx, what, name) })
}

// release is one try of Release.
func (m *Member) release(ctx context.Context, what, name string) error {
	nk, hk := m.nameKey(name), m.holderKey(name)
	for range maxConflicts {
		resp, err := m.cli.Get(ctx, nk)
		if err != nil {
			return etcdError{err}
		}
		if len(resp.Kvs) == 0 {
			if _, err := m.cli.Delete(ctx, hk); err != nil {
				return etcdError{err}
			}
			return nil
		}
		kv := resp.Kvs[0]
		var v nameValue
		json.Unmarshal(kv.Value, &v)
		if m.testHookRelease != nil {
			m.testHookRelease(name)
		}
		conds := append(m.noOtherHolders(name), clientv3.Compare(clientv3.ModRevision(nk), "=", kv.ModRevision))
		ops := []clientv3.Op{clientv3.OpDelete(nk), clientv3.OpDelete(hk), clientv3.OpDelete(m.orphanKey(name))}
		if v.Port > 0 {
			ops = append(ops, clientv3.OpDelete(m.portKey(v.Port)))
		}
		tr, err := m.cli.Txn(ctx).If(conds...).Then(ops...).
			Else(clientv3.OpDelete(hk), clientv3.OpGet(nk, clientv3.WithKeysOnly())).Commit()
		if err != nil {
			return etcdError{err}
		}
		if tr.Succeeded {
			m.log.Info("cluster: released a name", "name", name, "port", v.Port)
			return nil
		}
		if kvs := tr.Responses[1].GetResponseRange().Kvs; len(kvs) == 0 || kvs[0].ModRevision == kv.ModRevision {
			// Another node holds it (or it is gone): it stays.
			return nil
		}
	}
	return fmt.Errorf("cluster: %s: gave up after too many conflicting changes", what)
}

// Lookup returns the claim of name and whether there is one.
func (m *Member) Lookup(ctx context.Context, name string) (Claim, bool, error) {
	if err := checkName(name); err != nil {
		return Claim{}, false, err
	}
	var resp *clientv3.TxnResponse
	err := m.do(ctx, fmt.Sprintf("lookup %q", name), func(ctx context.Context) (err error) {
		resp, err = m.cli.Txn(ctx).Then(
			clientv3.OpGet(m.nameKey(name)),
			clientv3.OpGet(m.holdersPrefix(name), clientv3.WithPrefix(), clientv3.WithKeysOnly()),
		).Commit()
		if err != nil {
			return etcdError{err}
		}
		return nil
	})
	if err != nil {
		return Claim{}, false, err
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return Claim{}, false, nil
	}
	var v nameValue
	if err := json.Unmarshal(kvs[0].Value, &v); err != nil {
		return Claim{}, false, fmt.Errorf("cluster: lookup %q: bad value in etcd: %w", name, err)
	}
	return Claim{Name: name, Identity: v.Identity, Port: v.Port, Holders: m.holderIDs(name, resp.Responses[1].GetResponseRange().Kvs)}, true, nil
}

// reputHolds puts this node's holder keys on lease for the names it
// still holds, each only while the name is still the one it held. It
// returns how many were kept, and logs those lost (released or claimed
// again while this node was away).
func (m *Member) reputHolds(ctx context.Context, lease clientv3.LeaseID) (int, error) {
	m.mu.Lock()
	held := make(map[string][]byte, len(m.held))
	rules := make(map[string][]byte, len(m.rules))
	for n, v := range m.held {
		held[n], rules[n] = v, m.rules[n]
	}
	m.mu.Unlock()
	kept := 0
	for name, value := range held {
		tr, err := m.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.Value(m.nameKey(name)), "=", string(value))).
			Then(clientv3.OpPut(m.holderKey(name), string(rules[name]), clientv3.WithLease(lease)), clientv3.OpDelete(m.orphanKey(name))).Commit()
		if err != nil {
			return 0, etcdError{err}
		}
		if tr.Succeeded {
			kept++
			continue
		}
		m.dropHeld(name)
		m.log.Warn("cluster: hold lost while etcd was away: the name was released or claimed again", "name", name)
	}
	return kept, nil
}

// Sweep releases the names no node has held for olderThan (a node died
// while it held the last hold, so no Release came). It is one pass, for
// the leader to run now and then (see Sweeper). "No holder since" is the
// time in orphans/NAME: written by Unhold when the last holder leaves,
// and by the first Sweep that sees a name with no holder (a node that
// died writes nothing); a new hold deletes it. It returns the names
// released.
func (m *Member) Sweep(ctx context.Context, olderThan time.Duration) ([]string, error) {
	var released []string
	err := m.do(ctx, "sweep", func(ctx context.Context) error {
		r, err := m.sweep(ctx, olderThan)
		released = append(released, r...)
		return err
	})
	return released, err
}

// sweep is one try of Sweep.
func (m *Member) sweep(ctx context.Context, olderThan time.Duration) ([]string, error) {
	resp, err := m.cli.Txn(ctx).Then(
		clientv3.OpGet(m.key("names/"), clientv3.WithPrefix()),
		clientv3.OpGet(m.key("holders/"), clientv3.WithPrefix(), clientv3.WithKeysOnly()),
		clientv3.OpGet(m.key("orphans/"), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, etcdError{err}
	}
	held := make(map[string]bool)
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		name, _, _ := strings.Cut(strings.TrimPrefix(string(kv.Key), m.key("holders/")), "/")
		held[name] = true
	}
	marks := make(map[string]*mvccpb.KeyValue)
	for _, kv := range resp.Responses[2].GetResponseRange().Kvs {
		marks[strings.TrimPrefix(string(kv.Key), m.key("orphans/"))] = kv
	}
	names := make(map[string]bool)
	var released []string
	now := time.Now()
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		name := strings.TrimPrefix(string(kv.Key), m.key("names/"))
		names[name] = true
		if held[name] {
			continue
		}
		nk, ok := m.nameKey(name), m.orphanKey(name)
		mark := marks[name]
		var since time.Time
		if mark != nil {
			since, _ = time.Parse(time.RFC3339Nano, string(mark.Value))
		}
		if mark == nil || since.IsZero() {
			markRev := int64(0)
			if mark != nil {
				markRev = mark.ModRevision
			}
			_, err := m.cli.Txn(ctx).
				If(clientv3.Compare(clientv3.ModRevision(nk), "=", kv.ModRevision), m.noHolders(name),
					clientv3.Compare(clientv3.ModRevision(ok), "=", markRev)).
				Then(clientv3.OpPut(ok, now.UTC().Format(time.RFC3339Nano))).Commit()
			if err != nil {
				return released, etcdError{err}
			}
			continue
		}
		if now.Sub(since) < olderThan {
			continue
		}
		var v nameValue
		json.Unmarshal(kv.Value, &v)
		ops := []clientv3.Op{clientv3.OpDelete(nk), clientv3.OpDelete(ok)}
		if v.Port > 0 {
			ops = append(ops, clientv3.OpDelete(m.portKey(v.Port)))
		}
		tr, err := m.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(nk), "=", kv.ModRevision), m.noHolders(name),
				clientv3.Compare(clientv3.ModRevision(ok), "=", mark.ModRevision)).
			Then(ops...).Commit()
		if err != nil {
			return released, etcdError{err}
		}
		if tr.Succeeded {
			released = append(released, name)
			m.log.Info("cluster: released a name no node holds", "name", name, "port", v.Port, "unheld_since", since)
		}
	}
	// Marks of names that are held again or gone.
	for name, mark := range marks {
		if names[name] && !held[name] {
			continue
		}
		ok := m.orphanKey(name)
		if _, err := m.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(ok), "=", mark.ModRevision)).
			Then(clientv3.OpDelete(ok)).Commit(); err != nil {
			return released, etcdError{err}
		}
	}
	return released, nil
}

// Sweeper returns a run for Lead that calls Sweep every quarter of
// olderThan (between 200ms and 30s) until its ctx ends, so a name no
// node holds is released between olderThan and about 1.5 olderThan after
// its last holder went.
func (m *Member) Sweeper(olderThan time.Duration) func(ctx context.Context) {
	every := min(max(olderThan/4, 200*time.Millisecond), 30*time.Second)
	return func(ctx context.Context) {
		t := time.NewTicker(every)
		defer t.Stop()
		failing := false
		for {
			if _, err := m.Sweep(ctx, olderThan); err != nil && ctx.Err() == nil {
				if !failing {
					m.log.Warn("cluster: sweep failed", "error", err)
				}
				failing = true
			} else if err == nil && failing {
				m.log.Info("cluster: sweep works again")
				failing = false
			}
			select {
			case <-t.C:
			case <-ctx.Done():
				return
			}
		}
	}
}
