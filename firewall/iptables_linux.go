package firewall

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

// The iptables names: a chain of diglett's own in the filter table, jumped
// to from the head of INPUT.
const (
	iptTable = "filter"
	iptChain = "DIGLETT"
	iptInput = "INPUT"
)

// iptWait is how long (seconds) an iptables call waits for the lock
// another caller holds.
const iptWait = 5

// iptBackend keeps the DIGLETT chain and its jump for IPv4 and IPv6.
type iptBackend struct {
	netns int // network namespace file descriptor, or negative
	v4    *iptables.IPTables
	v6    *iptables.IPTables
}

var _ backend = (*iptBackend)(nil)

func newIPTBackend(netns int) (*iptBackend, error) {
	b := &iptBackend{netns: netns}
	err := inNetNS(netns, func() error {
		var err error
		if b.v4, err = iptables.New(iptables.IPFamily(iptables.ProtocolIPv4), iptables.Timeout(iptWait)); err != nil {
			return fmt.Errorf("ipv4: %w", err)
		}
		if b.v6, err = iptables.New(iptables.IPFamily(iptables.ProtocolIPv6), iptables.Timeout(iptWait)); err != nil {
			return fmt.Errorf("ipv6: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("firewall: iptables: %w", mapIPTError(err))
	}
	return b, nil
}

func (b *iptBackend) name() string { return BackendIPTables }

func (b *iptBackend) families() []struct {
	name string
	ipt  *iptables.IPTables
} {
	return []struct {
		name string
		ipt  *iptables.IPTables
	}{{"ipv4", b.v4}, {"ipv6", b.v6}}
}

// ruleSpec is the rule that accepts p, written as iptables lists it.
func ruleSpec(p Port) []string {
	return []string{"-p", p.Proto, "-m", p.Proto, "--dport", strconv.Itoa(int(p.Port)), "-j", "ACCEPT"}
}

// reconcile makes the chain, the jump and the port rules, family by
// family. Unlike nftables this is not one transaction: new rules are
// added before old ones are deleted.
func (b *iptBackend) reconcile(ctx context.Context, ports []Port) (missing, extra []string, err error) {
	err = inNetNS(b.netns, func() error {
		for _, fam := range b.families() {
			if err := ctx.Err(); err != nil {
				return err
			}
			m, e, err := b.reconcileFamily(fam.ipt, ports)
			for _, s := range m {
				missing = append(missing, s+" ("+fam.name+")")
			}
			for _, s := range e {
				extra = append(extra, s+" ("+fam.name+")")
			}
			if err != nil {
				return fmt.Errorf("%s: %w", fam.name, err)
			}
		}
		return nil
	})
	return missing, extra, mapIPTError(err)
}

func (b *iptBackend) reconcileFamily(ipt *iptables.IPTables, ports []Port) (missing, extra []string, err error) {
	ok, err := ipt.ChainExists(iptTable, iptChain)
	if err != nil {
		return nil, nil, err
	}
	if !ok {
		missing = append(missing, "chain "+iptChain)
		if err := ipt.NewChain(iptTable, iptChain); err != nil {
			return missing, nil, err
		}
	}
	jump := []string{"-j", iptChain}
	ok, err = ipt.Exists(iptTable, iptInput, jump...)
	if err != nil {
		return missing, nil, err
	}
	if !ok {
		missing = append(missing, "jump from "+iptInput)
		if err := ipt.Insert(iptTable, iptInput, 1, jump...); err != nil {
			return missing, nil, err
		}
	}
	listed, err := ipt.List(iptTable, iptChain)
	if err != nil {
		return missing, nil, err
	}
	have := map[string]bool{}
	for _, l := range listed {
		if r, ok := strings.CutPrefix(l, "-A "+iptChain+" "); ok {
			have[r] = true
		}
	}
	for _, p := range ports {
		spec := ruleSpec(p)
		key := strings.Join(spec, " ")
		if have[key] {
			delete(have, key)
			continue
		}
		extra = append(extra, p.String())
		if err := ipt.Append(iptTable, iptChain, spec...); err != nil {
			return missing, extra, err
		}
	}
	rest := make([]string, 0, len(have))
	for r := range have {
		rest = append(rest, r)
	}
	slices.Sort(rest)
	for _, r := range rest {
		extra = append(extra, "extra rule "+r)
		if err := ipt.Delete(iptTable, iptChain, strings.Fields(r)...); err != nil {
			return missing, extra, err
		}
	}
	return missing, extra, nil
}

// remove deletes the jump and the chain in both families.
func (b *iptBackend) remove(ctx context.Context) error {
	err := inNetNS(b.netns, func() error {
		var errs []error
		for _, fam := range b.families() {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := b.removeFamily(fam.ipt); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", fam.name, err))
			}
		}
		return errors.Join(errs...)
	})
	return mapIPTError(err)
}

func (b *iptBackend) removeFamily(ipt *iptables.IPTables) error {
	if err := ipt.DeleteIfExists(iptTable, iptInput, "-j", iptChain); err != nil {
		return err
	}
	ok, err := ipt.ChainExists(iptTable, iptChain)
	if err != nil || !ok {
		return err
	}
	return ipt.ClearAndDeleteChain(iptTable, iptChain)
}

// mapIPTError turns the program's permission error into ErrPermission.
func mapIPTError(err error) error {
	if err == nil {
		return nil
	}
	var e *iptables.Error
	if errors.As(err, &e) && strings.Contains(strings.ToLower(e.Error()), "permission denied") {
		return ErrPermission
	}
	return err
}
