//go:build unix

package relay

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// rawSource returns a TCP connection's raw socket (what copyRaw reads) and
// the peer that writes to it.
func rawSource(t *testing.T) (src *net.TCPConn, rc syscall.RawConn, peer *net.TCPConn) {
	t.Helper()
	p, s := connPair(t, kindTCP)
	src, peer = s.(*net.TCPConn), p.(*net.TCPConn)
	rc = rawConn(src)
	if rc == nil {
		t.Fatal("rawConn returned nil for a *net.TCPConn")
	}
	// A bound for any copyRaw whose test does not set its own deadline.
	src.SetReadDeadline(time.Now().Add(wait))
	peer.SetDeadline(time.Now().Add(wait))
	return src, rc, peer
}

type copyResult struct {
	n   int64
	err error
}

func startCopyRaw(dst io.Writer, rc syscall.RawConn) <-chan copyResult {
	ch := make(chan copyResult, 1)
	go func() {
		n, err := copyRaw(dst, rc, nil)
		ch <- copyResult{n, err}
	}()
	return ch
}

func copyDone(t *testing.T, ch <-chan copyResult) copyResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(2 * wait):
		t.Fatal("copyRaw did not return")
		return copyResult{}
	}
}

// notifyWriter is a bytes.Buffer that signals each write.
type notifyWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	wrote chan struct{}
}

func (w *notifyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.buf.Write(p)
	select {
	case w.wrote <- struct{}{}:
	default:
	}
	return n, err
}

func (w *notifyWriter) Bytes() []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return bytes.Clone(w.buf.Bytes())
}

func TestRawConn(t *testing.T) {
	p, s := net.Pipe()
	t.Cleanup(func() { p.Close(); s.Close() })
	if rawConn(s) != nil {
		t.Error("rawConn(net.Pipe end) != nil; want nil (copySmallFirst path)")
	}
	_, tcp := connPair(t, kindTCP)
	if rawConn(tcp) == nil {
		t.Error("rawConn(*net.TCPConn) = nil; want its raw socket")
	}
}

func TestCopyRawEOF(t *testing.T) {
	for _, size := range []int{0, 1, 4096, bufSize, bufSize + 1, 1 << 20} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			verifyNoLeaks(t)
			_, rc, peer := rawSource(t)
			data := make([]byte, size)
			for i := range data {
				data[i] = byte(i * 31)
			}
			var dst bytes.Buffer
			res := startCopyRaw(&dst, rc)
			if _, err := peer.Write(data); err != nil {
				t.Fatal(err)
			}
			if err := peer.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			r := copyDone(t, res)
			if r.err != nil {
				t.Errorf("error = %v; want nil at EOF", r.err)
			}
			if r.n != int64(size) || !bytes.Equal(dst.Bytes(), data) {
				t.Errorf("copied %d (count %d); want the %d bytes sent", dst.Len(), r.n, size)
			}
		})
	}
}

func TestCopyRawDeadline(t *testing.T) {
	verifyNoLeaks(t)
	src, rc, peer := rawSource(t)
	dst := &notifyWriter{wrote: make(chan struct{}, 1)}
	res := startCopyRaw(dst, rc)
	// Data first, then idle until the deadline.
	if _, err := peer.Write([]byte("before the deadline")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-dst.wrote:
	case <-time.After(wait):
		t.Fatal("data not copied")
	}
	src.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	r := copyDone(t, res)
	if !errors.Is(r.err, os.ErrDeadlineExceeded) {
		t.Errorf("error = %v; want os.ErrDeadlineExceeded", r.err)
	}
	if r.n != int64(len("before the deadline")) {
		t.Errorf("count = %d; want %d", r.n, len("before the deadline"))
	}

	// A deadline already past fails at once too.
	src.SetReadDeadline(time.Now().Add(-time.Second))
	r = copyDone(t, startCopyRaw(io.Discard, rc))
	if !errors.Is(r.err, os.ErrDeadlineExceeded) || r.n != 0 {
		t.Errorf("past deadline: %d, %v; want 0, os.ErrDeadlineExceeded", r.n, r.err)
	}
}

func TestCopyRawClosed(t *testing.T) {
	verifyNoLeaks(t)
	src, rc, peer := rawSource(t)
	dst := &notifyWriter{wrote: make(chan struct{}, 1)}
	res := startCopyRaw(dst, rc)
	// Once the data is through, copyRaw is waiting (or about to wait) for
	// more when the source is closed from this goroutine.
	if _, err := peer.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-dst.wrote:
	case <-time.After(wait):
		t.Fatal("data not copied")
	}
	src.Close()
	r := copyDone(t, res)
	if !errors.Is(r.err, net.ErrClosed) {
		t.Errorf("error = %v; want net.ErrClosed", r.err)
	}
	if r.n != 5 || string(dst.Bytes()) != "hello" {
		t.Errorf("copied %q (count %d); want \"hello\" (5)", dst.Bytes(), r.n)
	}
}

func TestCopyRawReset(t *testing.T) {
	verifyNoLeaks(t)
	_, rc, peer := rawSource(t)
	dst := &notifyWriter{wrote: make(chan struct{}, 1)}
	res := startCopyRaw(dst, rc)
	if _, err := peer.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-dst.wrote:
	case <-time.After(wait):
		t.Fatal("data not copied")
	}
	peer.SetLinger(0)
	peer.Close()
	r := copyDone(t, res)
	if r.err == nil {
		t.Fatalf("error = nil after a reset; want an error")
	}
	if errors.Is(r.err, os.ErrDeadlineExceeded) {
		t.Fatalf("error = %v; want the reset, not the deadline", r.err)
	}
	if !errors.Is(r.err, syscall.ECONNRESET) {
		t.Logf("error = %v (not ECONNRESET)", r.err)
	}
	if r.n != 2 {
		t.Errorf("count = %d; want 2", r.n)
	}
}

func TestCopyRawWriteError(t *testing.T) {
	verifyNoLeaks(t)
	_, rc, peer := rawSource(t)
	data := bytes.Repeat([]byte("abc"), 40000)
	w := &limitWriter{max: 1000}
	res := startCopyRaw(w, rc)
	// The write ends when the peer's data is taken or at the peer's
	// deadline; either way copyRaw has stopped on the writer's error.
	go peer.Write(data)
	r := copyDone(t, res)
	peer.Close()
	if !errors.Is(r.err, errWriterFull) {
		t.Errorf("error = %v; want the writer's error", r.err)
	}
	if r.n != 1000 {
		t.Errorf("count = %d; want 1000", r.n)
	}
}
