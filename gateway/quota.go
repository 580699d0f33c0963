package gateway

import (
	"fmt"
	"sync"
	"time"

	"github.com/diglett/diglett/internal/protocol"
)

// Default quotas of an identity (Config.Quota).
const (
	DefaultQuotaNames             = 64
	DefaultQuotaPorts             = 64
	DefaultQuotaSessions          = 64
	DefaultQuotaCertOrdersPerHour = 20
)

// quotaDefaults fills the zero fields of q with the package defaults.
func quotaDefaults(q Quota) Quota {
	return q.Or(Quota{
		Names:             DefaultQuotaNames,
		Ports:             DefaultQuotaPorts,
		Sessions:          DefaultQuotaSessions,
		CertOrdersPerHour: DefaultQuotaCertOrdersPerHour,
	})
}

// certOrderWindow is the window of the certificate-order quota.
const certOrderWindow = time.Hour

// quotas counts what each identity holds that the registry does not: its
// logged-in sessions and the hosts it had certificates ordered for. Names
// and ports are counted by the registry, which owns them.
type quotas struct {
	mu       sync.Mutex
	sessions map[string]int
	orders   map[string][]certOrder // identity -> approvals in the window, oldest first
}

type certOrder struct {
	host string
	at   time.Time
}

func newQuotas() *quotas {
	return &quotas{sessions: make(map[string]int), orders: make(map[string][]certOrder)}
}

// quotaError is the refusal for a reached quota, naming it.
func quotaError(identity string, limit int, what string) *protocol.Error {
	return refuse(protocol.CodeQuotaExceeded, "identity %q has reached its quota of %d %s", identity, limit, what)
}

// addSession counts a logged-in session of identity, unless that would
// exceed limit (negative: no limit). The caller calls removeSession when
// the session ends.
func (q *quotas) addSession(identity string, limit int) *protocol.Error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if limit >= 0 && q.sessions[identity] >= limit {
		return quotaError(identity, limit, "agent sessions at once")
	}
	q.sessions[identity]++
	return nil
}

func (q *quotas) removeSession(identity string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.sessions[identity]--; q.sessions[identity] <= 0 {
		delete(q.sessions, identity)
	}
}

// allowOrder decides whether a certificate may be ordered for host, a host
// of identity's tunnels, at now: each host counts once per window, and at
// most limit hosts (negative: no limit) per window. Only hosts of live or
// leased tunnels get here, so the map is bounded by the registry.
func (q *quotas) allowOrder(identity, host string, limit int, now time.Time) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.orders) > sweepAbove {
		q.sweepLocked(now)
	}
	recent := q.orders[identity]
	i := 0
	for i < len(recent) && now.Sub(recent[i].at) >= certOrderWindow {
		i++
	}
	recent = recent[i:]
	for _, o := range recent {
		if o.host == host {
			q.orders[identity] = recent
			return nil
		}
	}
	if limit == 0 {
		q.orders[identity] = recent
		return fmt.Errorf("identity %q may not order certificates (its quota is 0 per hour)", identity)
	}
	if limit > 0 && len(recent) >= limit {
		q.orders[identity] = recent
		retry := certOrderWindow - now.Sub(recent[0].at)
		return fmt.Errorf("identity %q has reached its quota of %d certificate orders per hour (next in %v)", identity, limit, retry.Round(time.Second))
	}
	q.orders[identity] = append(recent, certOrder{host: host, at: now})
	return nil
}

// sweepAbove is the number of identities with recent orders above which
// allowOrder also drops every identity's expired orders.
const sweepAbove = 1024

// sweepLocked drops the orders that left the window, for every identity.
func (q *quotas) sweepLocked(now time.Time) {
	for id, recent := range q.orders {
		if len(recent) == 0 || now.Sub(recent[len(recent)-1].at) >= certOrderWindow {
			delete(q.orders, id)
		}
	}
}
