//go:build unix

package cli

import (
	"syscall"
	"testing"
	"time"
)

// SignalContext ends its context at the first signal and calls second at
// the next one.
func TestSignalContext(t *testing.T) {
	second := make(chan struct{}, 1)
	ctx, stop := SignalContext(func() { second <- struct{}{} })
	defer stop()
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the first signal did not end the context")
	}
	select {
	case <-second:
		t.Fatal("second called after one signal")
	default:
	}
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-second:
	case <-time.After(5 * time.Second):
		t.Fatal("the second signal did not call second")
	}
}
