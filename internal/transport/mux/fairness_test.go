package mux

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A writer woken because the pending output was taken adds its frame even
// when others filled the room before it ran: a new stream's header is not
// starved by bulk streams that keep the output full. The active writer is
// played by the test (s.writing held), so the order of events is exact.
func TestWokenWriterIsNotStarved(t *testing.T) {
	s, _, _ := rawPeer(t, Config{})
	t.Cleanup(func() { s.Close() })
	st, err := s.OpenStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	full := func() {
		s.out = append(s.out, make([]byte, s.cfg.MaxPending)...)
	}
	// Once the stream's SYN is written, the test becomes the writer,
	// busy on the connection with a full output.
	for end := time.Now().Add(10 * time.Second); ; {
		s.wmu.Lock()
		if !s.writing && len(s.out) == 0 && !s.lazyArmed {
			s.writing = true
			full()
			s.wmu.Unlock()
			break
		}
		s.wmu.Unlock()
		if time.Now().After(end) {
			t.Fatal("the session's writer never went idle")
		}
		time.Sleep(time.Millisecond) // polling internal state
	}

	wrote := make(chan error, 1)
	go func() {
		_, err := st.Write([]byte("header"))
		wrote <- err
	}()
	// The write waits for room.
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.wmu.Lock()
		waiting := s.room != nil
		s.wmu.Unlock()
		if waiting {
			break
		}
		select {
		case err := <-wrote:
			s.wmu.Lock()
			out, writing := len(s.out), s.writing
			s.wmu.Unlock()
			t.Fatalf("the write returned (%v) instead of waiting for room: out %d, cap %d, writing %t", err, out, s.cfg.MaxPending, writing)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the write never waited for room")
		}
		time.Sleep(time.Millisecond) // polling internal state the write sets
	}
	// The writer takes the output, and before the woken write runs, bulk
	// writers fill the room again.
	s.wmu.Lock()
	s.out = s.out[:0]
	full()
	s.wakeRoomLocked()
	s.wmu.Unlock()
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the woken write waited again behind writers that barged in: starved")
	}
	s.wmu.Lock()
	over := len(s.out) - s.cfg.MaxPending
	s.out, s.writing = nil, false
	s.wmu.Unlock()
	if over != headerSize+len("header") {
		t.Fatalf("the output passed its cap by %d bytes, want one frame (%d)", over, headerSize+len("header"))
	}
	if _, err := st.Write([]byte("more")); err != nil && !errors.Is(err, ErrSessionClosed) {
		t.Fatal(err)
	}
}
