// Package homenet makes a machine behind a home router reachable from the
// internet. From one desired state, which the latest Set replaces, it
// keeps ports forwarded on the router (package portmap: UPnP-IGD, PCP or
// NAT-PMP), open in the host firewall (package firewall) and DNS names
// pointing at the router's public address (package dnsupdate), and it
// repairs each of them when they drift: a router that rebooted, a
// firewall that was flushed, a public address that changed.
//
// The gateway feeds an Exposer its own ports with Set and each tunnel's
// public port through Registerer; the portmap command of diglett-server
// feeds one from a service catalog.
package homenet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/diglett/diglett/dnsupdate"
	"github.com/diglett/diglett/firewall"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/portmap"
)

// Defaults of NATOptions.
const (
	DefaultRefresh  = 60 * time.Second
	DefaultLifetime = 300 * time.Second
)

// roundTimeout bounds one round of changes to the router, the firewall
// and DNS.
const roundTimeout = 30 * time.Second

// Port is one port to make reachable.
type Port struct {
	// Proto is "tcp" or "udp".
	Proto string
	Port  uint16
	// Service says what the port is for, in the router's list and the
	// logs ("agents", "tunnel example").
	Service string
}

// State is what should be reachable.
type State struct {
	Ports []Port
	// Names are the DNS names, in DNSOptions' zone, that should point
	// at the public address ("example.com", "*.example.com").
	Names []string
}

// NATOptions configure port mapping on the router. Zero values take the
// documented defaults.
type NATOptions struct {
	// Protocol is "auto" (the default), "upnp", "pcp" or "natpmp".
	Protocol string
	// Refresh is how often mappings are renewed (which also puts back
	// the ones a rebooted router lost), the router looked for again when
	// none answered, and its public address checked. Default 60s.
	Refresh time.Duration
	// Lifetime is what each mapping is asked for: a mapping that is not
	// renewed, because the gateway was killed, say, is gone after it.
	// Default 300s; longer than Refresh.
	Lifetime time.Duration
	// PrivateIP is this machine's address the router forwards to;
	// default the address used to reach the router.
	PrivateIP netip.Addr
	// Router is the router's LAN address; default the default route's
	// gateway.
	Router netip.Addr
}

// DNSOptions configure the DNS records.
type DNSOptions struct {
	// Update is the primary server, the zone and the key.
	Update dnsupdate.Options
	// Addresses, when set, are what the names point at. Otherwise they
	// point at the router's public address, which needs NAT.
	Addresses []netip.Addr
	// PerTunnel adds one record per tunnel host in the zone (what the
	// Registerer's routes carry), for zones without a wildcard.
	PerTunnel bool
}

// Options configure an Exposer: each of NAT, Firewall and DNS is used
// when set.
type Options struct {
	NAT      *NATOptions
	Firewall *firewall.Options
	DNS      *DNSOptions
	// Logger receives what is done and what failed; nil discards it.
	Logger *slog.Logger
	// Passive starts the Exposer without keeping what the nodes of a
	// cluster share (the router's mappings, the DNS records) until
	// SetShared(true): a node of a cluster that may not lead.
	Passive bool
}

// Exposer keeps a desired State reachable. It is safe for concurrent use.
type Exposer struct {
	o   Options
	log *slog.Logger
	fw  *firewall.Firewall
	dns *dnsupdate.Client

	mu       sync.Mutex
	base     State
	routes   map[*route]struct{}
	external netip.Addr
	learnt   bool // external was learnt from the router
	passive  bool // SetShared(false): the router and the records are another node's to keep
	protocol string
	closed   bool

	wake chan struct{}
	stop context.CancelFunc
	done chan struct{}

	// Shared with run: the router, once found.
	keeper *portmap.Keeper
	// discover finds the router: portmap.Discover, or a test's router.
	discover func(context.Context, portmap.Options) (portmap.Result, error)
}

// closing says whether Close has begun.
func (e *Exposer) closing() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.closed
}

// route is what one tunnel adds to the state.
type route struct {
	port  Port
	names []string
}

// New checks o and starts an Exposer with an empty state. The firewall
// is set up at once, so a machine where it cannot be fails here; the
// router is looked for in the background, again at every refresh until
// one answers.
func New(ctx context.Context, o Options) (*Exposer, error) {
	return build(ctx, o, portmap.Discover)
}

// build is New with the way to find the router given.
func build(ctx context.Context, o Options, discover func(context.Context, portmap.Options) (portmap.Result, error)) (*Exposer, error) {
	if o.NAT == nil && o.Firewall == nil && o.DNS == nil {
		return nil, errors.New("homenet: nothing to do: no nat, firewall or dns settings")
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if n := o.NAT; n != nil {
		nc := *n
		switch nc.Protocol {
		case "":
			nc.Protocol = portmap.ProtocolAuto
		case portmap.ProtocolAuto, portmap.ProtocolUPnP, portmap.ProtocolNATPMP, portmap.ProtocolPCP:
		default:
			return nil, fmt.Errorf("homenet: nat: unknown protocol %q (want auto, upnp, pcp or natpmp)", nc.Protocol)
		}
		if nc.Refresh == 0 {
			nc.Refresh = DefaultRefresh
		}
		if nc.Lifetime == 0 {
			nc.Lifetime = DefaultLifetime
		}
		if nc.Refresh < time.Second || nc.Lifetime < 2*time.Second {
			return nil, fmt.Errorf("homenet: nat: refresh %v and lifetime %v: want at least 1s and 2s", nc.Refresh, nc.Lifetime)
		}
		if nc.Refresh >= nc.Lifetime {
			return nil, fmt.Errorf("homenet: nat: refresh %v must be shorter than lifetime %v, or mappings lapse between renewals", nc.Refresh, nc.Lifetime)
		}
		o.NAT = &nc
	}
	e := &Exposer{
		o:        o,
		passive:  o.Passive,
		log:      log,
		routes:   make(map[*route]struct{}),
		wake:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		discover: discover,
	}
	if d := o.DNS; d != nil {
		if len(d.Addresses) == 0 && o.NAT == nil {
			return nil, errors.New("homenet: dns: no address to point the names at: give addresses, or nat settings to learn the router's public address")
		}
		u := d.Update
		if u.Logger == nil {
			u.Logger = log
		}
		c, err := dnsupdate.New(u)
		if err != nil {
			return nil, err
		}
		e.dns = c
	}
	if o.Firewall != nil {
		fo := *o.Firewall
		if fo.Logger == nil {
			fo.Logger = log
		}
		fw, err := firewall.New(ctx, fo)
		if err != nil {
			return nil, err
		}
		e.fw = fw
	}
	runCtx, cancel := context.WithCancel(context.Background())
	e.stop = cancel
	go e.run(runCtx)
	return e, nil
}

// Set makes s the state kept, beside the tunnels' routes (the latest Set
// wins). The changes are made in the background, at once.
func (e *Exposer) Set(s State) {
	e.mu.Lock()
	e.base = State{Ports: slices.Clone(s.Ports), Names: slices.Clone(s.Names)}
	e.mu.Unlock()
	e.poke()
}

// ExternalIP is the router's public address as last learnt, and the
// protocol the router answered; zero values until a router answered.
func (e *Exposer) ExternalIP() (netip.Addr, string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.external, e.protocol
}

// SetShared says whether this Exposer keeps what the nodes of a cluster
// share (the default): the router's port mappings and the DNS records.
// Among the nodes of a cluster only the leader does, so that they do not
// map the same ports to different machines or overwrite each other's
// records; a node that stops keeping them deletes its mappings, for the
// next leader to make. The firewall, this machine's own, is always kept.
func (e *Exposer) SetShared(active bool) {
	e.mu.Lock()
	e.passive = !active
	e.mu.Unlock()
	e.poke()
}

// DNS is the client of the dns settings' name server (the DNS-01
// challenge of the gateway's certificates goes through it); nil without
// them.
func (e *Exposer) DNS() *dnsupdate.Client { return e.dns }

// Registerer makes each tunnel's public port (TCP, or UDP for a UDP
// tunnel) reachable while the tunnel is (and, with DNSOptions.PerTunnel, its hosts in the zone).
func (e *Exposer) Registerer() gateway.Registerer { return registerer{e} }

type registerer struct{ e *Exposer }

var _ gateway.Registerer = registerer{}

// Register adds r to the state; the Closer removes it.
func (g registerer) Register(_ context.Context, r gateway.Route) (io.Closer, error) {
	if r.Port <= 0 || r.Port > 65535 {
		return nil, fmt.Errorf("homenet: tunnel %s: port %d", r.Name, r.Port)
	}
	proto := "tcp"
	if r.UDP {
		proto = "udp"
	}
	rt := &route{port: Port{Proto: proto, Port: uint16(r.Port), Service: "tunnel " + r.Name}}
	if d := g.e.o.DNS; d != nil && d.PerTunnel {
		for _, h := range r.Hosts {
			if inZone(h, d.Update.Zone) {
				rt.names = append(rt.names, h)
			}
		}
	}
	g.e.mu.Lock()
	if g.e.closed {
		g.e.mu.Unlock()
		return nil, errors.New("homenet: closed")
	}
	g.e.routes[rt] = struct{}{}
	g.e.mu.Unlock()
	g.e.poke()
	return closerFunc(func() error {
		g.e.mu.Lock()
		delete(g.e.routes, rt)
		g.e.mu.Unlock()
		g.e.poke()
		return nil
	}), nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// state is the whole desired state: the base and the routes, ports
// deduplicated by protocol and number (the first service kept) and sorted.
func (e *Exposer) state() State {
	e.mu.Lock()
	defer e.mu.Unlock()
	type key struct {
		proto string
		port  uint16
	}
	ports := map[key]Port{}
	names := map[string]bool{}
	addPorts := func(ps ...Port) {
		for _, p := range ps {
			if _, ok := ports[key{p.Proto, p.Port}]; !ok {
				ports[key{p.Proto, p.Port}] = p
			}
		}
	}
	addNames := func(ns []string) {
		for _, n := range ns {
			names[strings.ToLower(strings.TrimSuffix(n, "."))] = true
		}
	}
	addPorts(e.base.Ports...)
	addNames(e.base.Names)
	for r := range e.routes {
		addPorts(r.port)
		addNames(r.names)
	}
	s := State{Ports: slices.Collect(maps.Values(ports)), Names: slices.Sorted(maps.Keys(names))}
	slices.SortFunc(s.Ports, func(a, b Port) int {
		if a.Port != b.Port {
			return int(a.Port) - int(b.Port)
		}
		return strings.Compare(a.Proto, b.Proto)
	})
	return s
}

func (e *Exposer) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// Close stops keeping the state: the router's mappings and the firewall's
// rules are deleted, within ctx. DNS records are left in place: the
// address they give stays right, and a restart should not make the names
// vanish from resolvers' caches.
func (e *Exposer) Close(ctx context.Context) error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	e.mu.Unlock()
	e.stop()
	<-e.done
	var errs []error
	if e.keeper != nil {
		n := len(e.keeper.Mappings())
		if err := e.keeper.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("port mappings: %w", err))
		} else if n > 0 {
			e.log.Info("port mappings deleted from the router", "mappings", n)
		}
	}
	if e.fw != nil {
		if err := e.fw.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("firewall: %w", err))
		}
	}
	return errors.Join(errs...)
}

// run applies the state on every change and every refresh.
func (e *Exposer) run(ctx context.Context) {
	defer close(e.done)
	every := time.Minute
	if e.o.NAT != nil {
		every = e.o.NAT.Refresh
	}
	r := &rounds{applied: map[string]string{}}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.wake:
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, roundTimeout)
		e.round(rctx, r)
		cancel()
		if ctx.Err() != nil {
			return
		}
		t.Reset(every)
	}
}

// rounds is what run carries from one round to the next.
type rounds struct {
	mapper   portmap.Mapper
	searched bool              // a router was looked for and none answered
	applied  map[string]string // DNS name -> the addresses it was given
	failing  map[string]bool   // what failed last round, so a streak is logged once
}

func (r *rounds) fail(what string) bool {
	if r.failing == nil {
		r.failing = map[string]bool{}
	}
	first := !r.failing[what]
	r.failing[what] = true
	return first
}

func (r *rounds) ok(what string) bool {
	was := r.failing[what]
	delete(r.failing, what)
	return was
}

// round makes the router, the firewall and DNS match the state.
func (e *Exposer) round(ctx context.Context, r *rounds) {
	s := e.state()
	e.mu.Lock()
	off := e.passive
	e.mu.Unlock()
	switch {
	case e.o.NAT == nil:
	case off:
		// Kept by another node from now on.
		if e.keeper != nil {
			if err := e.keeper.Close(ctx); err != nil {
				e.log.Warn("port mappings not all deleted on handing them over", "err", err)
			}
			e.keeper, r.mapper = nil, nil
			e.log.Info("port mappings handed over to the cluster's leader")
		}
	default:
		e.roundNAT(ctx, r, s)
	}
	if e.fw != nil {
		fp := make([]firewall.Port, len(s.Ports))
		for i, p := range s.Ports {
			fp[i] = firewall.Port{Proto: p.Proto, Port: p.Port}
		}
		if err := e.fw.Set(ctx, fp); err != nil {
			if r.fail("firewall") {
				e.log.Warn("firewall rules not set; trying again", "err", err)
			}
		} else if r.ok("firewall") {
			e.log.Info("firewall rules set", "ports", len(fp))
		}
	}
	switch {
	case e.dns == nil:
	case off:
		// Written by another node from now on: written again here
		// when this one keeps them again.
		clear(r.applied)
	default:
		e.roundDNS(ctx, r, s)
	}
}

func (e *Exposer) roundNAT(ctx context.Context, r *rounds, s State) {
	n := e.o.NAT
	if r.mapper == nil {
		res, err := e.discover(ctx, portmap.Options{Protocol: n.Protocol, Gateway: n.Router, PrivateIP: n.PrivateIP, Logger: e.log})
		if err != nil {
			if r.fail("discover") {
				e.log.Warn("no router answered for port mapping; looking again at every refresh", "protocol", n.Protocol, "refresh", n.Refresh, "err", err)
			}
			return
		}
		if lost, gone := r.ok("discover"), r.ok("external"); lost || gone {
			e.log.Info("router answers again")
		}
		r.mapper = res.Mapper
		e.keeper = portmap.NewKeeper(res.Mapper, portmap.KeeperOptions{Refresh: n.Refresh, Logger: e.log})
		e.mu.Lock()
		e.protocol = res.Mapper.Protocol()
		e.mu.Unlock()
		e.log.Info("router found for port mapping", "protocol", res.Mapper.Protocol(), "external_ip", addrString(res.ExternalIP))
		e.setExternal(res.ExternalIP)
	} else {
		ip, err := r.mapper.ExternalIP(ctx)
		switch {
		case err == nil || errors.Is(err, portmap.ErrNoExternalAddress):
			r.ok("external")
			e.setExternal(ip)
		case e.closing():
			// Cut short by Close, not lost: Close deletes the
			// mappings through the keeper, which must stay.
			return
		default:
			// Gone, or moved (a router that restarted on other ports):
			// look for it again.
			if r.fail("external") {
				e.log.Warn("router did not answer; looking for it again", "protocol", r.mapper.Protocol(), "err", err)
			}
			e.keeper.Close(ctx)
			e.keeper, r.mapper = nil, nil
			return
		}
	}
	want := make([]portmap.Mapping, len(s.Ports))
	for i, p := range s.Ports {
		want[i] = portmap.Mapping{Proto: p.Proto, InternalPort: p.Port, ExternalPort: p.Port,
			Lifetime: n.Lifetime, Description: "diglett " + p.Service}
	}
	if err := e.keeper.Set(ctx, want); err != nil {
		if r.fail("map") {
			e.log.Warn("port mappings not all made; trying again at every refresh", "protocol", r.mapper.Protocol(), "err", err)
		}
	} else if r.ok("map") || len(want) > 0 {
		e.log.Debug("port mappings in place", "protocol", r.mapper.Protocol(), "mappings", len(want))
	}
}

// setExternal records the router's public address, and says when it
// changed and when it is not public.
func (e *Exposer) setExternal(ip netip.Addr) {
	e.mu.Lock()
	old, learnt := e.external, e.learnt
	e.external, e.learnt = ip, true
	e.mu.Unlock()
	if learnt && old == ip {
		return
	}
	if old.IsValid() {
		e.log.Info("public address changed", "old", old.String(), "new", addrString(ip))
	}
	if !ip.IsValid() || portmap.IsPrivate(ip) {
		e.log.Warn("the router's own external address is not public ("+addrString(ip)+"): it is behind another NAT (double NAT or carrier-grade NAT), so port mapping cannot make this machine reachable from the internet; ask the provider for a public address, or run the gateway on a machine that has one",
			"external_ip", addrString(ip))
	}
}

func (e *Exposer) roundDNS(ctx context.Context, r *rounds, s State) {
	addrs := e.o.DNS.Addresses
	if len(addrs) == 0 {
		ip, _ := e.ExternalIP()
		if !ip.IsValid() {
			return // the router has not told it yet
		}
		addrs = []netip.Addr{ip}
	}
	var words []string
	for _, a := range addrs {
		words = append(words, a.String())
	}
	val := strings.Join(words, ",")
	for _, name := range s.Names {
		if r.applied[name] == val {
			continue
		}
		if err := e.dns.SetAddrs(ctx, name, addrs); err != nil {
			if r.fail("dns " + name) {
				e.log.Warn("DNS record not updated; trying again at every refresh", "name", name, "addrs", val, "err", err)
			}
			continue
		}
		r.ok("dns " + name)
		r.applied[name] = val
		e.log.Info("DNS record updated", "name", name, "addrs", val)
	}
	for name := range r.applied {
		if slices.Contains(s.Names, name) {
			continue
		}
		if err := e.dns.Delete(ctx, name); err != nil {
			if r.fail("dns " + name) {
				e.log.Warn("DNS record not deleted; trying again at every refresh", "name", name, "err", err)
			}
			continue
		}
		r.ok("dns " + name)
		delete(r.applied, name)
		e.log.Info("DNS record deleted", "name", name)
	}
}

// inZone reports whether name is zone or below it.
func inZone(name, zone string) bool {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	zone = strings.ToLower(strings.TrimSuffix(zone, "."))
	return zone != "" && (name == zone || strings.HasSuffix(name, "."+zone))
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return "none"
	}
	return a.String()
}
