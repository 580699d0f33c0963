package firewall

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The names in table inet diglett.
const (
	nftChain    = "input"
	nftTCPSet   = "tcp_ports"
	nftUDPSet   = "udp_ports"
	nftPriority = -10 // filter - 10: before the host's filter chains
)

// nftBackend keeps table inet diglett and, with a host chain, the one
// rule at its head.
type nftBackend struct {
	host    *hostChain
	netns   int  // network namespace file descriptor, or negative
	started bool // the first reconcile succeeded
}

var _ backend = (*nftBackend)(nil)

func (n *nftBackend) name() string { return BackendNFTables }

// nlTimeout bounds one netlink exchange (a read or a batch): the kernel
// answers in milliseconds, so a reply that does not come is given up
// soon and the next refresh tries again.
const nlTimeout = 2 * time.Second

// conn is a connection each of whose sockets (one per exchange) has a
// deadline of nlTimeout, and never later than ctx's.
func (n *nftBackend) conn(ctx context.Context) (*nftables.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	opts := []nftables.ConnOption{nftables.WithSockOptions(func(c *netlink.Conn) error {
		deadline := time.Now().Add(nlTimeout)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		return c.SetDeadline(deadline)
	})}
	if n.netns >= 0 {
		opts = append(opts, nftables.WithNetNSFd(n.netns))
	}
	return nftables.New(opts...)
}

func (n *nftBackend) table() *nftables.Table {
	return &nftables.Table{Name: Tag, Family: nftables.TableFamilyINet}
}

// sets are the two sets. Their IDs (which name a set within one batch)
// are set here: the library would otherwise count them in a package
// variable without a lock.
func (n *nftBackend) sets(t *nftables.Table) (tcp, udp *nftables.Set) {
	return &nftables.Set{Table: t, Name: nftTCPSet, ID: 1, KeyType: nftables.TypeInetService},
		&nftables.Set{Table: t, Name: nftUDPSet, ID: 2, KeyType: nftables.TypeInetService}
}

func (n *nftBackend) chain(t *nftables.Table) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{
		Name:     nftChain,
		Table:    t,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookInput,
		Priority: nftables.ChainPriorityRef(*nftables.ChainPriorityFilter + nftPriority),
		Policy:   &accept,
	}
}

func (n *nftBackend) hostTable() *nftables.Table {
	fam := map[string]nftables.TableFamily{
		"inet": nftables.TableFamilyINet,
		"ip":   nftables.TableFamilyIPv4,
		"ip6":  nftables.TableFamilyIPv6,
	}[n.host.family]
	return &nftables.Table{Name: n.host.table, Family: fam}
}

// comment is rule user data holding the comment s, as the nft program
// writes it.
func comment(s string) []byte {
	return userdata.AppendString(nil, userdata.TypeComment, s)
}

func commentOf(r *nftables.Rule) string {
	s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return s
}

func native32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

// markRule is `PROTO dport @SET meta mark set meta mark & ~MarkMask | Mark
// accept`.
func markRule(t *nftables.Table, c *nftables.Chain, s *nftables.Set, proto byte) *nftables.Rule {
	return &nftables.Rule{
		Table: t,
		Chain: c,
		Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(^MarkMask), Xor: native32(Mark)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
			&expr.Verdict{Kind: expr.VerdictAccept},
		},
		UserData: comment(Tag + " " + s.Name),
	}
}

// hostRule is `meta mark & MarkMask == Mark accept`.
func (n *nftBackend) hostRule(t *nftables.Table) *nftables.Rule {
	return &nftables.Rule{
		Table: t,
		Chain: &nftables.Chain{Name: n.host.chain, Table: t},
		Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(MarkMask), Xor: native32(0)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: native32(Mark)},
			&expr.Verdict{Kind: expr.VerdictAccept},
		},
		UserData: comment(Tag),
	}
}

// nftState is what is installed.
type nftState struct {
	table, chain   bool
	tcpSet, udpSet bool
	rules          []string         // comments of the rules in the diglett chain
	tcp, udp       []uint16         // the sets' elements
	hostRules      []*nftables.Rule // the tagged rules in the host chain
	hostChain      bool             // the host chain exists
}

// read reads what is installed. The library wraps the errors of some
// reads without their errno, so existence is decided from the lists of
// tables and chains.
func (n *nftBackend) read(ctx context.Context) (*nftState, error) {
	c, err := n.conn(ctx)
	if err != nil {
		return nil, err
	}
	st := &nftState{}
	t := n.table()
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyUnspecified)
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	var ht *nftables.Table
	if n.host != nil {
		ht = n.hostTable()
	}
	for _, ch := range chains {
		switch {
		case ch.Table.Family == t.Family && ch.Table.Name == t.Name && ch.Name == nftChain:
			st.chain = true
		case ht != nil && ch.Table.Family == ht.Family && ch.Table.Name == ht.Name && ch.Name == n.host.chain:
			st.hostChain = true
		}
	}
	if st.hostChain {
		rules, err := c.GetRules(ht, &nftables.Chain{Name: n.host.chain, Table: ht})
		if err != nil {
			return nil, fmt.Errorf("read host chain %s: %w", n.host, err)
		}
		for _, r := range rules {
			if commentOf(r) == Tag {
				st.hostRules = append(st.hostRules, r)
			}
		}
	}
	tables, err := c.ListTablesOfFamily(t.Family)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	st.table = slices.ContainsFunc(tables, func(x *nftables.Table) bool { return x.Name == t.Name })
	if !st.table {
		st.chain = false
		return st, nil
	}
	sets, err := c.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("list sets: %w", err)
	}
	for _, s := range sets {
		var elems *[]uint16
		switch s.Name {
		case nftTCPSet:
			st.tcpSet, elems = true, &st.tcp
		case nftUDPSet:
			st.udpSet, elems = true, &st.udp
		default:
			continue
		}
		list, err := c.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("read set %s: %w", s.Name, err)
		}
		for _, e := range list {
			if len(e.Key) == 2 {
				*elems = append(*elems, binaryutil.BigEndian.Uint16(e.Key))
			}
		}
		slices.Sort(*elems)
	}
	if st.chain {
		rules, err := c.GetRules(t, &nftables.Chain{Name: nftChain, Table: t})
		if err != nil {
			return nil, fmt.Errorf("read chain %s: %w", nftChain, err)
		}
		for _, r := range rules {
			st.rules = append(st.rules, commentOf(r))
		}
	}
	return st, nil
}

// missing lists the parts of the rules st lacks.
func (n *nftBackend) missing(st *nftState) []string {
	var m []string
	if !st.table {
		m = append(m, "table inet "+Tag)
	} else {
		if !st.tcpSet {
			m = append(m, "set "+nftTCPSet)
		}
		if !st.udpSet {
			m = append(m, "set "+nftUDPSet)
		}
		if !st.chain {
			m = append(m, "chain "+nftChain)
		} else if !slices.Equal(st.rules, []string{Tag + " " + nftTCPSet, Tag + " " + nftUDPSet}) {
			m = append(m, fmt.Sprintf("rules of chain %s (found %q)", nftChain, st.rules))
		}
	}
	if n.host != nil && st.hostChain && len(st.hostRules) != 1 {
		m = append(m, "rule in host chain "+n.host.String())
	}
	return m
}

// reconcile changes the set elements when all else is in place, and
// otherwise rebuilds everything, in one batch either way. A host chain
// missing at the start is an error; one that went away later (the host
// firewall stopped) leaves the rest to be kept and is reported with
// errHostChainGone.
func (n *nftBackend) reconcile(ctx context.Context, ports []Port) (missing, extra []string, err error) {
	missing, extra, err = n.apply(ctx, ports)
	if err == nil {
		n.started = true
	}
	return missing, extra, err
}

func (n *nftBackend) apply(ctx context.Context, ports []Port) (missing, extra []string, err error) {
	st, err := n.read(ctx)
	if err != nil {
		return nil, nil, mapNFTError(err)
	}
	var gone error
	if n.host != nil && !st.hostChain {
		if !n.started {
			return nil, nil, fmt.Errorf("host chain %s: not found", n.host)
		}
		gone = fmt.Errorf("%s: %w", n.host, errHostChainGone)
	}
	wantTCP, wantUDP := byProto(ports, "tcp"), byProto(ports, "udp")
	c, err := n.conn(ctx)
	if err != nil {
		return nil, nil, err
	}
	t := n.table()
	tcp, udp := n.sets(t)
	missing = n.missing(st)
	if len(missing) == 0 {
		extra = append(diffSet(c, tcp, st.tcp, wantTCP, "tcp"), diffSet(c, udp, st.udp, wantUDP, "udp")...)
		if len(extra) == 0 {
			return nil, nil, gone
		}
		if err := c.Flush(); err != nil {
			return nil, nil, mapNFTError(fmt.Errorf("update sets: %w", err))
		}
		return nil, extra, gone
	}
	c.AddTable(t)
	ch := n.chain(t)
	for _, s := range []struct {
		set   *nftables.Set
		ports []uint16
		proto byte
	}{{tcp, wantTCP, unix.IPPROTO_TCP}, {udp, wantUDP, unix.IPPROTO_UDP}} {
		if err := c.AddSet(s.set, nil); err != nil {
			return nil, nil, fmt.Errorf("add set %s: %w", s.set.Name, err)
		}
		c.FlushSet(s.set)
		if len(s.ports) > 0 {
			if err := c.SetAddElements(s.set, elements(s.ports)); err != nil {
				return nil, nil, fmt.Errorf("add to set %s: %w", s.set.Name, err)
			}
		}
	}
	c.AddChain(ch)
	c.FlushChain(ch)
	c.AddRule(markRule(t, ch, tcp, unix.IPPROTO_TCP))
	c.AddRule(markRule(t, ch, udp, unix.IPPROTO_UDP))
	if n.host != nil && st.hostChain && len(st.hostRules) != 1 {
		for _, r := range st.hostRules {
			if err := c.DelRule(r); err != nil {
				return nil, nil, fmt.Errorf("delete host rule: %w", err)
			}
		}
		c.InsertRule(n.hostRule(n.hostTable()))
	}
	if err := c.Flush(); err != nil {
		return nil, nil, mapNFTError(fmt.Errorf("install: %w", err))
	}
	return missing, nil, gone
}

// diffSet queues on c the changes that make set hold want instead of
// have, and describes them.
func diffSet(c *nftables.Conn, set *nftables.Set, have, want []uint16, proto string) []string {
	var add, del []uint16
	var changes []string
	for _, p := range want {
		if !slices.Contains(have, p) {
			add = append(add, p)
			changes = append(changes, fmt.Sprintf("%s/%d", proto, p))
		}
	}
	for _, p := range have {
		if !slices.Contains(want, p) {
			del = append(del, p)
			changes = append(changes, fmt.Sprintf("extra %s/%d", proto, p))
		}
	}
	// Queuing only fails on elements a set of this type cannot hold.
	if len(del) > 0 {
		_ = c.SetDeleteElements(set, elements(del))
	}
	if len(add) > 0 {
		_ = c.SetAddElements(set, elements(add))
	}
	return changes
}

func elements(ports []uint16) []nftables.SetElement {
	e := make([]nftables.SetElement, len(ports))
	for i, p := range ports {
		e[i] = nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(p)}
	}
	return e
}

// remove deletes the host rule and the table, in one batch.
func (n *nftBackend) remove(ctx context.Context) error {
	st, err := n.read(ctx)
	if err != nil {
		return mapNFTError(err)
	}
	c, err := n.conn(ctx)
	if err != nil {
		return err
	}
	if !st.table && len(st.hostRules) == 0 {
		return nil
	}
	for _, r := range st.hostRules {
		if err := c.DelRule(r); err != nil {
			return fmt.Errorf("delete host rule: %w", err)
		}
	}
	if st.table {
		c.DelTable(n.table())
	}
	if err := c.Flush(); err != nil {
		return mapNFTError(fmt.Errorf("remove: %w", err))
	}
	return nil
}

// mapNFTError turns a permission error into ErrPermission, and explains
// a kernel without nf_tables. Some of the library's errors keep only the
// errno's text.
func mapNFTError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) ||
		strings.Contains(err.Error(), unix.EPERM.Error()):
		return ErrPermission
	case errors.Is(err, unix.EPROTONOSUPPORT):
		return fmt.Errorf("the kernel has no nf_tables (modprobe nf_tables): %w", err)
	}
	return err
}
