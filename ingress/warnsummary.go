package ingress

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

// warnSummary turns events that a flood makes frequent (refused
// requests) into at most one Warn line per interval: the
// first event is logged at once, the ones that follow within the interval
// are counted by reason and by source and logged together when it ends.
// Its memory is bounded: it keeps at most summarySources sources per
// interval.
type warnSummary struct {
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

// summarySources bounds the sources a summary counts in one interval;
// events from further sources are counted by reason only.
const summarySources = 4096

// summaryTop is how many sources a summary line names.
const summaryTop = 3

// warnInterval is how often at most a summary of refused requests is
// logged.
const warnInterval = 10 * time.Second

func newWarnSummary(log *slog.Logger, msg string, every time.Duration, reasons ...string) *warnSummary {
	return &warnSummary{
		log: log, msg: msg, reasons: reasons, every: every,
		counts:  make(map[string]uint64),
		sources: make(map[netip.Prefix]uint64),
	}
}

// add counts one event of reason from src.
func (w *warnSummary) add(reason string, src netip.Prefix) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.counts[reason]++
	if _, ok := w.sources[src]; ok || len(w.sources) < summarySources {
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
func (w *warnSummary) flush() {
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
func (w *warnSummary) takeLocked(now time.Time) []any {
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
	for _, c := range top[:min(len(top), summaryTop)] {
		names = append(names, fmt.Sprintf("%s=%d", sourceName(c.src), c.n))
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

// close logs what is still counted and stops the summary.
func (w *warnSummary) close() {
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
