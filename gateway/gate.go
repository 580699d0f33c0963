package gateway

import (
	"time"
)

// gate holds a registerer's first Register back until the registerer is
// ready: the routes of the registerers it replaced are down (or given
// up), and what an earlier life of the gateway left is swept (Sweeper).
// Its ready channel is closed once, when it opens.
type gate struct {
	ready chan struct{}
}

func newGate() *gate { return &gate{ready: make(chan struct{})} }

// gateResult is what a worker waiting at a gate got.
type gateResult int

const (
	gateOpen    gateResult = iota // the registerer is ready
	gateWoken                     // the tunnel changed meanwhile: look again
	gateClosing                   // the gateway is closing
)

// awaitGate waits until r's registerer is ready, r's tunnel changes, or
// the gateway closes.
func (rc *reconciler) awaitGate(r *registration) gateResult {
	g := r.rg.gate
	if g == nil {
		return gateOpen
	}
	select {
	case <-g.ready:
		return gateOpen
	default:
	}
	select {
	case <-g.ready:
		return gateOpen
	case <-rc.ctx.Done():
		return gateClosing
	case <-r.wake:
		return gateWoken
	}
}

// openGate opens nr's gate once the registrations in after have taken
// their routes down (or given up: at most twice the register timeout is
// waited), and nr has swept, if it is a Sweeper.
func (rc *reconciler) openGate(nr namedRegisterer, after []*registration) {
	sw, sweeps := nr.Registerer.(Sweeper)
	if !sweeps && len(after) == 0 {
		close(nr.gate.ready)
		return
	}
	rc.track()
	go func() {
		defer rc.done()
		defer close(nr.gate.ready)
		rc.awaitRetired(after)
		if sweeps {
			rc.sweep(nr.name, sw)
		}
	}()
}

// retirePoll is how often awaitRetired looks at the routes being taken
// down.
const retirePoll = 20 * time.Millisecond

// awaitRetired waits until every registration of after has no route
// published or no worker left to take it down, for at most twice the
// register timeout, or until the gateway closes.
func (rc *reconciler) awaitRetired(after []*registration) {
	if len(after) == 0 {
		return
	}
	deadline := time.NewTimer(2 * rc.timeout)
	defer deadline.Stop()
	tick := time.NewTicker(retirePoll)
	defer tick.Stop()
	for _, r := range after {
		for {
			r.mu.Lock()
			settled := r.closer == nil || !r.running
			r.mu.Unlock()
			if settled {
				break
			}
			select {
			case <-tick.C:
			case <-deadline.C:
				rc.log.Warn("registerer put in force before the routes of the one it replaced were down", "registerer", r.rg.name)
				return
			case <-rc.ctx.Done():
				return
			}
		}
	}
}

// sweep calls sw.Sweep until it succeeds, with the register timeout and
// backoff, or until the gateway closes.
func (rc *reconciler) sweep(name string, sw Sweeper) {
	for attempt := 1; ; attempt++ {
		ctx, cancel := rc.callContext()
		err := sw.Sweep(ctx)
		cancel()
		if err == nil {
			if attempt > 1 {
				rc.log.Info("registerer swept what an earlier run left", "registerer", name, "attempts", attempt)
			}
			return
		}
		if rc.ctx.Err() != nil {
			return
		}
		d := rc.backoff(attempt)
		rc.log.Warn("registerer could not sweep what an earlier run left: its routes wait", "registerer", name,
			"attempt", attempt, "retry_in", d.Round(time.Millisecond), "err", err)
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-rc.ctx.Done():
			t.Stop()
			return
		}
	}
}
