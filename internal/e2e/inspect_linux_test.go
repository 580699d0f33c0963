package e2e

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/diglett/diglett/internal/cli"
	"github.com/diglett/diglett/internal/testutil"
)

// openTerminal opens a pseudo-terminal: the program's end (a terminal)
// and the reader of what is written to it, both closed when the test ends.
func openTerminal(t *testing.T) (term *os.File, out *testutil.Buffer) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		testutil.Unavailable(t, "no pseudo-terminals: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		master.Close()
		t.Fatalf("unlock the pseudo-terminal: %v", err)
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		master.Close()
		t.Fatalf("pseudo-terminal number: %v", err)
	}
	term, err = os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		t.Fatalf("open the pseudo-terminal: %v", err)
	}
	out = &testutil.Buffer{}
	read := make(chan struct{})
	go func() {
		defer close(read)
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			out.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		term.Close()
		master.Close()
		<-read
	})
	return term, out
}

// TestInspectorDefaultAddressTaken runs the agent with its output on a
// terminal, where the inspector is on by default, while the default
// address is taken: the agent warns and serves its tunnel all the same.
func TestInspectorDefaultAddressTaken(t *testing.T) {
	parallel(t)
	term, out := openTerminal(t)
	if taken, err := net.Listen("tcp", "127.0.0.1:4040"); err == nil {
		defer taken.Close()
	} // else something else has it: taken all the same
	g := httpGateway(t, gatewayOptions{})
	backend := nameBackend(t, "web")
	ctx, cancel := context.WithCancel(context.Background())
	var stderr testutil.Buffer
	done := make(chan error, 1)
	go func() {
		done <- cli.Agent(ctx, []string{"-g", g.Addr, "-n", "web", "--fingerprint", g.Fingerprint,
			"--known-gateways", filepath.Join(t.TempDir(), "known_gateways"), backend}, term, &stderr)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	}()
	waitFor(t, "the tunnel", out, "web: tcp://")
	if !strings.Contains(stderr.String(), `msg="request inspector off: its address is taken, by another agent perhaps; --inspect ADDR picks another" addr=127.0.0.1:4040`) {
		t.Errorf("no warning that the inspector is off:\n%s", &stderr)
	}
	if strings.Contains(out.String(), "inspect:") {
		t.Errorf("an inspector address was printed:\n%s", out)
	}
}
