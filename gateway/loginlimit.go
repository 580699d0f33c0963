package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/source"
)

// Failed logins slow down per source address (an IPv4 address, an IPv6
// /64): a source's first freeFailures wrong tokens are answered at once,
// each further one after a delay that doubles from
// Config.LoginFailureDelay up to maxDelayFactor times it, and once it has
// failed Config.LoginFailureLimit times within Config.LoginFailureWindow
// it is refused for Config.LoginLockout without Auth being asked (code
// too_many_failures, with the time to retry). A success from the source
// forgets it; other sources are never slowed. The handshake slot stays
// held during the delay: the per-source cap on slots bounds what one
// source holds that way, and a source waiting for its answer cannot use
// the slot for another guess.
//
// The limiter remembers at most loginSources sources, the least recently
// seen going first: a flood from more addresses than that makes it forget
// some, but never grow.
//
// Failures are logged at Debug; a Warn line per source.Interval sums up the
// failures and lockouts with the sources that caused the most.

// Limits of the login limiter.
const (
	freeFailures   = 3
	maxDelayFactor = 32
	loginSources   = 65536
)

// Reasons the login summary counts.
const (
	reasonFailed    = "failed"
	reasonLocked    = "locked_out"
	reasonLockedNew = "lockouts"
)

// LoginStats counts failed logins and logins refused by the limiter.
type LoginStats struct {
	Failures  uint64 // logins with a wrong token
	LockedOut uint64 // logins refused at once, their source locked out
	Lockouts  uint64 // times a source was locked out
	Sources   int    // sources with failures the limiter remembers
}

// LoginStats reports the login counters.
func (s *Server) LoginStats() LoginStats {
	return s.logins.stats()
}

type loginLimiter struct {
	limit                  int
	window, lockout, delay time.Duration
	summary                *source.Summary

	mu      sync.Mutex
	sources *simplelru.LRU[netip.Prefix, *loginRecord]

	failures, lockedOut, lockouts atomic.Uint64
}

// loginRecord is one source's recent failures.
type loginRecord struct {
	failures    int       // within the window
	since       time.Time // start of the window
	lockedUntil time.Time
}

func newLoginLimiter(cfg Config, log *slog.Logger) *loginLimiter {
	sources, _ := simplelru.NewLRU[netip.Prefix, *loginRecord](loginSources, nil) // fails only for a size below 1
	return &loginLimiter{
		limit:   cfg.LoginFailureLimit,
		window:  cfg.LoginFailureWindow,
		lockout: cfg.LoginLockout,
		delay:   cfg.LoginFailureDelay,
		summary: source.NewSummary(log, "failed agent logins", source.Interval,
			reasonFailed, reasonLocked, reasonLockedNew),
		sources: sources,
	}
}

// refusal is the answer to a login from src if it is locked out, before
// the token is checked; nil if the token may be checked.
func (l *loginLimiter) refusal(src netip.Prefix) *protocol.Error {
	now := time.Now()
	l.mu.Lock()
	r, ok := l.sources.Get(src)
	var until time.Time
	if ok && now.Before(r.lockedUntil) {
		until = r.lockedUntil
	}
	l.mu.Unlock()
	if until.IsZero() {
		return nil
	}
	l.lockedOut.Add(1)
	l.summary.Add(reasonLocked, src)
	return &protocol.Error{
		Code: protocol.CodeTooManyFailures,
		Message: fmt.Sprintf("too many failed logins from %s: refused until %s (try again in %v)",
			source.Name(src), until.UTC().Format(time.RFC3339), until.Sub(now).Round(time.Second)),
	}
}

// failed records a wrong token from src and waits the delay that src's
// failures earned, or until ctx ends.
func (l *loginLimiter) failed(ctx context.Context, src netip.Prefix) time.Duration {
	now := time.Now()
	l.mu.Lock()
	r, ok := l.sources.Get(src)
	if !ok || (now.Sub(r.since) > l.window && !now.Before(r.lockedUntil)) {
		r = &loginRecord{since: now}
		l.sources.Add(src, r)
	}
	r.failures++
	n := r.failures
	locked := n >= l.limit && !now.Before(r.lockedUntil)
	if locked {
		r.lockedUntil = now.Add(l.lockout)
	}
	l.mu.Unlock()

	l.failures.Add(1)
	l.summary.Add(reasonFailed, src)
	if locked {
		l.lockouts.Add(1)
		l.summary.Add(reasonLockedNew, src)
	}
	d := l.delayAfter(n)
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
	return d
}

// delayAfter is the wait before answering a source's nth failure.
func (l *loginLimiter) delayAfter(n int) time.Duration {
	if n <= freeFailures {
		return 0
	}
	d := l.delay
	for i := freeFailures + 1; i < n && d < maxDelayFactor*l.delay; i++ {
		d *= 2
	}
	return d
}

// succeeded forgets src's failures.
func (l *loginLimiter) succeeded(src netip.Prefix) {
	l.mu.Lock()
	l.sources.Remove(src)
	l.mu.Unlock()
}

func (l *loginLimiter) stats() LoginStats {
	l.mu.Lock()
	n := l.sources.Len()
	l.mu.Unlock()
	return LoginStats{
		Failures:  l.failures.Load(),
		LockedOut: l.lockedOut.Load(),
		Lockouts:  l.lockouts.Load(),
		Sources:   n,
	}
}

func (l *loginLimiter) close() { l.summary.Close() }
