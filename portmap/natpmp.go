package portmap

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	natpmp "github.com/jackpal/go-nat-pmp"
)

var _ Mapper = (*natpmpMapper)(nil)

// natpmpMapper maps ports over NAT-PMP.
type natpmpMapper struct {
	gw      netip.Addr
	timeout time.Duration
}

func newNATPMP(gw netip.Addr, timeout time.Duration) *natpmpMapper {
	return &natpmpMapper{gw: gw, timeout: timeout}
}

func (n *natpmpMapper) Protocol() string { return ProtocolNATPMP }

// client returns a client whose requests (with their retries) end by
// ctx's deadline or n.timeout, whichever is first.
func (n *natpmpMapper) client(ctx context.Context) (*natpmp.Client, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t := n.timeout
	if d, ok := ctx.Deadline(); ok && time.Until(d) < t {
		t = time.Until(d)
	}
	return natpmp.NewClientWithTimeout(net.IP(n.gw.AsSlice()), t), nil
}

func (n *natpmpMapper) ExternalIP(ctx context.Context) (netip.Addr, error) {
	c, err := n.client(ctx)
	if err != nil {
		return netip.Addr{}, err
	}
	r, err := c.GetExternalAddress()
	if err != nil {
		// Result code 3 is "network failure": the router has no
		// usable WAN address (the library reports codes only as text).
		if strings.Contains(err.Error(), "result code 3") {
			return netip.Addr{}, fmt.Errorf("external address: %w: %w", ErrNoExternalAddress, err)
		}
		return netip.Addr{}, fmt.Errorf("external address: %w", err)
	}
	ip := netip.AddrFrom4(r.ExternalIPAddress)
	if ip.IsUnspecified() {
		return netip.Addr{}, fmt.Errorf("external address %v: %w", ip, ErrNoExternalAddress)
	}
	return ip, nil
}

func (n *natpmpMapper) Map(ctx context.Context, m Mapping) (Mapping, error) {
	if err := check(m); err != nil {
		return Mapping{}, err
	}
	c, err := n.client(ctx)
	if err != nil {
		return Mapping{}, err
	}
	ext := m.ExternalPort
	if ext == 0 {
		ext = m.InternalPort
	}
	r, err := c.AddPortMapping(m.Proto, int(m.InternalPort), int(ext), int(lifetimeOf(m)))
	if err != nil {
		return Mapping{}, fmt.Errorf("portmap: natpmp map %s %d: %w", m.Proto, m.InternalPort, err)
	}
	m.ExternalPort = r.MappedExternalPort
	m.Lifetime = time.Duration(r.PortMappingLifetimeInSeconds) * time.Second
	return m, nil
}

// Unmap deletes the mapping of m's internal port (NAT-PMP names a mapping
// by its internal port).
func (n *natpmpMapper) Unmap(ctx context.Context, m Mapping) error {
	if err := check(m); err != nil {
		return err
	}
	c, err := n.client(ctx)
	if err != nil {
		return err
	}
	if _, err := c.AddPortMapping(m.Proto, int(m.InternalPort), 0, 0); err != nil {
		return fmt.Errorf("portmap: natpmp unmap %s %d: %w", m.Proto, m.InternalPort, err)
	}
	return nil
}
