package mux

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
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
	if err := testutil.Poll(10*time.Second, func() error {
		s.wmu.Lock()
		defer s.wmu.Unlock()
		if s.writing || len(s.out) > 0 || s.lazyArmed {
			return errors.New("the session's writer never went idle")
		}
		s.writing = true
		full()
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	wrote := make(chan error, 1)
	go func() {
		_, err := st.Write([]byte("header"))
		wrote <- err
	}()
	// The write waits for room.
	if err := testutil.Poll(10*time.Second, func() error {
		select {
		case err := <-wrote:
			return fmt.Errorf("the write returned (%v) instead of waiting for room", err)
		default:
		}
		s.wmu.Lock()
		defer s.wmu.Unlock()
		if s.room == nil {
			return errors.New("the write never waited for room")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
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
