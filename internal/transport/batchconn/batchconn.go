// Package batchconn sits under a TLS connection and makes its system calls
// fewer and larger. A TLS 1.3 record carries at most 16 KiB, and the
// standard TLS connection writes each record with its own system call, so a
// multiplexer writing 64 KiB made four write calls, and the peer read them
// back one record (one call) at a time. Here, the writes a caller makes
// between Hold and Flush (one batch of frames passing through the TLS
// connection, encrypted into several records) are gathered and written
// with one call; and a read that filled the buffer it was given is
// followed by reads into a larger pooled buffer, so that a burst of
// records arrives with one call too.
//
// Buffers are held only while data moves: the write buffer from Hold to
// Flush, the read buffer while it has bytes not yet read. An idle
// connection holds neither.
package batchconn

import (
	"net"
	"sync"
	"sync/atomic"
)

const (
	// MaxBatch is the most bytes gathered before they are written out
	// within a batch.
	MaxBatch = 256 << 10
	// readSize is the read buffer used while data comes in bulk.
	readSize = 64 << 10
	// bulkRead: a read of at least this many bytes (or one that filled
	// its buffer) says more is likely waiting. The next read then takes a readSize buffer, which it
	// holds while it waits: at most one per connection, until a read
	// smaller than this (a keepalive, at the latest) ends the bulk.
	bulkRead = 8 << 10
)

// lent counts the pooled buffers held by connections, for tests.
var lent atomic.Int64

var (
	writePool = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}
	readPool  = sync.Pool{New: func() any { b := make([]byte, readSize); return &b }}
)

// Conn is a connection whose writes can be gathered and whose reads are
// made large while data comes in bulk. Reads and writes may be concurrent
// with each other; writes are serialised by the caller (the TLS
// connection above does it).
type Conn struct {
	net.Conn

	// wmu orders the writes: it is held across each write call, so
	// that a write made outside a batch cannot pass the batch's bytes.
	wmu  sync.Mutex
	held bool
	wbuf *[]byte // gathered writes; nil when there are none

	// Read side, owned by the one reader.
	rbuf    *[]byte // pooled; nil when empty
	rpos    int     // next unread byte of rbuf
	rend    int     // end of the bytes read into rbuf
	bulk    bool    // the last read filled the caller's buffer
	readErr error

	// Where the stream is in its TLS records (span, advance).
	hdr      [recordHeader]byte
	hdrN     int // bytes of the current record's header returned so far
	bodyLeft int // bytes of its body not yet returned, once hdrN is 5
}

// New returns c with batched writes and adaptive reads.
func New(c net.Conn) *Conn { return &Conn{Conn: c} }

// Hold starts a batch: writes are gathered until Flush.
func (c *Conn) Hold() {
	c.wmu.Lock()
	c.held = true
	c.wmu.Unlock()
}

// Flush ends the batch: what was gathered is written with one call. It
// returns the error of any write of the batch.
func (c *Conn) Flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.held = false
	return c.flushLocked()
}

func (c *Conn) flushLocked() error {
	if c.wbuf == nil {
		return nil
	}
	b := c.wbuf
	c.wbuf = nil
	_, err := c.Conn.Write(*b)
	*b = (*b)[:0]
	lent.Add(-1)
	writePool.Put(b)
	return err
}

// Write writes p, or gathers it when a batch is held.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.held {
		// Anything gathered goes first (a write made without Hold
		// after a batch whose Flush has not come yet keeps its order).
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		return c.Conn.Write(p)
	}
	if c.wbuf != nil && len(*c.wbuf)+len(p) > MaxBatch {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	if c.wbuf == nil {
		c.wbuf = writePool.Get().(*[]byte)
		lent.Add(1)
	}
	*c.wbuf = append(*c.wbuf, p...)
	return len(p), nil
}

// Read reads into p. While data comes in bulk (the last read returned at
// least bulkRead bytes, or filled p), it reads into a larger pooled buffer
// and serves p from it.
//
// A read never returns bytes past the end of the TLS record it starts in:
// bytes read beyond it wait in a pooled buffer for the next read. The TLS
// connection above keeps its record buffer for the connection's life, and
// it grows that buffer to twice a record when part of the next record
// lies behind the one it completes (about 48 KB for 16 KB records). Fed
// one record at a time, its buffer holds one record at most.
func (c *Conn) Read(p []byte) (int, error) {
	if c.rbuf != nil {
		return c.serve(p), nil
	}
	if c.readErr != nil {
		return 0, c.readErr
	}
	if !c.bulk || len(p) >= readSize {
		n, err := c.Conn.Read(p)
		c.bulk = n >= bulkRead || (n == len(p) && n > 0)
		k := c.span(p[:n])
		c.advance(p[:k])
		if k < n {
			// The rest waits, with the error that came with it.
			b := readPool.Get().(*[]byte)
			lent.Add(1)
			c.rbuf, c.rpos, c.rend = b, 0, copy(*b, p[k:n])
			c.readErr = err
			return k, nil
		}
		return n, err
	}
	b := readPool.Get().(*[]byte)
	lent.Add(1)
	n, err := c.Conn.Read(*b)
	c.bulk = n >= bulkRead
	if n == 0 {
		lent.Add(-1)
		readPool.Put(b)
		return 0, err
	}
	c.rbuf, c.rpos, c.rend = b, 0, n
	// The error comes after the bytes read with it.
	c.readErr = err
	return c.serve(p), nil
}

// serve copies into p what rbuf holds, up to the end of the current
// record, and gives rbuf back once it is empty.
func (c *Conn) serve(p []byte) int {
	avail := (*c.rbuf)[c.rpos:c.rend]
	n := copy(p, avail[:c.span(avail)])
	c.advance(p[:n])
	c.rpos += n
	if c.rpos == c.rend {
		lent.Add(-1)
		readPool.Put(c.rbuf)
		c.rbuf = nil
	}
	return n
}

// TLS record framing of the bytes read so far.
const recordHeader = 5

// span is how many of the next bytes of the stream, b, a read may return:
// up to the end of the record the read starts in, or all of b when it
// does not say where that is (part of a header).
func (c *Conn) span(b []byte) int {
	if c.hdrN == recordHeader {
		return min(len(b), c.bodyLeft)
	}
	need := recordHeader - c.hdrN
	if len(b) < need {
		return len(b)
	}
	var h [recordHeader]byte
	copy(h[:], c.hdr[:c.hdrN])
	copy(h[c.hdrN:], b[:need])
	return min(len(b), need+int(h[3])<<8|int(h[4]))
}

// advance moves the framing past b, returned by a read (within span).
func (c *Conn) advance(b []byte) {
	for len(b) > 0 {
		if c.hdrN < recordHeader {
			k := copy(c.hdr[c.hdrN:], b)
			c.hdrN += k
			b = b[k:]
			if c.hdrN == recordHeader {
				c.bodyLeft = int(c.hdr[3])<<8 | int(c.hdr[4])
			}
		} else {
			k := min(len(b), c.bodyLeft)
			c.bodyLeft -= k
			b = b[k:]
		}
		if c.hdrN == recordHeader && c.bodyLeft == 0 {
			c.hdrN = 0
		}
	}
}

// Close closes the connection at once; anything still gathered is dropped
// (a TLS connection closing cleanly writes its alert outside a batch, so
// it goes out first). Close does not wait for a write in progress: it
// ends it.
func (c *Conn) Close() error { return c.Conn.Close() }
