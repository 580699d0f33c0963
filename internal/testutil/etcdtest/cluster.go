package etcdtest

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/diglett/diglett/internal/testutil"
)

// Cluster is a running etcd of one or more members on loopback whose
// members a test can kill and start again, each on its own data
// directory and ports.
type Cluster struct {
	// Endpoints are the members' client URLs, http://127.0.0.1:PORT.
	Endpoints []string

	bin     string
	members []*member
}

// member is one etcd process of a Cluster.
type member struct {
	args []string
	url  string
	out  *testutil.Buffer

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan error // receives the process's end once; nil when stopped
}

// StartCluster starts an etcd of n members for t and waits until it has
// a leader. Every member is killed when the test ends. When the program
// is missing, t fails under CI and is skipped elsewhere.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	bin := testutil.Program(t, "etcd")
	return testutil.StartRetrying(t, "etcd cluster", func() (*Cluster, error) { return startCluster(t, bin, n) })
}

func startCluster(t testing.TB, bin string, n int) (*Cluster, error) {
	ports, err := testutil.FreePorts(2 * n)
	if err != nil {
		return nil, err
	}
	c := &Cluster{bin: bin}
	var initial []string
	for i := range n {
		peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[2*i+1])
		initial = append(initial, fmt.Sprintf("m%d=%s", i, peerURL))
	}
	for i := range n {
		clientURL := "http://127.0.0.1:" + strconv.Itoa(ports[2*i])
		peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[2*i+1])
		c.Endpoints = append(c.Endpoints, clientURL)
		c.members = append(c.members, &member{
			url: clientURL,
			out: &testutil.Buffer{},
			args: []string{
				"--name", fmt.Sprintf("m%d", i),
				"--data-dir", t.TempDir(),
				"--listen-client-urls", clientURL,
				"--advertise-client-urls", clientURL,
				"--listen-peer-urls", peerURL,
				"--initial-advertise-peer-urls", peerURL,
				"--initial-cluster", strings.Join(initial, ","),
				"--initial-cluster-state", "new",
				"--heartbeat-interval", "50",
				"--election-timeout", "500",
				"--logger", "zap",
				"--log-level", "warn",
			},
		})
	}
	t.Cleanup(func() {
		for i := range c.members {
			c.Stop(i)
		}
	})
	for _, m := range c.members {
		if err := m.start(bin); err != nil {
			return nil, err
		}
	}
	for i := range c.members {
		if err := c.waitHealthy(i); err != nil {
			for j := range c.members {
				c.Stop(j)
			}
			return nil, err
		}
	}
	return c, nil
}

func (m *member) start(bin string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		return nil
	}
	cmd := exec.Command(bin, m.args...)
	cmd.Stdout, cmd.Stderr = m.out, m.out
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	m.cmd, m.exited = cmd, exited
	return nil
}

// Stop kills member i (SIGKILL: no goodbye to its peers) and waits for it
// to exit. Stopping a stopped member does nothing.
func (c *Cluster) Stop(i int) {
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return
	}
	m.cmd.Process.Kill()
	<-m.exited
	m.cmd, m.exited = nil, nil
}

// Restart starts member i again on its data directory and ports and
// waits until it answers with a leader. It fails t when it does not.
func (c *Cluster) Restart(t testing.TB, i int) {
	t.Helper()
	if err := c.members[i].start(c.bin); err != nil {
		t.Fatalf("restart etcd member %d: %v", i, err)
	}
	if err := c.waitHealthy(i); err != nil {
		t.Fatalf("restart etcd member %d: %v", i, err)
	}
}

// waitHealthy waits until member i answers a linearizable read, which
// needs a leader and a quorum.
func (c *Cluster) waitHealthy(i int) error {
	m := c.members[i]
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.url}, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	for {
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		_, err = cli.Get(clientv3.WithRequireLeader(rctx), "health")
		rcancel()
		if err == nil {
			return nil
		}
		m.mu.Lock()
		exited := m.exited
		m.mu.Unlock()
		select {
		case werr := <-exited:
			if exited != nil {
				m.mu.Lock()
				m.cmd, m.exited = nil, nil
				m.mu.Unlock()
				return fmt.Errorf("etcd member %d exited (%v): %s", i, werr, m.out.String())
			}
		case <-ctx.Done():
			return fmt.Errorf("etcd member %d not healthy within %v: %v: %s", i, startTimeout, err, m.out.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
