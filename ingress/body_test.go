package ingress

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"
)

// deadlineWriter is a ResponseWriter whose read deadline, once passed,
// ends the body pipe it was given, as the HTTP/2 server does.
type deadlineWriter struct {
	http.ResponseWriter
	body *io.PipeReader

	mu       sync.Mutex
	deadline time.Time
	calls    int
}

func (w *deadlineWriter) SetReadDeadline(d time.Time) error {
	w.mu.Lock()
	w.deadline = d
	w.calls++
	w.mu.Unlock()
	if !d.IsZero() && d.Before(time.Now()) {
		w.body.CloseWithError(fmt.Errorf("%w", os.ErrDeadlineExceeded))
	}
	return nil
}

func (w *deadlineWriter) last() (time.Time, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.deadline, w.calls
}

func TestTimedBodyStalls(t *testing.T) {
	t.Parallel()
	pr, pw := io.Pipe()
	defer pw.Close()
	w := &deadlineWriter{body: pr}
	b := newTimedBody(w, pr, 50*time.Millisecond)
	go pw.Write([]byte("some"))
	buf := make([]byte, 16)
	if n, err := b.Read(buf); n != 4 || err != nil {
		t.Fatalf("read %d, %v", n, err)
	}
	// Nothing more comes.
	if _, err := b.Read(buf); !errors.Is(err, errBodyTimeout) || !b.timedOut() {
		t.Fatalf("stalled read: %v, want errBodyTimeout", err)
	}
	if _, err := b.Read(buf); !errors.Is(err, errBodyTimeout) {
		t.Fatalf("read after the timeout: %v", err)
	}
	b.finish(true)
	if _, calls := w.last(); calls != 1 {
		t.Fatalf("%d deadline calls, want only the one that ended the read", calls)
	}
}

func TestTimedBodySlowButMoving(t *testing.T) {
	t.Parallel()
	pr, pw := io.Pipe()
	w := &deadlineWriter{body: pr}
	const timeout = 200 * time.Millisecond
	b := newTimedBody(w, pr, timeout)
	const msg = "slow but steady"
	go func() {
		for i := range len(msg) {
			time.Sleep(timeout / 10) // the pace is the point
			pw.Write([]byte(msg[i : i+1]))
		}
		pw.Close()
	}()
	// The reader is slower than the timeout between reads (the backend
	// pushing back): only the time a read waits counts.
	var got []byte
	buf := make([]byte, 4)
	for {
		n, err := b.Read(buf)
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		if len(got) == 3 {
			time.Sleep(2 * timeout) // the pace is the point
		}
	}
	if string(got) != msg || b.timedOut() {
		t.Fatalf("read %q (timed out %v), want %q", got, b.timedOut(), msg)
	}
	b.finish(true)
	if d, calls := w.last(); calls != 0 || !d.IsZero() {
		t.Fatalf("deadline %v set %d times on a body read to its end", d, calls)
	}
}

func TestTimedBodyFinish(t *testing.T) {
	t.Parallel()
	pr, pw := io.Pipe()
	defer pw.Close()
	w := &deadlineWriter{body: pr}
	b := newTimedBody(w, pr, time.Hour)
	b.finish(false)
	if _, calls := w.last(); calls != 0 {
		t.Fatal("an HTTP/2 body got a deadline after its handler")
	}
	b = newTimedBody(w, pr, time.Hour)
	b.finish(true)
	if d, _ := w.last(); d.IsZero() {
		t.Fatal("an HTTP/1 body left unread got no deadline: the server would wait for it without bound")
	}
	// After the handler the timer no longer touches the response.
	b = newTimedBody(w, pr, 10*time.Millisecond)
	b.finish(false)
	_, before := w.last()
	errc := make(chan error, 1)
	go func() {
		_, err := b.Read(make([]byte, 1))
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond) // longer than the timeout: nothing may happen
	if _, after := w.last(); after != before {
		t.Fatal("the timer set a deadline after the handler returned")
	}
	pw.Write([]byte("x"))
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}
