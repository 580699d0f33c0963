package gateway

import (
	"context"
	"fmt"
	"time"
)

// HostAllowed reports whether a certificate may be ordered for host: it
// must belong to a registered or leased tunnel, and the tunnel's identity
// must be within its quota of certificate orders per hour. The gateway's
// ACME module asks it before every on-demand order.
func (s *Server) HostAllowed(_ context.Context, host string) error {
	name, ok := s.tunnelName(host)
	if !ok {
		return fmt.Errorf("host %q is not a tunnel of domain %q nor one of a tunnel's hosts", host, s.cfg.Domain)
	}
	t := s.reg.route(name)
	if t == nil {
		return fmt.Errorf("no tunnel named %q", name)
	}
	if t.udp {
		return fmt.Errorf("tunnel %q is a UDP tunnel: it has no HTTP address", name)
	}
	s.reg.mu.Lock()
	limit := t.quota.CertOrdersPerHour
	s.reg.mu.Unlock()
	if err := s.quotas.allowOrder(t.identity, name, limit, time.Now()); err != nil {
		t.log.Warn("certificate order refused", "host", host, "err", err)
		return err
	}
	return nil
}
