//go:build unix

package quictransport

import (
	"net"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"time"
)

// cpuTime is the CPU time, user and system, this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// udpSegment is the Linux socket option of UDP segmentation offload.
const udpSegment = 103

// noGSO says why this machine cannot use UDP segmentation offload, or ""
// when it can.
func noGSO() string {
	if runtime.GOOS != "linux" {
		return "UDP segmentation offload is Linux's"
	}
	if v, _ := strconv.ParseBool(os.Getenv("QUIC_GO_DISABLE_GSO")); v {
		return "QUIC_GO_DISABLE_GSO is set"
	}
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		return err.Error()
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		_, serr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_UDP, udpSegment)
	}); err != nil {
		return err.Error()
	}
	if serr != nil {
		return "the kernel has no UDP segmentation offload: " + serr.Error()
	}
	return ""
}
