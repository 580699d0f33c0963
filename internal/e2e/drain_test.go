package e2e

import (
	"bufio"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// TestAgentDrainsOnShutdown: a visitor in the middle of a request when the
// agent is told to stop still gets its answer.
func TestAgentDrainsOnShutdown(t *testing.T) {
	parallel(t)
	g := startGateway(t, gatewayOptions{})
	backend := startBackend(t, func(c *net.TCPConn) {
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return
		}
		time.Sleep(time.Second) // still working when the agent stops
		io.WriteString(c, "answer to "+line)
	})
	a := startAgentCommand(t, "-g", g.Addr, "-n", "drain", "--known-gateways", filepath.Join(t.TempDir(), "kg"), backend)
	c := dialVisitor(t, a.tunnel(t, "drain"))
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "question\n")
	time.Sleep(200 * time.Millisecond) // the request has reached the backend
	stopped := make(chan error, 1)
	go func() { stopped <- a.stop() }()
	got, err := bufio.NewReader(c).ReadString('\n')
	if got != "answer to question\n" {
		t.Fatalf("in-flight request cut by shutdown: got %q, %v", got, err)
	}
	c.Close()
	if err := <-stopped; err != nil {
		t.Fatalf("agent stop: %v", err)
	}
}
