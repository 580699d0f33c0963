// Package source groups a gateway's clients by where they come from, for
// every per-source limit (an IPv4 address, or the /64 of an IPv6 address,
// the block one subscriber usually gets), and sums up the events a flood
// makes frequent in one log line per interval, naming the sources that
// caused the most.
package source

import (
	"cmp"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// Summary turns events that a flood makes frequent (refused
// handshakes, failed logins, requests over a cap) into at most one Warn line per interval: the
// first event is logged at once, the ones that follow within the interval
// are counted by reason and by source and logged together when it ends.
// Its memory is bounded: it keeps at most MaxSources sources per
// interval.
type Summary struct {
	log     *slog.Logger
	msg     string
	reasons []string // the reasons, in the order they are logged
	every   time.Duration

	mu      sync.Mutex
	counts  map[string]uint64
	sources map[netip.Prefix]uint64
	last    time.Time   // when the last line was logged
	timer   *time.Timer // pending line, if any
	closed  bool
}

// MaxSources bounds the sources a summary counts in one interval;
// events from further sources are counted by reason only.
const MaxSources = 4096

// topSources is how many sources a summary line names.
const topSources = 3

// Interval is how often at most the gateway logs a summary of refused
// handshakes, failed logins or refused requests.
const Interval = 10 * time.Second

// NewSummary logs msg at Warn through log, at most once every every, with
// a count for each of reasons (in that order) and the sources counted.
func NewSummary(log *slog.Logger, msg string, every time.Duration, reasons ...string) *Summary {
	return &Summary{
		log: log, msg: msg, reasons: reasons, every: every,
		counts:  make(map[string]uint64),
		sources: make(map[netip.Prefix]uint64),
	}
}

// Add counts one event of reason from src.
func (w *Summary) Add(reason string, src netip.Prefix) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.counts[reason]++
	if _, ok := w.sources[src]; ok || len(w.sources) < MaxSources {
		w.sources[src]++
	}
	now := time.Now()
	if w.timer != nil {
		w.mu.Unlock()
		return
	}
	if wait := w.last.Add(w.every).Sub(now); wait > 0 {
		w.timer = time.AfterFunc(wait, w.flush)
		w.mu.Unlock()
		return
	}
	attrs := w.takeLocked(now)
	w.mu.Unlock()
	w.log.Warn(w.msg, attrs...)
}

// flush logs what was counted since the last line.
func (w *Summary) flush() {
	w.mu.Lock()
	w.timer = nil
	if w.closed || len(w.counts) == 0 {
		w.mu.Unlock()
		return
	}
	attrs := w.takeLocked(time.Now())
	w.mu.Unlock()
	w.log.Warn(w.msg, attrs...)
}

// takeLocked returns the attributes of a line for the counts so far and
// starts a new interval.
func (w *Summary) takeLocked(now time.Time) []any {
	var attrs []any
	for _, r := range w.reasons {
		attrs = append(attrs, r, w.counts[r])
	}
	type count struct {
		src netip.Prefix
		n   uint64
	}
	top := make([]count, 0, len(w.sources))
	for src, n := range w.sources {
		top = append(top, count{src, n})
	}
	slices.SortFunc(top, func(a, b count) int {
		if c := cmp.Compare(b.n, a.n); c != 0 {
			return c
		}
		return a.src.Addr().Compare(b.src.Addr())
	})
	var names []string
	for _, c := range top[:min(len(top), topSources)] {
		names = append(names, fmt.Sprintf("%s=%d", Name(c.src), c.n))
	}
	attrs = append(attrs, "sources", len(w.sources), "top_sources", strings.Join(names, " "))
	if !w.last.IsZero() {
		attrs = append(attrs, "since", now.Sub(w.last).Round(time.Second))
	}
	clear(w.counts)
	clear(w.sources)
	w.last = now
	return attrs
}

// Close logs what is still counted and stops the summary.
func (w *Summary) Close() {
	w.mu.Lock()
	if w.timer != nil {
		w.timer.Stop()
		w.timer = nil
	}
	w.mu.Unlock()
	w.flush()
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}

// Sources is how many sources the summary counts in its current interval.
func (w *Summary) Sources() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.sources)
}
