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
		if !a.SetTap(l.tap) {
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
// is not called again; a payload over MaxTapSize is not given to it, and
// disarms it.
func TestTapLeaves(t *testing.T) {
	t.Parallel()
	cs, ss := pair(t, Config{})
	o, a := openPair(t, cs, ss)
	l := &tapLog{}
	if !a.SetTap(l.tap) {
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
	a.SetTap(l2.tap)
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
	if n := len(l2.calls()); n != 0 || a.ClearTap() {
		t.Fatalf("the tap was given %d payloads after a frame over MaxTapSize", n)
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
	if a.SetTap(l.tap) {
		t.Fatal("SetTap took a stream with data buffered")
	}
	if b, err := readErr(t, a); err != nil || string(b) != "buffered" {
		t.Fatalf("Read = %q, %v", b, err)
	}
	if !a.SetTap(l.tap) {
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
	if a.ClearTap() || len(l.calls()) != 0 {
		t.Fatal("the tap was called on a stream reset before any data")
	}
	if a.SetTap(l.tap) {
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
	})
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
