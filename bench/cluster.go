package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// refCluster is the reference path of a gateway cluster's hop: two
// gateway nodes on one etcd, the agent (TLS over TCP) on the first only,
// and every request sent to the second, which forwards it over its link
// to the first. Beside the tcp column (a local session on the main
// gateway, the same agent and transport) it gives the cost of the
// cross-node hop.
const refCluster = "cluster"

// startCluster starts etcd, two cluster nodes and an agent on the first,
// and adds the path through the second.
func (b *bench) startCluster(ctx context.Context) error {
	clientPort, err := freePort()
	if err != nil {
		return err
	}
	peerPort, err := freePort()
	if err != nil {
		return err
	}
	client := "http://127.0.0.1:" + strconv.Itoa(clientPort)
	peer := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	etcd, err := startProc(b.logDir, "etcd", "etcd", "--name", "bench", "--data-dir", filepath.Join(b.logDir, "etcd-data"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "bench="+peer, "--log-level", "warn")
	if err != nil {
		return err
	}
	b.ps.add(etcd)
	if err := waitTCP(ctx, "127.0.0.1:"+strconv.Itoa(clientPort), 20*time.Second); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	type node struct {
		proc            *proc
		agents, httpAdr string
		fp              string
	}
	var nodes []node
	for i, host := range []string{"127.0.0.1", "127.0.0.2"} {
		ports := make([]int, 3)
		for j := range ports {
			if ports[j], err = freePort(); err != nil {
				return err
			}
		}
		name := fmt.Sprintf("cluster-%d", i)
		cfg := filepath.Join(b.logDir, name+".yaml")
		if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`version: 1
listen: 127.0.0.1:%d
data_dir: %s
ports: %s
public_bind: %s
domain: %s
http_addr: %s:%d
max_names_per_identity: 0
max_ports_per_identity: 0
max_sessions_per_identity: 0
cluster:
  etcd: [%s]
  node: node-%d
  advertise: 127.0.0.1:%d
`, ports[0], filepath.Join(b.logDir, name+"-data"), b.o.portsCluster, host, domain, host, ports[1], client, i, ports[2])), 0o600); err != nil {
			return err
		}
		g, err := startProc(b.logDir, name, filepath.Join(b.o.bin, "diglett-server"), "--config", cfg)
		if err != nil {
			return err
		}
		b.ps.add(g)
		m, err := g.waitLines(30*time.Second, regexp.MustCompile(`^gateway key fingerprint: (\S+)`))
		if err != nil {
			return err
		}
		nodes = append(nodes, node{proc: g, agents: "127.0.0.1:" + strconv.Itoa(ports[0]),
			httpAdr: host + ":" + strconv.Itoa(ports[1]), fp: m[0][1]})
	}
	const name = "http-cluster"
	agent, err := startProc(b.logDir, "agent-"+name, filepath.Join(b.o.bin, "diglett"),
		"-g", nodes[0].agents, "--fingerprint", nodes[0].fp, "--transport", "tcp",
		"--known-gateways", filepath.Join(b.logDir, "known_gateways_cluster"), "-n", name, b.backend)
	if err != nil {
		return err
	}
	b.ps.add(agent)
	m, err := agent.waitLines(30*time.Second,
		regexp.MustCompile(`^`+name+`: tcp://(\S+) -> `),
		regexp.MustCompile(`^`+name+`: http://(\S+) -> `))
	if err != nil {
		return err
	}
	_, port, _ := net.SplitHostPort(m[0][1])
	host, _, _ := strings.Cut(m[1][1], ":")
	// Through the second node, whose own agents serve nothing.
	b.targets = append(b.targets, &target{name: refCluster, server: agent,
		httpAddr: net.JoinHostPort("127.0.0.2", port), hostName: host, hostAddr: nodes[1].httpAdr})
	b.clusterHop = nodes[1].proc
	return nil
}
