package ingress

// A request whose response the tap ends (resptap.go): once a request
// without a body is sent, the visitor connection's goroutine does not
// wait for the response but goes back to wait for the visitor's next
// request. When the response's first frame holds it whole, the session's
// receive loop writes it to the visitor and ends the request there: the
// stream back to the pool, the route released, the access line and the
// metrics. The goroutine is woken once per request instead of twice.
//
// Anything else brings the goroutine back to the request, which it then
// ends as before: the tap hears of a frame it leaves, a larger one, the
// stream's end or reset (internal/transport/mux calls it with nil), or
// the visitor's socket did not take the whole response; it then sets the
// visitor's read deadline in the past, which interrupts the goroutine's
// wait. The goroutine also takes the request back when the visitor sends
// its next request first (pipelining: responses keep their order), when
// the response timeout passes, and when the server shuts down.
//
// The state word, changed under pmu only:
//
//	pOff      no request is left to the tap
//	pSending  the tap is armed, and the goroutine still sends the request
//	pArmed    the goroutine went back to the visitor; the tap ends the request
//	pTaking   the tap took the response; its then ends the request
//	pDone     the tap ended it
//	pLeft     the tap left the response, or heard of another event
//	pHeld     the tap wrote the response, but the goroutine must end the
//	          request (it was still sending, or the socket took part of it)
//	pReclaim  the goroutine takes the request back
//
// The interrupting deadline is set under pmu, before the state says so:
// a goroutine that saw pArmed under pmu after arming its own deadline is
// always interrupted, and none is interrupted once it took the request
// back.

import (
	"errors"
	"net/http"
	"time"
)

const (
	pOff int32 = iota
	pSending
	pArmed
	pTaking
	pDone
	pLeft
	pHeld
	pReclaim
)

// errDetached: the request was left to the tap; exchange's caller is done
// with it.
var errDetached = errors.New("request left to the tap")

// detachable reports whether the response to r, a request without a
// body, may be left to the tap: not when the visitor asked to close after
// it (the goroutine closes), nor after a POST (waitRequest drops stray
// line ends after one, reading ahead).
func (fc *fastConn) detachable(r *http.Request) bool {
	return !r.Close && r.Method != http.MethodPost
}

func (fc *fastConn) setState(s int32) {
	fc.pmu.Lock()
	fc.pstate.Store(s)
	fc.pmu.Unlock()
}

// What detach found.
const (
	detached = iota // the request is left to the tap
	tapTook         // the tap wrote the response: the goroutine ends the request
	tapNot          // the goroutine reads the response itself
)

// detach leaves the request to the tap once it is sent (sent false: the
// send failed). Otherwise the tap acted while the request was sent, or
// the send failed: detach disarms the tap, waiting for a call under way,
// and says whether it took the response.
func (fc *fastConn) detach(sent bool) int {
	fc.pmu.Lock()
	s := fc.pstate.Load()
	if sent && s == pSending {
		fc.pstate.Store(pArmed)
		fc.pmu.Unlock()
		return detached
	}
	// A tap call under way sees pReclaim and leaves.
	fc.pstate.Store(pReclaim)
	fc.pmu.Unlock()
	fc.cur.tp.ClearTap()
	fc.setState(pOff)
	if s == pHeld {
		return tapTook
	}
	return tapNot
}

// takeDetached is the tap of a request left to it, in the receive loop.
func (fc *fastConn) takeDetached(p []byte) bool {
	fc.pmu.Lock()
	defer fc.pmu.Unlock()
	s := fc.pstate.Load()
	if s != pSending && s != pArmed {
		return false // taken back (pReclaim, pOff): the goroutine reads it
	}
	if p == nil || !fc.writeResponse(p) {
		fc.leave(s, pLeft)
		return false
	}
	if s == pSending || fc.tap.err != nil || len(fc.tap.left) > 0 {
		fc.leave(s, pHeld)
		return true
	}
	fc.pstate.Store(pTaking)
	return true
}

// leave hands the request back to the goroutine, interrupting its wait on
// the visitor if it went there. Called under pmu.
func (fc *fastConn) leave(was, now int32) {
	if was == pArmed {
		fc.c.SetReadDeadline(longAgo)
		if h := fc.fs.in.testHookLeave; h != nil {
			h(fc)
		}
	}
	fc.pstate.Store(now)
}

// tapThen ends a request whose response the tap wrote whole, in the
// receive loop right after the take (mux: then).
func (fc *fastConn) tapThen() {
	if fc.pstate.Load() != pTaking {
		return // pHeld: the goroutine ends it
	}
	f := &fc.cur
	keep, stale, err := fc.tapped(f.st, f.r, f.x, f.body)
	fc.settle(f, keep, stale, err)
	fc.fs.ended.Add(1)
	// Between requests now: a shutdown closes the connection.
	fc.endedAt = time.Now()
	fc.idle.Store(true)
	if fc.fs.closing.Load() {
		fc.c.Close()
	}
	fc.pmu.Lock()
	fc.pstate.Store(pDone)
	fc.pcond.Broadcast()
	fc.pmu.Unlock()
}

// pending reports whether a request is left to the tap and not ended; a
// request the tap ended is forgotten.
func (fc *fastConn) pending() bool {
	switch fc.pstate.Load() {
	case pOff:
		return false
	case pDone:
		fc.setState(pOff)
		return false
	}
	return true
}

// handedBack reports whether the tap handed the request back. The
// goroutine asks after arming its own deadline, and under pmu: a tap that
// set its interrupting deadline before that (which the goroutine's then
// replaced) has also said so by the time the lock is free. Read without
// the lock, the state could still say pArmed in between, and the wait
// would miss the interruption.
func (fc *fastConn) handedBack() bool {
	fc.pmu.Lock()
	s := fc.pstate.Load()
	fc.pmu.Unlock()
	return s == pLeft || s == pHeld
}

// resolve ends the request left to the tap, if any: it waits for the tap
// to end it, or takes it back and ends it as exchange would, reading the
// response from the stream. It reports whether the connection stays open.
func (fc *fastConn) resolve() bool {
	fc.pmu.Lock()
	for fc.pstate.Load() == pTaking {
		fc.pcond.Wait()
	}
	switch fc.pstate.Load() {
	case pOff, pDone:
		fc.pstate.Store(pOff)
		fc.pmu.Unlock()
		return true
	}
	took := fc.pstate.Load() == pHeld
	fc.pstate.Store(pReclaim)
	fc.pmu.Unlock()
	f := &fc.cur
	f.tp.ClearTap() // waits for a tap call under way, which leaves
	fc.setState(pOff)
	var keep, stale bool
	var err error
	if took {
		keep, stale, err = fc.tapped(f.st, f.r, f.x, f.body)
	} else {
		keep, stale, err = fc.respond(f, nil, nil)
	}
	keep, retry := fc.settle(f, keep, stale, err)
	if retry {
		return fc.attempts(f)
	}
	return keep
}

// waitDeadline is the read deadline of the wait for the next request:
// wait from since, or the response timeout if a request is left to the
// tap, which the goroutine takes back then.
func (fc *fastConn) waitDeadline(since time.Time, wait time.Duration, pending bool) time.Time {
	if rt := fc.fs.in.cfg.ResponseTimeout; pending && rt < wait {
		wait = rt
	}
	return since.Add(wait)
}
