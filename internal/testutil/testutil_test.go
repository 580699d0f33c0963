package testutil

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestBuffer(t *testing.T) {
	var b Buffer
	if b.Lines() != nil {
		t.Fatal("an empty buffer has lines")
	}
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fmt.Fprintf(&b, "line %d\n", i)
		}()
	}
	wg.Wait()
	if n := len(b.Lines()); n != 50 {
		t.Fatalf("%d lines, want 50", n)
	}
}

func TestPoll(t *testing.T) {
	n := 0
	if err := Poll(time.Second, func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	}); err != nil || n != 3 {
		t.Fatalf("Poll = %v after %d calls", err, n)
	}
	if err := Poll(50*time.Millisecond, func() error { return errors.New("never") }); err == nil {
		t.Fatal("Poll of a condition that never holds returned nil")
	}
}

func TestCert(t *testing.T) {
	c := Cert(t)
	if c.Leaf == nil || c.Leaf.VerifyHostname("localhost") != nil || c.Leaf.VerifyHostname("127.0.0.1") != nil {
		t.Fatal("certificate not for localhost and 127.0.0.1")
	}
	if Cert(t).Leaf != c.Leaf {
		t.Fatal("a second certificate made")
	}
}

// A refused address refuses, and stays taken while the test runs.
func TestRefusedAddr(t *testing.T) {
	addr := RefusedAddr(t)
	if c, err := net.Dial("tcp", addr); err == nil || !errors.Is(err, syscall.ECONNREFUSED) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial %s: %v, want connection refused", addr, err)
	}
	if ln, err := net.Listen("tcp", addr); err == nil {
		ln.Close()
		t.Fatalf("listen on %s succeeded while it is held", addr)
	}
}
