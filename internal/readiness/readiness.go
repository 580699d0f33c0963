// Package readiness wakes a waiter when its socket can be read, with no
// goroutine parked on the socket meanwhile. A gateway with thousands of
// idle agent sessions would otherwise keep one goroutine, and its stack,
// blocked in a read per session: here one goroutine waits for all of them
// and starts a waiter's work on a goroutine of its own when its socket
// has something to read, has failed, or has been closed by the peer.
//
// It is made for long silences: a park and a wake cost a few system calls
// and a goroutine start, so a caller parks only after a socket has been
// quiet for a while, and reads as usual in between.
//
// Only Linux has it (New fails elsewhere, and callers keep their
// goroutines).
package readiness

import "errors"

// ErrClosed is returned by Watch once the poller is closed.
var ErrClosed = errors.New("readiness: poller closed")
