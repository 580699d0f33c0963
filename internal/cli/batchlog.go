package cli

// A log writer that makes one system call for many lines when many come:
// under load the access log writes a line per request, and a write each
// was about 7% of the gateway's CPU serving small requests by host.

import (
	"io"
	"sync"
	"time"
)

const (
	// batchGap: a line that comes less than this after the previous
	// write is gathered instead of written at once.
	batchGap = time.Millisecond
	// batchDelay bounds how long a gathered line waits.
	batchDelay = 5 * time.Millisecond
	// batchMax is the most bytes gathered before they are written.
	batchMax = 64 << 10
)

// BatchWriter passes lines to w at once while they are few, and gathers
// them while they come close together: a line that comes within a
// millisecond of the previous write waits, with those after it, at most
// 5 ms (or until 64 KiB are gathered), and they leave in one write. The
// order of lines is kept, also across the writers made together by
// NewBatchWriters (a line on one goes after the lines gathered on the
// others). Flush writes what is gathered; call it before the program
// ends. Its methods are safe for concurrent use.
type BatchWriter struct {
	w     io.Writer
	group *batchGroup

	buf   []byte
	last  time.Time // when the last write to w began
	timer *time.Timer
	armed bool
}

// batchGroup is the lock and the members of writers made together.
type batchGroup struct {
	mu      sync.Mutex
	members []*BatchWriter
}

// NewBatchWriter returns a BatchWriter writing to w.
func NewBatchWriter(w io.Writer) *BatchWriter { return NewBatchWriters(w)[0] }

// NewBatchWriters returns a BatchWriter for each of ws that keep the
// order of lines among them (stdout and stderr, say).
func NewBatchWriters(ws ...io.Writer) []*BatchWriter {
	g := &batchGroup{}
	for _, w := range ws {
		g.members = append(g.members, &BatchWriter{w: w, group: g})
	}
	return g.members
}

// Write writes p (one log line) or gathers it. The error is w's, for a
// line written at once; a gathered line's error is Flush's.
func (b *BatchWriter) Write(p []byte) (int, error) {
	b.group.mu.Lock()
	defer b.group.mu.Unlock()
	for _, o := range b.group.members {
		if o != b {
			o.flushLocked()
		}
	}
	now := time.Now()
	if len(b.buf) == 0 && now.Sub(b.last) >= batchGap {
		b.last = now
		return b.w.Write(p)
	}
	b.buf = append(b.buf, p...)
	if len(b.buf) >= batchMax {
		return len(p), b.flushLocked()
	}
	if !b.armed {
		b.armed = true
		if b.timer == nil {
			b.timer = time.AfterFunc(batchDelay, b.timed)
		} else {
			b.timer.Reset(batchDelay)
		}
	}
	return len(p), nil
}

func (b *BatchWriter) timed() {
	b.group.mu.Lock()
	defer b.group.mu.Unlock()
	b.armed = false
	b.flushLocked()
}

// Flush writes what is gathered.
func (b *BatchWriter) Flush() error {
	b.group.mu.Lock()
	defer b.group.mu.Unlock()
	return b.flushLocked()
}

func (b *BatchWriter) flushLocked() error {
	if len(b.buf) == 0 {
		return nil
	}
	b.last = time.Now()
	_, err := b.w.Write(b.buf)
	if cap(b.buf) > batchMax {
		b.buf = nil // a burst's buffer is not kept
	} else {
		b.buf = b.buf[:0]
	}
	return err
}
