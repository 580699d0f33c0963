package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Claims are the names of the cluster: each with its owner, its port,
// the nodes holding it (sorted; none while its agents are away and its
// lease runs) and the rules of its latest hold, as a watch of the store
// last saw them, sorted by name.
func (m *Member) Claims() []Claim { return slices.Clone(*m.claims.Load()) }

// ClaimChanges is signalled (coalesced, capacity 1) when Claims changes.
func (m *Member) ClaimChanges() <-chan struct{} { return m.claimChanges }

// watchClaims keeps Claims from the names/ and holders/ keys: a read of
// both, then a watch of the whole prefix from the next revision, read
// again whenever the watch breaks (compaction, etcd away).
func (m *Member) watchClaims() {
	defer m.wg.Done()
	names, holders := m.key("names/"), m.key("holders/")
	for m.ctx.Err() == nil {
		ctx, cancel := m.opCtx(m.ctx)
		resp, err := m.cli.Txn(ctx).Then(
			clientv3.OpGet(names, clientv3.WithPrefix()),
			clientv3.OpGet(holders, clientv3.WithPrefix()),
		).Commit()
		cancel()
		if err != nil {
			select {
			case <-time.After(250 * time.Millisecond):
			case <-m.ctx.Done():
			}
			continue
		}
		owners := map[string]nameValue{}
		held := map[string]map[string]holdValue{}
		apply := func(kv *mvccpb.KeyValue, deleted bool) {
			k := string(kv.Key)
			switch {
			case strings.HasPrefix(k, names):
				name := strings.TrimPrefix(k, names)
				var v nameValue
				if deleted {
					delete(owners, name)
				} else if json.Unmarshal(kv.Value, &v) == nil {
					owners[name] = v
				}
			case strings.HasPrefix(k, holders):
				name, node, ok := strings.Cut(strings.TrimPrefix(k, holders), "/")
				if !ok {
					return
				}
				if deleted {
					delete(held[name], node)
					if len(held[name]) == 0 {
						delete(held, name)
					}
				} else {
					if held[name] == nil {
						held[name] = map[string]holdValue{}
					}
					held[name][node] = holdValue{rules: kv.Value, rev: kv.ModRevision}
				}
			}
		}
		for _, r := range resp.Responses {
			for _, kv := range r.GetResponseRange().Kvs {
				apply(kv, false)
			}
		}
		m.publishClaims(owners, held)
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(m.ctx))
		for wr := range m.cli.Watch(wctx, m.o.Prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
			if wr.Err() != nil {
				break
			}
			for _, ev := range wr.Events {
				apply(ev.Kv, ev.Type == mvccpb.DELETE)
			}
			m.publishClaims(owners, held)
		}
		wcancel()
	}
}

// publishClaims stores the held names as Claims when they changed.
// holdValue is a holder key's rules and when they were written.
type holdValue struct {
	rules []byte
	rev   int64
}

func (m *Member) publishClaims(owners map[string]nameValue, held map[string]map[string]holdValue) {
	next := make([]Claim, 0, len(owners))
	for name, v := range owners {
		nodes := held[name]
		var hs []string
		var latest holdValue
		for n, h := range nodes {
			hs = append(hs, n)
			if h.rev > latest.rev {
				latest = h
			}
		}
		slices.Sort(hs)
		var rules []byte
		if len(latest.rules) > 0 {
			rules = latest.rules
		}
		next = append(next, Claim{Name: name, Identity: v.Identity, Port: v.Port, Holders: hs, Rules: rules})
	}
	slices.SortFunc(next, func(a, b Claim) int { return strings.Compare(a.Name, b.Name) })
	if slices.EqualFunc(*m.claims.Load(), next, sameClaim) {
		return
	}
	m.claims.Store(&next)
	select {
	case m.claimChanges <- struct{}{}:
	default:
	}
}

func sameClaim(a, b Claim) bool {
	return a.Name == b.Name && a.Identity == b.Identity && a.Port == b.Port && slices.Equal(a.Holders, b.Holders) && bytes.Equal(a.Rules, b.Rules)
}
