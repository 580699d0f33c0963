// Package firewall opens a set of ports in the host firewall and keeps
// them open: the rules live in a table and chain of their own (nftables'
// `table inet diglett`, or iptables' DIGLETT chain), a refresh loop puts
// back whatever an outside flush removed, and Close removes everything it
// made.
//
// With nftables an accept verdict is final only within one base chain: a
// packet accepted in table inet diglett is still dropped by a host table
// whose input chain has policy drop. So the diglett table marks the
// packets of the open ports (Mark under MarkMask) and, when
// Options.HostChain names the host firewall's input chain, one rule at the
// head of that chain accepts marked packets. With iptables an ACCEPT in a
// chain jumped to from INPUT is final for the filter table, so the DIGLETT
// chain is enough.
package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

// The backends Options.Backend names.
const (
	BackendNFTables = "nftables"
	BackendIPTables = "iptables"
)

// Mark is the packet mark (under MarkMask) the nftables backend sets on
// packets to an open port: "dg" in the high 16 bits. The other bits of a
// packet's mark are kept, so it coexists with marks in the low bits.
const (
	Mark     uint32 = 0x64670000
	MarkMask uint32 = 0xffff0000
)

// Tag is the comment (nftables rule user data) on every rule the nftables
// backend makes, and the name its table shares.
const Tag = "diglett"

// DefaultRefresh is how often the rules are checked when Options.Refresh
// is zero.
const DefaultRefresh = 300 * time.Second

// opTimeout bounds one change or check of the rules.
const opTimeout = 10 * time.Second

// ErrPermission is returned (wrapped, with the backend's name) when the
// process may not change the firewall.
var ErrPermission = errors.New("permission denied (needs root or CAP_NET_ADMIN)")

// ErrClosed is returned by Set after Close.
var ErrClosed = errors.New("firewall: closed")

// errHostChainGone reports that the host chain went away after New: the
// rest of the rules are kept, and the host rule is put back when the chain
// returns.
var errHostChainGone = errors.New("host chain not found")

// Port is one port to open.
type Port struct {
	Proto string // "tcp" or "udp"
	Port  uint16
}

func (p Port) String() string { return fmt.Sprintf("%s/%d", p.Proto, p.Port) }

// Options configure a Firewall. The zero value uses nftables, checks the
// rules every 300s and installs only the table of its own.
type Options struct {
	// Backend is "nftables" (the default when empty) or "iptables".
	Backend string
	// Refresh is how often the rules are checked and put back; zero is
	// DefaultRefresh (300s).
	Refresh time.Duration
	// HostChain (nftables only, optional) is the host firewall's input
	// chain as "FAMILY TABLE CHAIN", e.g. "inet filter input": one rule at
	// its head accepts the packets the diglett table marked. Without it
	// only the diglett table is installed, which opens the ports when the
	// host's input policy is accept or when the host's own rules accept
	// the mark.
	HostChain string
	// Logger gets the firewall's logs; nil discards them.
	Logger *slog.Logger
}

// hostChain is a parsed Options.HostChain.
type hostChain struct {
	family, table, chain string
}

func (h hostChain) String() string { return h.family + " " + h.table + " " + h.chain }

// Validate checks the options.
func (o Options) Validate() error {
	switch o.Backend {
	case "", BackendNFTables, BackendIPTables:
	default:
		return fmt.Errorf("firewall: unknown backend %q (want nftables or iptables)", o.Backend)
	}
	if o.Refresh < 0 {
		return fmt.Errorf("firewall: refresh %v is negative", o.Refresh)
	}
	if o.HostChain != "" {
		if o.Backend == BackendIPTables {
			return errors.New("firewall: host chain is for the nftables backend only")
		}
		if _, err := parseHostChain(o.HostChain); err != nil {
			return err
		}
	}
	return nil
}

// nameMax is the longest nftables table or chain name.
const nameMax = 255

func parseHostChain(s string) (hostChain, error) {
	f := strings.Fields(s)
	bad := func(why string) error {
		return fmt.Errorf("firewall: bad host chain %q: %s (want \"FAMILY TABLE CHAIN\", e.g. \"inet filter input\")", s, why)
	}
	if len(f) != 3 {
		return hostChain{}, bad("not three words")
	}
	h := hostChain{family: f[0], table: f[1], chain: f[2]}
	switch h.family {
	case "inet", "ip", "ip6":
	default:
		return hostChain{}, bad("family is not inet, ip or ip6")
	}
	if len(h.table) > nameMax || len(h.chain) > nameMax {
		return hostChain{}, bad("name too long")
	}
	if h.family == "inet" && h.table == Tag {
		return hostChain{}, bad("that is diglett's own table")
	}
	return h, nil
}

// backend changes the rules of one firewall kind. Its methods are called
// one at a time.
type backend interface {
	// reconcile makes the installed rules open exactly ports, and returns
	// what it found missing (nothing when all was in place) besides the
	// differences in the open ports, which it returns as extra.
	reconcile(ctx context.Context, ports []Port) (missing, extra []string, err error)
	// remove deletes everything the backend made; what is already gone
	// is not an error.
	remove(ctx context.Context) error
	name() string
}

// Firewall keeps a set of ports open in the host firewall.
type Firewall struct {
	b       backend
	log     *slog.Logger
	refresh time.Duration

	mu      sync.Mutex // serializes changes; guards the fields below
	ports   []Port
	closed  bool // Close was called: the loop is stopped
	removed bool // the rules are removed

	stop context.CancelFunc
	done chan struct{}
}

// New checks o, installs the (empty) rules, which checks that the backend
// works, and starts the loop that puts them back every o.Refresh.
func New(ctx context.Context, o Options) (*Firewall, error) {
	return newFirewall(ctx, o, -1)
}

// newFirewall is New for the network namespace netns (a file descriptor),
// or the caller's when netns is negative.
func newFirewall(ctx context.Context, o Options, netns int) (*Firewall, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.Backend == "" {
		o.Backend = BackendNFTables
	}
	log = log.With("backend", o.Backend)
	refresh := o.Refresh
	if refresh == 0 {
		refresh = DefaultRefresh
	}
	var host *hostChain
	if o.HostChain != "" {
		h, _ := parseHostChain(o.HostChain)
		host = &h
	}
	b, err := newBackend(o.Backend, host, netns)
	if err != nil {
		return nil, err
	}
	f := &Firewall{b: b, log: log, refresh: refresh, done: make(chan struct{})}
	cctx, cancel := bounded(ctx)
	missing, _, err := b.reconcile(cctx, nil)
	cancel()
	if err != nil {
		return nil, f.wrap(err)
	}
	log.Info("firewall ready", "host_chain", o.HostChain, "refresh", refresh, "installed", missing)
	loopCtx, stop := context.WithCancel(context.Background())
	f.stop = stop
	go f.loop(loopCtx)
	return f, nil
}

// wrap puts the package and backend names on err.
func (f *Firewall) wrap(err error) error {
	return fmt.Errorf("firewall: %s: %w", f.b.name(), err)
}

// bounded is ctx limited to opTimeout.
func bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, opTimeout)
}

// Set makes ports the whole set of open ports (the latest call wins): it
// opens the missing ones and closes the others. Duplicates are ignored.
// When it fails the loop keeps trying to reach ports.
func (f *Firewall) Set(ctx context.Context, ports []Port) error {
	want, err := normalize(ports)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	f.ports = want
	cctx, cancel := bounded(ctx)
	defer cancel()
	missing, _, err := f.b.reconcile(cctx, want)
	if err = f.hostGone(err); err != nil {
		return f.wrap(err)
	}
	if len(missing) > 0 {
		f.log.Warn("firewall rules restored", "missing", missing)
	}
	f.log.Debug("firewall ports set", "ports", portStrings(want))
	return nil
}

// Ports returns the ports last set, sorted.
func (f *Firewall) Ports() []Port {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.ports)
}

// Close stops the loop and removes every table, chain and rule the
// firewall made. Once that succeeded, calling it again does nothing; after
// a failure, calling it again tries the removal again.
func (f *Firewall) Close(ctx context.Context) error {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.stop()
	<-f.done
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.removed {
		return nil
	}
	cctx, cancel := bounded(ctx)
	defer cancel()
	if err := f.b.remove(cctx); err != nil {
		return f.wrap(err)
	}
	f.removed = true
	f.log.Info("firewall rules removed")
	return nil
}

// loop checks the rules every refresh and puts back what is missing.
func (f *Firewall) loop(ctx context.Context) {
	defer close(f.done)
	t := time.NewTicker(f.refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f.check(ctx)
	}
}

// check makes one bounded pass of the loop.
func (f *Firewall) check(ctx context.Context) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	cctx, cancel := bounded(ctx)
	defer cancel()
	missing, extra, err := f.b.reconcile(cctx, f.ports)
	if err = f.hostGone(err); err != nil {
		if ctx.Err() == nil {
			f.log.Error("firewall check failed", "err", f.wrap(err))
		}
		return
	}
	// Between two checks only an outside change moves the ports.
	missing = append(missing, extra...)
	if len(missing) > 0 {
		f.log.Warn("firewall rules restored", "missing", missing)
	}
}

// hostGone logs errHostChainGone, which is not a failure, and returns
// the other errors.
func (f *Firewall) hostGone(err error) error {
	if errors.Is(err, errHostChainGone) {
		f.log.Warn("firewall host chain not found; its rule returns with it", "err", err)
		return nil
	}
	return err
}

// normalize checks ports and returns them sorted, without duplicates.
func normalize(ports []Port) ([]Port, error) {
	out := make([]Port, 0, len(ports))
	for _, p := range ports {
		if p.Proto != "tcp" && p.Proto != "udp" {
			return nil, fmt.Errorf("firewall: bad protocol %q for port %d (want tcp or udp)", p.Proto, p.Port)
		}
		if p.Port == 0 {
			return nil, fmt.Errorf("firewall: %s port 0 is not a port", p.Proto)
		}
		out = append(out, p)
	}
	slices.SortFunc(out, comparePorts)
	return slices.Compact(out), nil
}

func comparePorts(a, b Port) int {
	if c := strings.Compare(a.Proto, b.Proto); c != 0 {
		return c
	}
	return int(a.Port) - int(b.Port)
}

func portStrings(ports []Port) []string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = p.String()
	}
	return s
}

// byProto returns the port numbers of ports whose protocol is proto.
func byProto(ports []Port, proto string) []uint16 {
	var out []uint16
	for _, p := range ports {
		if p.Proto == proto {
			out = append(out, p.Port)
		}
	}
	return out
}
