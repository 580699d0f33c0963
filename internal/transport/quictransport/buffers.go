package quictransport

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// udpBufferSize is the socket buffer size quic-go asks for, in each
// direction (its desiredBufferSize on Linux).
const udpBufferSize = 7 << 20

// capNetAdmin is the capability that lets quic-go force a buffer size past
// the limits (SO_RCVBUFFORCE, SO_SNDBUFFORCE).
const capNetAdmin = 12

// CheckUDPBuffers returns a one-line warning naming the sysctls to raise
// (net.core.rmem_max, net.core.wmem_max) with the value quic-go wants and
// the exact sysctl -w command, when the kernel's UDP buffer limits are too
// small for good QUIC throughput; or "" when they are fine, when the process
// may exceed them anyway (CAP_NET_ADMIN), or when they are unknown
// (non-Linux).
func CheckUDPBuffers() string {
	rmem, err := readSysctl("/proc/sys/net/core/rmem_max")
	if err != nil {
		return ""
	}
	wmem, err := readSysctl("/proc/sys/net/core/wmem_max")
	if err != nil {
		return ""
	}
	return udpBufferWarning(rmem, wmem, hasCapability(capNetAdmin))
}

// udpBufferWarning is CheckUDPBuffers' decision, given the limits rmem and
// wmem (bytes) and whether the process may exceed them. Linux grants a
// socket twice the size it asks for, capped at twice the limit, so quic-go
// gets its 7 MiB once a limit is 3.5 MiB; the advice is the full 7 MiB.
func udpBufferWarning(rmem, wmem int, canForce bool) string {
	if canForce {
		return ""
	}
	var low, set []string
	for _, l := range []struct {
		name  string
		value int
	}{{"net.core.rmem_max", rmem}, {"net.core.wmem_max", wmem}} {
		if 2*l.value < udpBufferSize {
			low = append(low, fmt.Sprintf("%s=%d", l.name, l.value))
			set = append(set, fmt.Sprintf("%s=%d", l.name, udpBufferSize))
		}
	}
	if len(low) == 0 {
		return ""
	}
	return fmt.Sprintf("UDP buffer limits too small for fast QUIC (%s; QUIC wants %d bytes): raise with: sysctl -w %s",
		strings.Join(low, ", "), udpBufferSize, strings.Join(set, " "))
}

func readSysctl(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// hasCapability reports whether the process holds capability bit in its
// effective set (false where that cannot be read).
func hasCapability(bit uint) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<bit) != 0
		}
	}
	return false
}
