package gateway

import (
	"reflect"
	"slices"
)

// SetRegisterers puts rgs in force in place of the server's registerers
// (Config.Registerer and Config.Registerers, or a previous call's), for
// example after its operator edited the configuration file. A registerer
// in both lists (the same pointer, or an equal comparable value) is left
// as it is: its routes stay published, with no call. Every live tunnel is
// registered with each new registerer and unregistered from each removed
// one in the background, as on an agent's join or leave: failures are
// logged and retried with backoff, and Close waits for them as for any.
// SetRegisterers itself never waits for a registerer. Nil entries are
// skipped; after Close it does nothing.
func (s *Server) SetRegisterers(rgs []Registerer) {
	rc, r := s.regs, s.reg
	next := make([]namedRegisterer, 0, len(rgs))
	for _, rg := range rgs {
		if rg != nil {
			next = append(next, namedRegisterer{Registerer: rg, name: registererName(rg)})
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	// A registerer kept keeps its gate; a new one waits at a gate of its
	// own for the routes of those retired to be down, and sweeps.
	var fresh []namedRegisterer
	kept := make([]bool, len(rc.rgs))
	for i := range next {
		for j, old := range rc.rgs {
			if !kept[j] && sameRegisterer(old.Registerer, next[i].Registerer) {
				kept[j], next[i].gate = true, old.gate
				break
			}
		}
		if next[i].gate == nil {
			next[i].gate = newGate()
			fresh = append(fresh, next[i])
		}
	}
	var retired []*registration
	defer func() {
		for _, nr := range fresh {
			rc.openGate(nr, retired)
		}
	}()
	rc.rgs = next
	for _, t := range r.byName {
		if t.regs == nil {
			continue // never published: its first reconcile uses next
		}
		regs := make([]*registration, len(next))
		for i, nr := range next {
			for _, old := range t.regs {
				if sameRegisterer(old.rg.Registerer, nr.Registerer) && !slices.Contains(regs, old) {
					regs[i] = old
					break
				}
			}
			if regs[i] == nil {
				regs[i] = &registration{t: t, rg: nr}
			}
		}
		for _, old := range t.regs {
			if !slices.Contains(regs, old) {
				rc.retire(old)
				retired = append(retired, old)
			}
		}
		t.regs = regs
		t.reconcileLocked()
	}
}

// retire takes down what r published: its registerer is no longer in
// force.
func (rc *reconciler) retire(r *registration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.want = false
	switch {
	case r.running:
		select {
		case r.wake <- struct{}{}:
		default:
		}
	case r.closer != nil:
		r.running = true
		rc.start(r)
	}
}

// sameRegisterer reports whether a and b are the same registerer: the
// same pointer, or equal values of a comparable type. It never panics on
// values that cannot be compared.
func sameRegisterer(a, b Registerer) (same bool) {
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	if va.Type() != vb.Type() {
		return false
	}
	switch va.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Chan, reflect.UnsafePointer:
		return va.Pointer() == vb.Pointer()
	}
	if !va.Type().Comparable() {
		return false
	}
	defer func() {
		if recover() != nil {
			same = false // an interface field holding an uncomparable value
		}
	}()
	return va.Interface() == vb.Interface()
}
