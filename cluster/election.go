package cluster

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Lead campaigns in election (an etcd election on this node's session)
// and calls run while this node leads, for the work that must run once
// per cluster. run's ctx ends when leadership is lost: the session ends,
// etcd stops answering (so a node that cannot prove it leads stops before
// its lease could expire), or the leader key goes. Lead waits for run to
// return, resigns and campaigns again; it returns when ctx ends or the
// member is closed. run must return when its ctx ends.
func (m *Member) Lead(ctx context.Context, election string, run func(ctx context.Context)) {
	pfx := m.key("elections/" + election)
	log := m.log.With("election", election)
	for {
		s, err := m.waitSession(ctx)
		if err != nil {
			return
		}
		lctx, cancel := context.WithCancel(ctx)
		stopClosed := context.AfterFunc(m.ctx, cancel)
		stopLost := context.AfterFunc(s.Ctx(), cancel)
		e := concurrency.NewElection(s, pfx)
		err = e.Campaign(lctx, m.o.Node)
		if err == nil {
			log.Info("cluster: leading")
			m.lead(lctx, e, run)
			log.Info("cluster: leadership ended")
			rctx, rcancel := context.WithTimeout(context.Background(), m.o.Timeout)
			e.Resign(rctx) // best effort: the lease takes the key otherwise
			rcancel()
		}
		stopClosed()
		stopLost()
		cancel()
		if ctx.Err() != nil || m.ctx.Err() != nil {
			return
		}
		if err != nil {
			log.Debug("cluster: campaign", "error", err)
		}
		// A pause between rounds, so a run that returns at once, or an
		// etcd that fails at once, does not spin.
		select {
		case <-time.After(m.o.TTL / 10):
		case <-ctx.Done():
			return
		case <-m.ctx.Done():
			return
		}
	}
}

// lead runs run while e's leader key stays and etcd answers.
func (m *Member) lead(ctx context.Context, e *concurrency.Election, run func(ctx context.Context)) {
	m.mu.Lock()
	if m.ctx.Err() != nil {
		m.mu.Unlock()
		return
	}
	m.runs.Add(1)
	m.mu.Unlock()
	defer m.runs.Done()
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer cancel()
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(rctx))
		defer wcancel()
		wch := m.cli.Watch(wctx, e.Key(), clientv3.WithRev(e.Header().Revision+1))
		t := time.NewTicker(m.o.TTL / 20)
		defer t.Stop()
		for {
			select {
			case wr, ok := <-wch:
				if !ok || wr.Err() != nil {
					return
				}
				for _, ev := range wr.Events {
					if ev.Type == mvccpb.DELETE {
						return
					}
				}
			case <-t.C:
				if !m.reachable.Load() {
					return
				}
			case <-rctx.Done():
				return
			}
		}
	}()
	run(rctx)
	cancel()
	<-done
}

// Leader returns the node id leading election, or "" when none does.
func (m *Member) Leader(ctx context.Context, election string) (string, error) {
	var resp *clientv3.GetResponse
	err := m.do(ctx, fmt.Sprintf("leader of %q", election), func(ctx context.Context) (err error) {
		if resp, err = m.cli.Get(ctx, m.key("elections/"+election)+"/", clientv3.WithFirstCreate()...); err != nil {
			return etcdError{err}
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Value), nil
}
