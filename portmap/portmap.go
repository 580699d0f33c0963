// Package portmap asks a home router to forward ports to this machine,
// over UPnP-IGD (the device's WANIPConnection or WANPPPConnection service),
// PCP (RFC 6887, its MAP opcode over IPv4) or NAT-PMP. Discover finds
// which of them the router on the local network answers and returns a
// Mapper for it; the Mapper learns the router's external address, adds
// mappings and deletes them.
//
// A router that reports a private external address (see IsPrivate) sits
// behind another NAT, so a mapping on it does not make anything reachable
// from the internet: callers should warn.
package portmap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"
)

// Protocol names, as Options.Protocol and Mapper.Protocol spell them.
const (
	ProtocolAuto   = "auto"
	ProtocolUPnP   = "upnp"
	ProtocolNATPMP = "natpmp"
	ProtocolPCP    = "pcp"
)

// DefaultLifetime is the lifetime Map asks for when Mapping.Lifetime is 0.
const DefaultLifetime = 2 * time.Hour

// defaultSearch bounds each protocol's discovery when Options.Timeout is 0.
const defaultSearch = 2 * time.Second

// ErrNotFound is returned (wrapped) by Discover when no router answered.
var ErrNotFound = errors.New("no router answered")

// ErrNoExternalAddress is returned (wrapped) by Mapper.ExternalIP when the
// router answered but says it has no usable external address, as routers
// do when their WAN address is itself private (double NAT or
// carrier-grade NAT) or not yet assigned.
var ErrNoExternalAddress = errors.New("router has no usable external address")

// Mapping is one port forwarded by the router.
type Mapping struct {
	// Proto is "tcp" or "udp".
	Proto string
	// InternalPort is the port on this machine.
	InternalPort uint16
	// ExternalPort is the port on the router's external address; 0 asks
	// for the same as InternalPort. Map returns the port granted.
	ExternalPort uint16
	// Lifetime is how long the router keeps the mapping; 0 means
	// DefaultLifetime. Map returns the lifetime granted.
	Lifetime time.Duration
	// Description is shown in the router's list (UPnP only).
	Description string
}

// Mapper forwards ports on one router.
type Mapper interface {
	// ExternalIP is the router's address on its WAN side.
	ExternalIP(ctx context.Context) (netip.Addr, error)
	// Map adds or renews m and returns what the router granted.
	Map(ctx context.Context, m Mapping) (Mapping, error)
	// Unmap deletes m (its Proto and ExternalPort, and InternalPort for
	// NAT-PMP and PCP; over PCP only a mapping this Mapper made).
	Unmap(ctx context.Context, m Mapping) error
	// Protocol is ProtocolUPnP, ProtocolPCP or ProtocolNATPMP.
	Protocol() string
}

// Options tell Discover where to look.
type Options struct {
	// Protocol is ProtocolAuto (the default when empty: UPnP first, then
	// PCP, then NAT-PMP), ProtocolUPnP, ProtocolPCP or ProtocolNATPMP.
	// A PCP mapping is for this machine: PrivateIP must be one of its
	// addresses.
	Protocol string
	// Gateway is the router's LAN address; the zero value means the
	// gateway of the default IPv4 route.
	Gateway netip.Addr
	// PrivateIP is this machine's address that the router forwards to;
	// the zero value means the local address used to reach Gateway.
	PrivateIP netip.Addr
	// Timeout bounds each protocol's discovery; 0 means 2s.
	Timeout time.Duration
	// Logger receives the Mapper's notices, such as a PCP router that
	// restarted and lost its mappings (Warn); nil discards them.
	Logger *slog.Logger
}

// Result is what Discover found.
type Result struct {
	// Mapper talks to the router that answered.
	Mapper Mapper
	// ExternalIP is the router's external address. When IsPrivate says
	// it is private, or it is the zero value because the router reported
	// none usable (ErrNoExternalAddress), the router is itself behind a
	// NAT (or offline) and its mappings make nothing public: warn.
	ExternalIP netip.Addr
}

// Discover finds the router and the protocol it answers, in the order
// UPnP-IGD, PCP, NAT-PMP (or only the one asked for), and asks it for its
// external address. A router that answers but has no usable external
// address is still returned, with a zero Result.ExternalIP.
func Discover(ctx context.Context, o Options) (Result, error) {
	if o.Timeout <= 0 {
		o.Timeout = defaultSearch
	}
	var protos []string
	switch o.Protocol {
	case "", ProtocolAuto:
		protos = []string{ProtocolUPnP, ProtocolPCP, ProtocolNATPMP}
	case ProtocolUPnP, ProtocolPCP, ProtocolNATPMP:
		protos = []string{o.Protocol}
	default:
		return Result{}, fmt.Errorf("portmap: unknown protocol %q (want auto, upnp, pcp or natpmp)", o.Protocol)
	}
	gw := o.Gateway
	if !gw.IsValid() {
		var err error
		if gw, err = DefaultGateway(); err != nil {
			return Result{}, fmt.Errorf("portmap: %w", err)
		}
	}
	local := o.PrivateIP
	if !local.IsValid() {
		var err error
		if local, err = localAddrTo(gw); err != nil {
			return Result{}, fmt.Errorf("portmap: local address toward %s: %w", gw, err)
		}
	}
	var errs []error
	for _, p := range protos {
		var m Mapper
		var err error
		switch p {
		case ProtocolUPnP:
			m, err = discoverUPnP(ctx, gw, local, o.Timeout)
		case ProtocolPCP:
			m = newPCP(netip.AddrPortFrom(gw, pcpPort), local, o.Timeout, o.Logger)
		case ProtocolNATPMP:
			m = newNATPMP(gw, o.Timeout)
		}
		if err == nil {
			var ip netip.Addr
			ip, err = m.ExternalIP(ctx)
			if err == nil || errors.Is(err, ErrNoExternalAddress) {
				return Result{Mapper: m, ExternalIP: ip}, nil
			}
		}
		errs = append(errs, fmt.Errorf("%s: %w", p, err))
		if ctx.Err() != nil {
			break
		}
	}
	return Result{}, fmt.Errorf("portmap: %w at %s: %w", ErrNotFound, gw, errors.Join(errs...))
}

// lifetimeOf returns m's lifetime or the default, in whole seconds (at
// least one).
func lifetimeOf(m Mapping) uint32 {
	d := m.Lifetime
	if d <= 0 {
		d = DefaultLifetime
	}
	s := d / time.Second
	if s < 1 {
		s = 1
	}
	if s > 1<<31 {
		s = 1 << 31
	}
	return uint32(s)
}

// check validates m.
func check(m Mapping) error {
	if m.Proto != "tcp" && m.Proto != "udp" {
		return fmt.Errorf("portmap: protocol %q: want tcp or udp", m.Proto)
	}
	if m.InternalPort == 0 {
		return errors.New("portmap: internal port 0")
	}
	return nil
}
