package mux

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

// tapLog records what a tap was given.
type tapLog struct {
	mu   sync.Mutex
	got  [][]byte
	take bool
}

func (l *tapLog) tap(p []byte) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got = append(l.got, bytes.Clone(p))
	return l.take
}

func (l *tapLog) calls() [][]byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.got
}

// readErr reads st once, within 10s.
func readErr(t *testing.T, st *Stream) ([]byte, error) {
	t.Helper()
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer st.SetReadDeadline(time.Time{})
	buf := make([]byte, 64<<10)
	n, err := st.Read(buf)
	return buf[:n], err
}

// A tap that takes a payload keeps it from Read, which says so until
// ClearTap; the stream then reads as before, and the window the tap's
// payloads used is given back.
func TestTapTakes(t *testing.T) {
	t.Parallel()
	cs, ss := pair(t, Config{})
	o, a := openPair(t, cs, ss)
	l := &tapLog{take: true}
	msg := bytes.Repeat([]byte("x"), MaxTapSize)
	// Without the window back, a write waits for it: bound the wait.
	o.SetWriteDeadline(time.Now().Add(10 * time.Second))
	// More than a window's worth of payloads, one tap each.
	for i := range 2 * InitialWindow / MaxTapSize {
		if !a.SetTap(l.tap, nil) {
			t.Fatalf("payload %d: SetTap refused on an empty stream", i)
		}
		if _, err := o.Write(msg); err != nil {
			t.Fatalf("payload %d: %v", i, err)
		}
		if _, err := readErr(t, a); !errors.Is(err, ErrTapped) {
			t.Fatalf("payload %d: Read = %v; want ErrTapped", i, err)
		}
		if _, err := readErr(t, a); !errors.Is(err, ErrTapped) {
			t.Fatalf("payload %d: second Read = %v; want ErrTapped until ClearTap", i, err)
		}
		if !a.ClearTap() {
			t.Fatalf("payload %d: ClearTap says the tap took nothing", i)
		}
	}
	if n := len(l.calls()); n != 2*InitialWindow/MaxTapSize {
		t.Fatalf("tap called %d times; want %d", n, 2*InitialWindow/MaxTapSize)
	}
	if !bytes.Equal(l.calls()[0], msg) {
		t.Fatalf("tap given %d bytes; want the payload of %d", len(l.calls()[0]), len(msg))
	}
	if _, err := o.Write([]byte("after")); err != nil {
		t.Fatal(err)
	}
	got, err := readErr(t, a)
	if err != nil || string(got) != "after" {
		t.Fatalf("Read after ClearTap = %q, %v; want \"after\"", got, err)
	}
}

// A tap that leaves a payload leaves it to Read, whole and in order, and
// is not called again; a payload over MaxTapSize is not given to it (the
// tap hears of it with nil), and disarms it.
func TestTapLeaves(t *testing.T) {
	t.Parallel()
	cs, ss := pair(t, Config{})
	o, a := openPair(t, cs, ss)
	l := &tapLog{}
	if !a.SetTap(l.tap, nil) {
		t.Fatal("SetTap refused")
	}
	o.Write([]byte("one"))
	o.Write([]byte("two"))
	var got []byte
	for len(got) < 6 {
		b, err := readErr(t, a)
		if err != nil {
			t.Fatalf("Read: %v after %q", err, got)
		}
		got = append(got, b...)
	}
	if string(got) != "onetwo" {
		t.Fatalf("read %q; want \"onetwo\"", got)
	}
	if c := l.calls(); len(c) != 1 || string(c[0]) != "one" {
		t.Fatalf("tap given %q; want the first payload only", c)
	}
	if a.ClearTap() {
		t.Fatal("ClearTap says the tap took a payload it left")
	}

	big := bytes.Repeat([]byte("y"), MaxTapSize+1)
	l2 := &tapLog{take: true}
	a.SetTap(l2.tap, nil)
	if _, err := o.Write(big); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(io.LimitReader(a, int64(len(big))))
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("read %d bytes, %v; want the %d-byte payload", len(got), err, len(big))
	}
	// The frame it was not given disarmed it: the next is not its either.
	if _, err := o.Write([]byte("small")); err != nil {
		t.Fatal(err)
	}
	if b, err := readErr(t, a); err != nil || string(b) != "small" {
		t.Fatalf("Read = %q, %v; want \"small\"", b, err)
	}
	if c := l2.calls(); len(c) != 1 || c[0] != nil || a.ClearTap() {
		t.Fatalf("the tap was given %q about a frame over MaxTapSize and the next; want one call with nil", c)
	}
}

// SetTap refuses a stream with data buffered, or one reset; a reset ends
// the wait of a Read on an armed tap, which took nothing.
func TestTapRefusedAndReset(t *testing.T) {
	t.Parallel()
	cs, ss := pair(t, Config{})
	o, a := openPair(t, cs, ss)
	o.Write([]byte("buffered"))
	if err := pollBuffered(a); err != nil {
		t.Fatal(err)
	}
	l := &tapLog{take: true}
	if a.SetTap(l.tap, nil) {
		t.Fatal("SetTap took a stream with data buffered")
	}
	if b, err := readErr(t, a); err != nil || string(b) != "buffered" {
		t.Fatalf("Read = %q, %v", b, err)
	}
	if !a.SetTap(l.tap, nil) {
		t.Fatal("SetTap refused an empty stream")
	}
	done := make(chan error, 1)
	go func() {
		_, err := readErr(t, a)
		done <- err
	}()
	o.Reset()
	select {
	case err := <-done:
		if !errors.Is(err, ErrStreamReset) {
			t.Fatalf("Read = %v; want ErrStreamReset", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a reset did not end the Read")
	}
	// The reset wakes the Read before it tells the tap: wait for the
	// tap's call, which a ClearTap made first would have cancelled.
	if err := testutil.Poll(10*time.Second, func() error {
		if len(l.calls()) == 0 {
			return errors.New("the tap was not told of the reset")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if a.ClearTap() {
		t.Fatal("ClearTap says the tap took a payload on a stream reset before any data")
	}
	if c := l.calls(); len(c) != 1 || c[0] != nil {
		t.Fatalf("the tap was given %q on a reset; want one call with nil", c)
	}
	if a.SetTap(l.tap, nil) {
		t.Fatal("SetTap took a reset stream")
	}
}

// pollBuffered waits for data to be buffered on st.
func pollBuffered(st *Stream) error {
	return testutil.Poll(10*time.Second, func() error {
		st.mu.Lock()
		defer st.mu.Unlock()
		if st.buffered == 0 {
			return errors.New("no data buffered")
		}
		return nil
	})
}

// ClearTap waits for a call to the tap under way, and then reports what
// it did.
func TestClearTapWaitsForTheCall(t *testing.T) {
	t.Parallel()
	cs, ss := pair(t, Config{})
	o, a := openPair(t, cs, ss)
	entered, release := make(chan struct{}), make(chan struct{})
	a.SetTap(func([]byte) bool {
		close(entered)
		<-release
		return true
	}, nil)
	o.Write([]byte("z"))
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the tap was not called")
	}
	cleared := make(chan bool, 1)
	go func() { cleared <- a.ClearTap() }()
	select {
	case <-cleared:
		t.Fatal("ClearTap returned while the tap was running")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	select {
	case took := <-cleared:
		if !took {
			t.Fatal("ClearTap says the tap took nothing")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ClearTap did not return after the tap did")
	}
}

// An armed tap whose stream's next event is not a payload for it hears
// so once, with nil, and is disarmed: a frame larger than MaxTapSize
// (then read as usual), the peer's FIN, the peer's reset, a local Close
// or Reset, and the session's end.
func TestTapHearsOtherEvents(t *testing.T) {
	t.Parallel()
	big := bytes.Repeat([]byte("b"), MaxTapSize+1)
	for _, c := range []struct {
		name  string
		event func(o, a *Stream, cs *Session)
		read  []byte // what a's Read returns after the event
		err   error  // or the error it returns
	}{
		{"larger frame", func(o, _ *Stream, _ *Session) { o.Write(big) }, big, nil},
		{"peer FIN", func(o, _ *Stream, _ *Session) { o.CloseWrite() }, nil, io.EOF},
		{"peer reset", func(o, _ *Stream, _ *Session) { o.Reset() }, nil, ErrStreamReset},
		{"local close", func(_, a *Stream, _ *Session) { a.Close() }, nil, ErrStreamClosed},
		{"local reset", func(_, a *Stream, _ *Session) { a.Reset() }, nil, ErrStreamReset},
		{"session end", func(_, _ *Stream, cs *Session) { cs.Close() }, nil, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			cs, ss := pair(t, Config{})
			o, a := openPair(t, cs, ss)
			heard := make(chan []byte, 4)
			thenCalled := false
			if !a.SetTap(func(p []byte) bool { heard <- p; return true }, func() { thenCalled = true }) {
				t.Fatal("SetTap refused")
			}
			c.event(o, a, cs)
			select {
			case p := <-heard:
				if p != nil {
					t.Fatalf("the tap was given %d bytes; want nil", len(p))
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the tap did not hear of the event")
			}
			if c.read != nil || c.err != nil {
				got, err := readErr(t, a)
				if !bytes.Equal(got, c.read) || !errors.Is(err, c.err) && !(c.read != nil && err == nil) {
					t.Fatalf("Read = %d bytes, %v; want %d bytes, %v", len(got), err, len(c.read), c.err)
				}
			}
			// Disarmed: a later frame is not given to it.
			o.Write([]byte("later"))
			if a.ClearTap() || thenCalled {
				t.Fatal("a tap called with nil counts as a take")
			}
			select {
			case p := <-heard:
				t.Fatalf("the tap was called again with %q", p)
			default:
			}
		})
	}
}

// then runs right after a take, and ClearTap waits for it; the take is
// not recorded for Read, which goes on with the next payload.
func TestTapThen(t *testing.T) {
	t.Parallel()
	cs, ss := pair(t, Config{})
	o, a := openPair(t, cs, ss)
	entered, release := make(chan struct{}), make(chan struct{})
	if !a.SetTap(func(p []byte) bool { return string(p) == "one" }, func() {
		close(entered)
		<-release
	}) {
		t.Fatal("SetTap refused")
	}
	o.Write([]byte("one"))
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("then was not called")
	}
	cleared := make(chan bool, 1)
	go func() { cleared <- a.ClearTap() }()
	select {
	case <-cleared:
		t.Fatal("ClearTap returned while then was running")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	select {
	case took := <-cleared:
		if took {
			t.Fatal("ClearTap reports a take that then ended")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ClearTap did not return after then did")
	}
	o.Write([]byte("two"))
	if got, err := readErr(t, a); err != nil || string(got) != "two" {
		t.Fatalf("Read after then = %q, %v; want \"two\"", got, err)
	}
}
