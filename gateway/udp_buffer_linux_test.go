package gateway

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestUDPPortReadBuffer: a UDP tunnel's socket asks for a receive buffer
// of udpReadBuffer, which the kernel grants up to net.core.rmem_max.
func TestUDPPortReadBuffer(t *testing.T) {
	t.Parallel()
	r := &registry{srv: &Server{cfg: Config{PublicHost: "127.0.0.1"}}}
	ln, err := r.bindPort(true, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	want := udpReadBuffer
	if b, err := os.ReadFile("/proc/sys/net/core/rmem_max"); err == nil {
		if max, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && max < want {
			want = max
		}
	}
	rc, err := ln.(*udpPort).pc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got int
	var serr error
	rc.Control(func(fd uintptr) {
		got, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
	})
	if serr != nil {
		t.Fatal(serr)
	}
	// Linux reports twice what was granted (its bookkeeping overhead).
	if got/2 < want {
		t.Fatalf("receive buffer %d bytes, want at least %d", got/2, want)
	}
}
