package accept

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

// lockedBuffer is a log sink safe for the goroutine of Next and the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestNextOutOfDescriptors runs the process out of file descriptors
// while a connection waits to be accepted: Next logs the failure and
// retries, and accepts the connection once a descriptor is free.
func TestNextOutOfDescriptors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	// Few descriptors to fill: the soft limit just above those open.
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	lim := old
	lim.Cur = uint64(len(fds)) + 64
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old)
	var fill []*os.File
	defer func() {
		for _, f := range fill {
			f.Close()
		}
	}()
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			if !errors.Is(err, syscall.EMFILE) {
				t.Fatalf("filling the descriptor table: %v", err)
			}
			break
		}
		fill = append(fill, f)
		if len(fill) > 10000 {
			t.Fatal("the descriptor limit does not hold")
		}
	}

	var logged lockedBuffer
	log := slog.New(slog.NewTextHandler(&logged, nil))
	type result struct {
		c   net.Conn
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := Next(ln, nil, log, "accept test")
		got <- result{c, err}
	}()
	if err := testutil.Poll(5*time.Second, func() error {
		if strings.Count(logged.String(), "too many open files") < 2 {
			return errors.New("no two accept failures logged")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-got:
		t.Fatalf("Next returned while out of descriptors: %v, %v", r.c, r.err)
	default:
	}
	fill[len(fill)-1].Close()
	fill = fill[:len(fill)-1]
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatalf("after a descriptor was freed: %v", r.err)
		}
		r.c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("Next did not accept once a descriptor was free")
	}
	if !strings.Contains(logged.String(), "retry_in=") {
		t.Fatalf("the log does not say when it retries: %s", logged.String())
	}
}

// TestNextReturns: a deadline the caller set, a failure while done is
// closed, and a closed listener end the wait with their error.
func TestNextReturns(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var logged lockedBuffer
	log := slog.New(slog.NewTextHandler(&logged, nil))
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Millisecond))
	if _, err := Next(ln, nil, log, "accept"); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("deadline: %v", err)
	}
	if logged.String() != "" {
		t.Fatalf("a deadline was logged as a failure: %s", logged.String())
	}
	done := make(chan struct{})
	close(done)
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	if _, err := Next(failing{ln, emfile}, done, log, "accept"); !errors.Is(err, syscall.EMFILE) {
		t.Fatalf("out of descriptors after done: %v", err)
	}
	ln.Close()
	if _, err := Next(ln, nil, log, "accept"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("closed listener: %v", err)
	}
}

// failing fails every Accept with err.
type failing struct {
	net.Listener
	err error
}

func (f failing) Accept() (net.Conn, error) { return nil, f.err }
