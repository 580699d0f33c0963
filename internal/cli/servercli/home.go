package servercli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/diglett/diglett/config"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/homenet"
)

// homeCloseTimeout bounds the deletion of the router's mappings and the
// firewall's rules at shutdown.
const homeCloseTimeout = 10 * time.Second

// startHome starts what the file's nat, firewall and dns sections ask for
// (nil without them) and adds its registerer to c.extraRegs. acme says
// the gateway orders certificates.
func (c *serverCmd) startHome(ctx context.Context, f *config.File, acme bool, log *slog.Logger) (*homenet.Exposer, *config.HomeSettings, error) {
	hs, err := f.HomeOptions(c.Domain)
	if err != nil || hs == nil {
		return nil, nil, err
	}
	if hs.ACME && !acme {
		return nil, nil, errors.New("dns.acme: certificates over DNS need ACME: set --acme-email, --acme-ca or --acme-staging")
	}
	o := hs.Options
	o.Logger = log.With("part", "home")
	// On a node of a cluster the router and the records are the
	// leader's to keep.
	o.Passive = f.Cluster != nil
	home, err := homenet.New(ctx, o)
	if err != nil {
		return nil, nil, err
	}
	c.extraRegs = append(c.extraRegs, home.Registerer())
	return home, hs, nil
}

// homeACME is how the dns section answers the DNS-01 challenge; nil
// unless it asks to.
func homeACME(home *homenet.Exposer, hs *config.HomeSettings) *dnsACME {
	if home == nil || hs == nil || !hs.ACME || home.DNS() == nil {
		return nil
	}
	return &dnsACME{provider: home.DNS().Provider(), resolvers: hs.Resolvers}
}

// closeHome deletes the router's mappings and the firewall's rules.
func closeHome(home *homenet.Exposer, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), homeCloseTimeout)
	defer cancel()
	if err := home.Close(ctx); err != nil {
		log.Warn("home network: not all undone at shutdown", "err", err)
	}
}

// gatewayState is what a gateway at home keeps reachable besides its
// tunnels: the agents' port (over UDP too with QUIC) and the shared HTTP
// and HTTPS ports (0 when off).
func gatewayState(agents net.Listener, quic bool, httpPort, httpsPort int, names []string) homenet.State {
	_, p, _ := net.SplitHostPort(agents.Addr().String())
	var port int
	fmt.Sscan(p, &port)
	s := homenet.State{Names: names, Ports: []homenet.Port{{Proto: "tcp", Port: uint16(port), Service: "agents"}}}
	if quic {
		s.Ports = append(s.Ports, homenet.Port{Proto: "udp", Port: uint16(port), Service: "agents over QUIC"})
	}
	if httpPort > 0 {
		s.Ports = append(s.Ports, homenet.Port{Proto: "tcp", Port: uint16(httpPort), Service: "HTTP"})
	}
	if httpsPort > 0 {
		s.Ports = append(s.Ports, homenet.Port{Proto: "tcp", Port: uint16(httpsPort), Service: "HTTPS"})
	}
	return s
}

// withExtraRegs is a gateway whose register list always ends with extra,
// whatever a reload sets.
type withExtraRegs struct {
	registererSetter
	extra []gateway.Registerer
}

func (w withExtraRegs) SetRegisterers(rgs []gateway.Registerer) {
	w.registererSetter.SetRegisterers(append(rgs[:len(rgs):len(rgs)], w.extra...))
}

// homeDigest words the home sections of f, so a reload can tell they
// changed (they take effect at a restart).
func homeDigest(f *config.File) string {
	if f == nil || f.Home == nil {
		return ""
	}
	var b strings.Builder
	for i, sec := range []map[string]config.Setting{f.Home.NAT, f.Home.Firewall, f.Home.DNS} {
		fmt.Fprintf(&b, "%d:%t", i, sec != nil)
		for _, k := range slices.Sorted(maps.Keys(sec)) {
			fmt.Fprintf(&b, " %s=%q", k, sec[k].Value)
		}
		b.WriteByte('\n')
	}
	return b.String()
}
