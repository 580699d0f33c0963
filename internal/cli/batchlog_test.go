package cli

import (
	"bytes"
	"fmt"
	"strings"
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

// A line on one writer of a group goes after the lines gathered on the
// others.
func TestBatchWritersKeepOrderAcross(t *testing.T) {
	var mu sync.Mutex
	var order []string
	rec := func(name string) *funcWriter {
		return &funcWriter{f: func(p []byte) {
			mu.Lock()
			order = append(order, name+":"+string(p))
			mu.Unlock()
		}}
	}
	ws := NewBatchWriters(rec("err"), rec("out"))
	ws[0].Write([]byte("1\n")) // at once
	ws[0].Write([]byte("2\n")) // gathered: within a millisecond
	ws[1].Write([]byte("3\n")) // flushes "2" first
	if err := ws[0].Flush(); err != nil {
		t.Fatal(err)
	}
	ws[1].Flush()
	mu.Lock()
	defer mu.Unlock()
	got := strings.Join(order, "")
	if !strings.HasPrefix(got, "err:1\nerr:2\n") || strings.Index(got, "out:3") < strings.Index(got, "err:2") {
		t.Fatalf("order across writers: %q", got)
	}
}

type funcWriter struct{ f func([]byte) }

func (w *funcWriter) Write(p []byte) (int, error) { w.f(p); return len(p), nil }
