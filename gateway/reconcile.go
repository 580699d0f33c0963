package gateway

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// Bounds of the registerers' retries.
const (
	DefaultRegisterTimeout = 30 * time.Second
	registerBackoffMin     = time.Second
	registerBackoffMax     = time.Minute
)

// reconciler keeps every registerer in line with the tunnels, off the
// agents' path: a tunnel's join or leave only records what it wants (its
// route published or not), and one worker per tunnel and registerer, alive
// only while the two disagree, calls Register or Close until they agree.
type reconciler struct {
	ctx     context.Context // ends when the gateway closes; bounds Register
	log     *slog.Logger
	obs     Observer
	rgs     []namedRegisterer // under the registry's mu once serving
	timeout time.Duration     // bounds one Register call

	// backoffMin and backoffMax bound the wait between two attempts;
	// tests shorten them.
	backoffMin, backoffMax time.Duration

	mu   sync.Mutex
	busy int           // workers running
	idle chan struct{} // closed when busy drops to zero; nil while busy is zero
}

// namedRegisterer is a registerer with the name its logs give it and the
// gate its first Register waits at.
type namedRegisterer struct {
	Registerer
	name string
	gate *gate
}

func newReconciler(ctx context.Context, cfg Config) *reconciler {
	var rgs []namedRegisterer
	for _, rg := range append([]Registerer{cfg.Registerer}, cfg.Registerers...) {
		if rg != nil {
			rgs = append(rgs, namedRegisterer{Registerer: rg, name: registererName(rg)})
		}
	}
	rc := &reconciler{
		ctx:        ctx,
		log:        cfg.Logger,
		obs:        cfg.Observer,
		rgs:        rgs,
		timeout:    cfg.RegisterTimeout,
		backoffMin: cfg.registerBackoff[0],
		backoffMax: cfg.registerBackoff[1],
	}
	for i := range rc.rgs {
		rc.rgs[i].gate = newGate()
		rc.openGate(rc.rgs[i], nil)
	}
	return rc
}

// registererName is what logs call rg: its String method, or its type.
func registererName(rg Registerer) string {
	if s, ok := rg.(fmt.Stringer); ok {
		return s.String()
	}
	return fmt.Sprintf("%T", rg)
}

// registration is the state of one tunnel with one registerer.
type registration struct {
	t  *tunnel
	rg namedRegisterer

	mu        sync.Mutex
	want      bool          // the tunnel is live: its route should be published
	route     Route         // what to publish, as of the latest wish
	closer    io.Closer     // non-nil while a route is published
	published Route         // the route published, while closer is set
	running   bool          // a worker is at work on it
	wake      chan struct{} // wakes the worker; set while running
}

// reconcile records whether t is live and starts a worker for each
// registerer that does not agree yet. It never waits for a registerer.
func (t *tunnel) reconcile() {
	// The tunnel's state and the wish recorded from it change together
	// under reg.mu, so the last call always records the latest state.
	t.reg.mu.Lock()
	defer t.reg.mu.Unlock()
	t.reconcileLocked()
}

// reconcileLocked is reconcile, called under reg.mu (which also guards
// rc.rgs, see SetRegisterers).
func (t *tunnel) reconcileLocked() {
	rc := t.reg.srv.regs
	if len(rc.rgs) == 0 && t.regs == nil {
		return
	}
	// A tunnel keeps its route while live and through its lease; one
	// only other nodes of a cluster serve is published by the node that
	// publishes them all (SetPublishAll), the cluster's leader.
	live := !t.removed && (!t.remoteOnly || t.reg.srv.publishAll.Load())
	if t.regs == nil {
		if !live {
			return // never published
		}
		t.regs = make([]*registration, len(rc.rgs))
		for i, rg := range rc.rgs {
			t.regs[i] = &registration{t: t, rg: rg}
		}
	}
	hosts := t.reg.srv.routeHosts(t.name)
	for _, r := range t.regs {
		r.mu.Lock()
		r.want = live
		r.route = Route{Name: t.name, Port: t.port, Identity: t.identity, UDP: t.udp, Hosts: hosts}
		switch {
		case r.running:
			select {
			case r.wake <- struct{}{}:
			default:
			}
		case !r.agreedLocked():
			r.running = true
			rc.start(r)
		}
		r.mu.Unlock()
	}
}

// start runs a worker for r. Called under r.mu, with r.running just set.
func (rc *reconciler) start(r *registration) {
	// Only a running worker is woken: an idle registration holds no
	// channel.
	r.wake = make(chan struct{}, 1)
	rc.track()
	go func() {
		defer rc.done()
		rc.work(r)
	}()
}

// track counts one more goroutine that wait waits for; done ends it.
func (rc *reconciler) track() {
	rc.mu.Lock()
	if rc.busy == 0 {
		rc.idle = make(chan struct{})
	}
	rc.busy++
	rc.mu.Unlock()
}

func (rc *reconciler) done() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.busy--; rc.busy == 0 {
		close(rc.idle)
		rc.idle = nil
	}
}

// wait waits at most d for every worker to end, and reports whether they
// did.
func (rc *reconciler) wait(d time.Duration) bool {
	rc.mu.Lock()
	idle := rc.idle
	rc.mu.Unlock()
	if idle == nil {
		return true
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-idle:
		return true
	case <-timer.C:
		return false
	}
}

// work calls r's registerer until the route is published exactly while
// the tunnel wants it, as it wants it. Failures are logged and retried
// with backoff; once the gateway is closing they are not retried.
func (rc *reconciler) work(r *registration) {
	log := r.t.log.With("registerer", r.rg.name)
	failures := 0
	for {
		r.mu.Lock()
		if r.agreedLocked() {
			r.stopLocked()
			r.mu.Unlock()
			if failures > 0 {
				log.Info("registerer caught up", "failed_attempts", failures)
			}
			return
		}
		closer, route := r.closer, r.route
		r.mu.Unlock()

		var err error
		what := "register"
		if closer != nil {
			// Not wanted any more, or changed: the old route goes first.
			what = "unregister"
			if err = rc.unregister(closer); err == nil {
				r.mu.Lock()
				r.closer, r.published = nil, Route{}
				r.mu.Unlock()
			}
		} else {
			switch rc.awaitGate(r) {
			case gateClosing:
				r.mu.Lock()
				r.stopLocked()
				r.mu.Unlock()
				return
			case gateWoken:
				continue // the tunnel changed its mind meanwhile
			}
			if closer, err = rc.register(r.rg, route); err == nil {
				r.mu.Lock()
				r.closer, r.published = closer, route
				r.mu.Unlock()
			}
		}
		if err == nil {
			continue
		}
		r.mu.Lock()
		agreed := r.agreedLocked()
		r.mu.Unlock()
		if agreed {
			// The tunnel changed its mind meanwhile: nothing to retry.
			log.Debug("registerer failed, no longer needed", "op", what, "err", err)
			continue
		}
		failures++
		rc.obs.RegistererFailed(r.rg.name)
		if rc.ctx.Err() != nil {
			log.Warn("registerer failed, gateway closing: not retried", "op", what, "attempt", failures, "err", err)
			r.mu.Lock()
			r.stopLocked()
			r.mu.Unlock()
			return
		}
		delay := rc.backoff(failures)
		log.Warn("registerer failed", "op", what, "attempt", failures, "retry_in", delay.Round(time.Millisecond), "err", err)
		rc.sleep(r, delay)
	}
}

// stopLocked marks r's worker as ended. Called under r.mu by the worker.
func (r *registration) stopLocked() {
	r.running = false
	r.wake = nil
}

// agreedLocked reports whether the registerer publishes what the tunnel
// wants: nothing, or its route as it is now. Called under r.mu.
func (r *registration) agreedLocked() bool {
	if !r.want {
		return r.closer == nil
	}
	return r.closer != nil && r.published.Equal(r.route)
}

// register calls Register with the timeout. A nil Closer counts as one
// with nothing to close.
func (rc *reconciler) register(rg Registerer, route Route) (io.Closer, error) {
	ctx, cancel := rc.callContext()
	defer cancel()
	c, err := rg.Register(ctx, route)
	if err != nil {
		if c != nil {
			c.Close()
		}
		return nil, err
	}
	if c == nil {
		c = nopCloser{}
	}
	return c, nil
}

// unregister closes a published route: with the timeout, for a Closer
// that takes a context (ContextCloser). The gateway closing does not cut
// it short: taking routes down is part of closing.
func (rc *reconciler) unregister(c io.Closer) error {
	cc, ok := c.(ContextCloser)
	if !ok {
		return c.Close()
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(rc.ctx), rc.timeout)
	defer cancel()
	return cc.CloseContext(ctx)
}

// callContext bounds one call to a registerer: the register timeout, or
// the gateway closing.
func (rc *reconciler) callContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(rc.ctx, rc.timeout)
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }

// backoff is the wait after the n-th failure in a row: backoffMin doubling
// up to backoffMax, less up to half of it at random so that many tunnels
// failing at once do not retry in step.
func (rc *reconciler) backoff(n int) time.Duration {
	d := rc.backoffMin
	for i := 1; i < n && d < rc.backoffMax; i++ {
		d *= 2
	}
	d = min(d, rc.backoffMax)
	return d - rand.N(d/2+1)
}

// sleep waits d, or less when the tunnel changes its mind in a way that
// needs no call any more (it went away before its route was published),
// or when the gateway closes.
func (rc *reconciler) sleep(r *registration, d time.Duration) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
			return
		case <-rc.ctx.Done():
			return
		case <-r.wake:
			r.mu.Lock()
			agreed := r.agreedLocked()
			r.mu.Unlock()
			if agreed {
				return
			}
		}
	}
}
