package cli

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

// recordingWriter records each write made to it.
type recordingWriter struct {
	mu     sync.Mutex
	writes int
	buf    bytes.Buffer
}

func (r *recordingWriter) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writes++
	return r.buf.Write(p)
}

func (r *recordingWriter) state() (int, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.writes, r.buf.String()
}

// A lone line is written at once; a burst leaves in few writes, in order,
// and within the delay without a Flush.
func TestBatchWriter(t *testing.T) {
	rw := &recordingWriter{}
	bw := NewBatchWriter(rw)
	bw.Write([]byte("first\n"))
	if n, s := rw.state(); n != 1 || s != "first\n" {
		t.Fatalf("a lone line: %d writes, %q", n, s)
	}
	var want bytes.Buffer
	want.WriteString("first\n")
	for i := range 2000 {
		line := fmt.Sprintf("line %d of a burst\n", i)
		want.WriteString(line)
		bw.Write([]byte(line))
	}
	if err := testutil.Poll(5*time.Second, func() error {
		if _, s := rw.state(); s != want.String() {
			return fmt.Errorf("burst not written in order: %d bytes of %d", len(s), want.Len())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n, _ := rw.state(); n > 20 {
		t.Fatalf("2001 lines in %d writes", n)
	} else {
		t.Logf("2001 lines in %d writes", n)
	}
	// Flush writes what is gathered at once.
	bw.Write([]byte("a\n"))
	bw.Write([]byte("b\n"))
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, s := rw.state(); s != want.String()+"a\nb\n" {
		t.Fatalf("after Flush: %q", s[len(want.String()):])
	}
}
