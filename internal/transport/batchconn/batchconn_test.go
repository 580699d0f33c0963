package batchconn

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

// countingConn counts the write and read calls made on a connection.
type countingConn struct {
	net.Conn
	writes, reads atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

func (c *countingConn) Read(p []byte) (int, error) {
	c.reads.Add(1)
	return c.Conn.Read(p)
}

// tlsPair connects a TLS client over a batched, counted connection to a
// TLS server over another, on loopback.
func tlsPair(t *testing.T) (client *tls.Conn, cb *Conn, cc *countingConn, server *tls.Conn, sb *Conn, sc *countingConn) {
	t.Helper()
	return tlsPairWith(t, nil)
}

// tlsPairWith is tlsPair with the client's TLS configuration changed by
// tune, when not nil.
func tlsPairWith(t *testing.T, tune func(*tls.Config)) (client *tls.Conn, cb *Conn, cc *countingConn, server *tls.Conn, sb *Conn, sc *countingConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sraw, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	cc = &countingConn{Conn: raw}
	sc = &countingConn{Conn: sraw}
	cb, sb = New(cc), New(sc)
	cconf := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
	if tune != nil {
		tune(cconf)
	}
	client = tls.Client(cb, cconf)
	server = tls.Server(sb, testutil.ServerTLS(t))
	errc := make(chan error, 1)
	go func() { errc <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, cb, cc, server, sb, sc
}

// A batch of 200 KiB through TLS (13 records) goes out with one
// write call, where the TLS connection alone makes one per record; and the
// peer reads it with far fewer calls than records.
func TestBatchWritesOneCall(t *testing.T) {
	client, cb, cc, server, _, sc := tlsPair(t)
	payload := make([]byte, 200<<10) // under MaxBatch with the records' overhead
	rand.Read(payload)
	got := make(chan []byte, 1)
	go func() {
		b := make([]byte, len(payload))
		io.ReadFull(server, b)
		got <- b
	}()
	w0, r0 := cc.writes.Load(), sc.reads.Load()
	cb.Hold()
	if _, err := client.Write(payload); err != nil {
		t.Fatal(err)
	}
	if n := cc.writes.Load() - w0; n != 0 {
		t.Fatalf("%d write calls before Flush, want 0", n)
	}
	if err := cb.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := cc.writes.Load() - w0; n != 1 {
		t.Fatalf("%d write calls for one batch, want 1", n)
	}
	select {
	case b := <-got:
		if !bytes.Equal(b, payload) {
			t.Fatal("payload corrupted")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("payload not received")
	}
	records := len(payload) / (16 << 10)
	if n := sc.reads.Load() - r0; n >= int64(records) {
		t.Fatalf("%d read calls for %d records, want fewer than records", n, records)
	}
	t.Logf("200 KiB: 1 write call, %d read calls (%d records)", sc.reads.Load()-r0, records)
}

// Unbatched writes go straight through, in order with batched ones.
func TestUnbatchedWritesInOrder(t *testing.T) {
	client, cb, _, server, _, _ := tlsPair(t)
	var want bytes.Buffer
	done := make(chan []byte, 1)
	total := 0
	var msgs [][]byte
	for i := range 200 {
		m := make([]byte, 1+i*97%20000)
		rand.Read(m)
		msgs = append(msgs, m)
		want.Write(m)
		total += len(m)
	}
	go func() {
		b := make([]byte, total)
		io.ReadFull(server, b)
		done <- b
	}()
	for i, m := range msgs {
		if i%3 == 0 {
			cb.Hold()
			client.Write(m)
			if i%2 == 0 {
				cb.Flush()
			}
			// else: the next unbatched write must still go after it
			continue
		}
		if _, err := client.Write(m); err != nil {
			t.Fatal(err)
		}
	}
	cb.Flush()
	select {
	case b := <-done:
		if !bytes.Equal(b, want.Bytes()) {
			t.Fatal("bytes out of order or corrupted")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("not received")
	}
}

// Bulk both ways through TLS over batched connections arrives intact,
// with concurrent writers serialised by the TLS connection and a reader
// on each side; afterwards neither side holds a read or write buffer.
func TestBulkIntactAndBuffersReleased(t *testing.T) {
	client, cb, _, server, sb, _ := tlsPair(t)
	const size = 8 << 20
	send := func(w *tls.Conn, bc *Conn, seed byte) [32]byte {
		h := sha256.New()
		buf := make([]byte, 40<<10)
		for sent := 0; sent < size; {
			n := min(len(buf), size-sent, 1+int(seed)*1000+sent%30000)
			rand.Read(buf[:n])
			h.Write(buf[:n])
			bc.Hold()
			if _, err := w.Write(buf[:n]); err != nil {
				t.Error(err)
				break
			}
			if err := bc.Flush(); err != nil {
				t.Error(err)
				break
			}
			sent += n
		}
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		return sum
	}
	recv := func(r *tls.Conn) [32]byte {
		h := sha256.New()
		// Small reads make the TLS connection ask for small pieces too.
		buf := make([]byte, 1500)
		for got := 0; got < size; {
			n, err := r.Read(buf)
			h.Write(buf[:n])
			got += n
			if err != nil {
				t.Error(err)
				break
			}
		}
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		return sum
	}
	var wg sync.WaitGroup
	var sentC, sentS, gotC, gotS [32]byte
	wg.Add(4)
	go func() { defer wg.Done(); sentC = send(client, cb, 3) }()
	go func() { defer wg.Done(); sentS = send(server, sb, 7) }()
	go func() { defer wg.Done(); gotS = recv(server) }()
	go func() { defer wg.Done(); gotC = recv(client) }()
	wg.Wait()
	if sentC != gotS || sentS != gotC {
		t.Fatal("bulk corrupted")
	}
	for _, bc := range []*Conn{cb, sb} {
		if bc.rbuf != nil || bc.wbuf != nil {
			t.Fatalf("buffers held after the data moved: read %v, write %v", bc.rbuf != nil, bc.wbuf != nil)
		}
	}
	// A small message each way, as a keepalive would be, ends the bulk:
	// then the readers wait holding no pooled buffer.
	for _, p := range [][2]*tls.Conn{{client, server}, {server, client}} {
		if _, err := p[0].Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 4)
		if _, err := io.ReadFull(p[1], b); err != nil {
			t.Fatal(err)
		}
	}
	waiting := make(chan struct{})
	for _, c := range []*tls.Conn{client, server} {
		go func() {
			c.Read(make([]byte, 1))
			waiting <- struct{}{}
		}()
	}
	if err := testutil.Poll(5*time.Second, func() error {
		if n := lent.Load(); n != 0 {
			return fmt.Errorf("%d pooled buffers held by waiting readers", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	client.Close()
	server.Close()
	<-waiting
	<-waiting
}

// A read error that arrives with bytes is returned after them.
func TestReadErrorAfterBufferedBytes(t *testing.T) {
	a, b := net.Pipe()
	bc := New(&chunkConn{Conn: a, data: bytes.Repeat([]byte("x"), 20<<10)})
	defer b.Close()
	bc.bulk = true // as after a read that filled its buffer
	p := make([]byte, 9<<10)
	var total int
	for {
		n, err := bc.Read(p)
		total += n
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Fatal("empty read without an error")
		}
	}
	if total != 20<<10 {
		t.Fatalf("read %d bytes before EOF, want %d", total, 20<<10)
	}
}

// chunkConn returns all its data and io.EOF from one Read.
type chunkConn struct {
	net.Conn
	data []byte
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.data)
	c.data = c.data[n:]
	if len(c.data) == 0 {
		return n, io.EOF
	}
	return n, nil
}

// TestRecordBufferHoldsOneRecord: after megabytes of full-size records
// (the sender's dynamic record sizing off, as the agent and the gateway
// set it), read in pieces of every size, the TLS connection's record
// buffer holds one record at most (TLS 1.3: 16 KiB of data, its
// overhead, the 5-byte header, and the 512 bytes it asks for beyond a
// record, in the allocator's size class of 18 KiB).
func TestRecordBufferHoldsOneRecord(t *testing.T) {
	const oneRecord = 18 << 10
	for _, readSize := range []int{1, 1500, 16 << 10, 100 << 10} {
		t.Run(fmt.Sprint(readSize), func(t *testing.T) {
			client, cb, _, server, _, _ := tlsPairWith(t, func(c *tls.Config) { c.DynamicRecordSizingDisabled = true })
			const size = 4 << 20
			go func() {
				buf := make([]byte, 200<<10)
				for sent := 0; sent < size; sent += len(buf) {
					cb.Hold()
					if _, err := client.Write(buf); err != nil {
						t.Error(err)
						return
					}
					if err := cb.Flush(); err != nil {
						t.Error(err)
						return
					}
				}
			}()
			buf := make([]byte, readSize)
			for got := 0; got < size; {
				n, err := server.Read(buf)
				got += n
				if err != nil {
					t.Fatal(err)
				}
			}
			c, err := testutil.RecordBufferCap(server)
			if err != nil {
				t.Fatal(err)
			}
			if c > oneRecord {
				t.Fatalf("the TLS record buffer grew to %d bytes, more than one record (%d)", c, oneRecord)
			}
		})
	}
}
