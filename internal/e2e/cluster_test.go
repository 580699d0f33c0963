package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/cluster"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/autotls/pebbletest"
	"github.com/diglett/diglett/internal/cli/servercli"
	"github.com/diglett/diglett/internal/identity"
	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/testutil/etcdtest"
)

// tokenIdentities lets in the token "as-NAME" as the identity NAME.
var tokenIdentities = gateway.AuthFuncs{
	AuthenticateFunc: func(_ context.Context, c gateway.Credentials) (gateway.Identity, error) {
		if id, ok := strings.CutPrefix(c.Token, "as-"); ok && id != "" {
			return gateway.Identity{Name: id}, nil
		}
		return gateway.Identity{}, gateway.ErrUnauthorized
	},
	AuthorizeFunc: func(context.Context, gateway.Identity, string) error { return nil },
}

// clusterNode is a gateway that is a node of a cluster on etcd at
// endpoints, its public ports on its own loopback address host.
func clusterNode(t *testing.T, endpoints []string, prefix, node, host string, lo, hi int) (*testGateway, *cluster.Member) {
	t.Helper()
	log, _ := newLogger(t, "cluster "+node)
	ctx, cancel := context.WithTimeout(context.Background(), eventually)
	defer cancel()
	m, err := cluster.Join(ctx, cluster.Options{Endpoints: endpoints, Prefix: prefix, Node: node,
		Advertise: host + ":1", TTL: 2 * time.Second, Timeout: 2 * time.Second, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), eventually)
		defer cancel()
		m.Close(ctx)
	})
	g := startGateway(t, gatewayOptions{Auth: tokenIdentities, Cluster: m.ForGateway(), PublicHost: host, PortMin: lo, PortMax: hi, Lease: 2 * time.Second})
	return g, m
}

// Two gateways that are nodes of one cluster are one namespace: of two
// identities registering one name through the two nodes at the same
// moment exactly one wins, every time; the winner's other agents get the
// same port through either node; with etcd down a new name is refused
// with a reason and the tunnels already served keep working, and once
// etcd is back names are given again, with no restart.
func TestClusterNamespace(t *testing.T) {
	parallel(t)
	etcd := etcdtest.StartCluster(t, 1)
	prefix := fmt.Sprintf("/t%d/", time.Now().UnixNano())
	lo, hi := randomPortWindow()
	ga, _ := clusterNode(t, etcd.Endpoints, prefix, "gw-a", "127.0.0.1", lo, hi)
	gb, _ := clusterNode(t, etcd.Endpoints, prefix, "gw-b", "127.0.0.2", lo, hi)
	agent := func(g *testGateway, name, identity string) diglett.Config {
		cfg := agentConfig(t, g, name)
		cfg.Token = "as-" + identity
		return cfg
	}

	const rounds = 100
	wins := map[string]int{}
	skipped := 0
	for i := range rounds {
		name := fmt.Sprintf("race-%d", i)
		var wg sync.WaitGroup
		lns := make([]*diglett.Listener, 2)
		errs := make([]error, 2)
		start := make(chan struct{})
		for j, c := range []diglett.Config{agent(ga, name, "alice"), agent(gb, name, "bob")} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				lns[j], errs[j] = listen(t, c)
			}()
		}
		close(start)
		wg.Wait()
		if errors.Is(errs[0], diglett.ErrPortUnavailable) || errors.Is(errs[1], diglett.ErrPortUnavailable) {
			// The name's cluster port is held on this machine by
			// another test's process (port windows are random): not
			// the race under test. Bounded, so a real refusal of
			// every port still fails.
			if skipped++; skipped > 5 {
				t.Fatalf("round %d: %v: more than 5 rounds met a port held elsewhere", i, errs)
			}
			for _, ln := range lns {
				if ln != nil {
					ln.Close()
				}
			}
			continue
		}
		won := -1
		for j := range 2 {
			switch {
			case errs[j] == nil && won == -1:
				won = j
			case errs[j] == nil:
				t.Fatalf("round %d: both identities got %q", i, name)
			case !errors.Is(errs[j], diglett.ErrNameTaken):
				t.Fatalf("round %d: %v, want the name taken", i, errs[j])
			}
		}
		if won == -1 {
			t.Fatalf("round %d: nobody got %q: %v", i, name, errs)
		}
		wins[[]string{"alice via gw-a", "bob via gw-b"}[won]]++
		lns[won].Close()
	}
	t.Logf("%d rounds of two identities racing for one name through two nodes: exactly one won each time (%v; %d rounds met a port held by another process)", rounds-skipped, wins, skipped)

	// One identity through both nodes: one port, served on each.
	la := listenClusterPort(t, agent(ga, "shared", "carol"))
	lb := mustListen(t, agent(gb, "shared", "carol"))
	_, pa, _ := net.SplitHostPort(la.Addr().String())
	_, pb, _ := net.SplitHostPort(lb.Addr().String())
	if pa != pb {
		t.Fatalf("the name has port %s on gw-a and %s on gw-b", pa, pb)
	}
	echo := startEcho(t)
	forward(t, la, echo)
	forward(t, lb, echo)
	mustRoundTrip(t, "127.0.0.1:"+pa, "through gw-a")
	mustRoundTrip(t, "127.0.0.2:"+pb, "through gw-b")
	t.Logf("carol's tunnel has port %s on both nodes, each serving it", pa)

	// A name stays its owner's through its lease, whichever node is
	// asked; once the lease ends on the node that held it, it is free.
	lx := listenClusterPort(t, agent(ga, "leased", "erin"))
	lx.Close()
	waitFor(t, "lease", ga.Logs, `"agent offline, name and port leased" tunnel=leased`)
	if _, err := listen(t, agent(gb, "leased", "frank")); !errors.Is(err, diglett.ErrNameTaken) {
		t.Fatalf("during erin's lease, frank through gw-b: %v, want the name taken", err)
	}
	if err := registerEventually(t, agent(gb, "leased", "frank")); err != nil {
		t.Fatalf("after erin's lease: %v", err)
	}
	t.Logf("a leased name stayed its owner's on the other node, and was free there once the lease ended")

	// etcd goes down: what is served keeps working; a new name is
	// refused, saying why.
	etcd.Stop(0)
	mustRoundTrip(t, "127.0.0.1:"+pa, "etcd down")
	_, err := listen(t, agent(ga, "newcomer", "dave"))
	if err == nil || !strings.Contains(err.Error(), "cluster store is unreachable") {
		t.Fatalf("a new name with etcd down: %v", err)
	}
	t.Logf("etcd down: the tunnel kept working; a new name was refused: %v", err)

	etcd.Restart(t, 0)
	// The node finds etcd again on its own: the agent retries as it
	// would after any refusal it may retry.
	if err := registerEventually(t, agent(ga, "newcomer", "dave")); err != nil {
		t.Fatalf("after etcd came back: %v", err)
	}
	t.Logf("etcd back: the new name was given, no gateway restarted")
}

// testNode is a gateway that is a full node of a cluster: claims in
// etcd, a link to the other nodes, and the remote tunnels kept from the
// claims.
type testNode struct {
	*testGateway
	m    *cluster.Member
	host string
}

func startNode(t *testing.T, endpoints []string, prefix, id, host string, lo, hi int) *testNode {
	t.Helper()
	log, _ := newLogger(t, "node "+id)
	key := newKey(t)
	cert, err := identity.SelfSigned(key, host)
	if err != nil {
		t.Fatal(err)
	}
	lln, err := net.Listen("tcp", host+":0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), eventually)
	defer cancel()
	m, err := cluster.Join(ctx, cluster.Options{Endpoints: endpoints, Prefix: prefix, Node: id,
		Advertise: lln.Addr().String(), Cert: cert.Certificate[0], TTL: 2 * time.Second, Timeout: 2 * time.Second, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	var srv atomic.Pointer[gateway.Server]
	l, err := m.NewLink(cert, srv.Load, log)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); l.Serve(lln) }()
	g := startGateway(t, gatewayOptions{Auth: tokenIdentities, Cluster: m.ForGateway(), PublicHost: host,
		PortMin: lo, PortMax: hi, Lease: 2 * time.Second, Domain: testDomain})
	srv.Store(g.Server)
	sctx, stop := context.WithCancel(context.Background())
	fed := make(chan struct{})
	go func() { defer close(fed); m.Serve(sctx, g.Server, l) }()
	t.Cleanup(func() {
		stop()
		<-fed
		g.Close()
		l.Close()
		<-served
		ctx, cancel := context.WithTimeout(context.Background(), eventually)
		defer cancel()
		m.Close(ctx)
	})
	return &testNode{testGateway: g, m: m, host: host}
}

// checksummedEcho sends n random bytes through addr (an echo behind it)
// and checks what comes back, by SHA-256.
func checksummedEcho(addr string, n int) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(eventually))
	data := make([]byte, n)
	rand.Read(data)
	go func() {
		c.Write(data)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if sha256.Sum256(got) != sha256.Sum256(data) {
		return fmt.Errorf("%d bytes back from %s, not the %d sent", len(got), addr, n)
	}
	return nil
}

// Any node serves any tunnel: an agent connected only to node a is
// reached through the TCP port and the HTTP host of nodes b and c, with
// its visitor rules applied there; while its agent is away every node
// answers as for a leased tunnel, and once the lease ends none serves it.
func TestClusterForwarding(t *testing.T) {
	parallel(t)
	etcd := etcdtest.Start(t)
	prefix := fmt.Sprintf("/f%d/", time.Now().UnixNano())
	lo, hi := randomPortWindow()
	eps := []string{etcd.Endpoint}
	a := startNode(t, eps, prefix, "gw-a", "127.0.0.1", lo, hi)
	b := startNode(t, eps, prefix, "gw-b", "127.0.0.2", lo, hi)
	c := startNode(t, eps, prefix, "gw-c", "127.0.0.3", lo, hi)

	cfg := agentConfig(t, a.testGateway, "echo")
	cfg.Token = "as-alice"
	echo := listenClusterPort(t, cfg)
	forward(t, echo, startEcho(t))
	_, port, _ := net.SplitHostPort(echo.Addr().String())
	for _, n := range []*testNode{a, b, c} {
		addr := net.JoinHostPort(n.host, port)
		if err := testutil.Poll(eventually, func() error { return checksummedEcho(addr, 1<<20) }); err != nil {
			t.Fatalf("through %s: %v", addr, err)
		}
	}
	t.Logf("the agent is on gw-a only; 1 MiB echoed and checksummed through port %s of gw-a, gw-b and gw-c", port)

	web := startHTTPAgent(t, a.testGateway, "web", nameBackend(t, "web"), func(c *diglett.Config) {
		c.Token, c.BasicAuth = "as-alice", "ann:s3cret"
	})
	for _, n := range []*testNode{b, c} {
		client := n.httpClient(t)
		if err := testutil.Poll(eventually, func() error {
			if code, _ := get(t, client, "http://web."+testDomain+"/"); code != http.StatusUnauthorized {
				return fmt.Errorf("%s: %d without credentials, want 401", n.host, code)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest(http.MethodGet, "http://web."+testDomain+"/", nil)
		req.SetBasicAuth("ann", "s3cret")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "web" {
			t.Fatalf("%s with credentials: %d %q", n.host, resp.StatusCode, body)
		}
	}
	t.Logf("web (basic auth, agent on gw-a): gw-b and gw-c asked for the credentials and served it with them")

	// The agent leaves: during its lease every node answers 503; after
	// it, the name is free and no node serves it.
	web.Close()
	echo.Close()
	for _, n := range []*testNode{a, b, c} {
		client := n.httpClient(t)
		if err := testutil.Poll(eventually, func() error {
			if code, _ := get(t, client, "http://web."+testDomain+"/"); code != http.StatusServiceUnavailable {
				return fmt.Errorf("%s: %d during the lease, want 503", n.host, code)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []*testNode{a, b, c} {
		client := n.httpClient(t)
		if err := testutil.Poll(eventually, func() error {
			if code, _ := get(t, client, "http://web."+testDomain+"/"); code != http.StatusNotFound {
				return fmt.Errorf("%s: %d after the lease, want 404", n.host, code)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("agent gone: 503 from every node during its lease, 404 from every node after it")
}

// portOn is a port free on host now.
func portOn(t *testing.T, host string) int {
	t.Helper()
	ln, err := net.Listen("tcp", host+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Three diglett-server commands whose files name one cluster: an agent
// command connected to the first is reached through the TCP port and the
// host name of each, and the nodes list each other.
func TestClusterCommand(t *testing.T) {
	parallel(t)
	etcd := etcdtest.Start(t)
	prefix := fmt.Sprintf("/c%d/", time.Now().UnixNano())
	lo, hi := randomPortWindow()
	var nodes []*serverCommand
	var hosts []string
	var key []byte
	for i, host := range []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"} {
		dir := t.TempDir()
		cfg := nodeFile(t, dir, host, i, lo, hi, etcd.Endpoint, prefix,
			fmt.Sprintf("domain: %s\nhttp_addr: %s:%d\nadmin_addr: 127.0.0.1:0\n", testDomain, host, portOn(t, host)))
		if i > 0 {
			// One gateway key for the whole cluster, as the README says.
			writeFile(t, dir, "gateway.key", string(key))
		}
		nodes = append(nodes, startServerCommand(t, "--config", cfg))
		hosts = append(hosts, host)
		if i == 0 {
			var err error
			if key, err = os.ReadFile(filepath.Join(dir, "gateway.key")); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, n := range nodes {
		waitFor(t, "three nodes", &n.stderr, `"serving as a node of the cluster"`)
		if n.Fingerprint != nodes[0].Fingerprint {
			t.Fatalf("a node's key is not the one given: %s, want %s", n.Fingerprint, nodes[0].Fingerprint)
		}
	}
	a := startAgentCommand(t, "-g", nodes[0].Addr, "--fingerprint", nodes[0].Fingerprint,
		"--known-gateways", filepath.Join(t.TempDir(), "known_gateways"), "-n", "web", nameBackend(t, "web"))
	_, port, _ := net.SplitHostPort(a.tunnel(t, "web"))
	for i, n := range nodes {
		byPort := "http://" + net.JoinHostPort(hosts[i], port) + "/"
		byHost := &testGateway{HTTPAddr: logged(t, n, httpLine)}
		if err := testutil.Poll(eventually, func() error {
			if code, body, err := fetch(http.DefaultClient, byPort); err != nil || code != http.StatusOK || body != "web" {
				return fmt.Errorf("%s: %d %q %v", byPort, code, body, err)
			}
			if code, body, err := fetch(byHost.httpClient(t), "http://web."+testDomain+"/"); err != nil || code != http.StatusOK || body != "web" {
				return fmt.Errorf("web.%s via %s: %d %q %v", testDomain, byHost.HTTPAddr, code, body, err)
			}
			return nil
		}); err != nil {
			t.Fatalf("node gw-%d: %v\n%s", i, err, &n.stderr)
		}
	}
	t.Logf("three nodes with one gateway key; the agent on gw-0 only; its port %s and its host answered on gw-0, gw-1 and gw-2", port)

	// The management API and the metrics of a node show the cluster.
	adm := logged(t, nodes[1], adminLine)
	var view struct {
		Node    string `json:"node"`
		Healthy bool   `json:"healthy"`
		Members []struct {
			Node string `json:"node"`
		} `json:"members"`
		Tunnels []struct {
			Name  string   `json:"name"`
			Port  int      `json:"port"`
			Nodes []string `json:"nodes"`
		} `json:"tunnels"`
	}
	if code, body := api(t, http.MethodGet, adm, "/api/v1/cluster", "", &view); code != http.StatusOK {
		t.Fatalf("GET /api/v1/cluster: %d %s", code, body)
	}
	if view.Node != "gw-1" || !view.Healthy || len(view.Members) != 3 || len(view.Tunnels) != 1 ||
		view.Tunnels[0].Name != "web" || fmt.Sprint(view.Tunnels[0].Port) != port || fmt.Sprint(view.Tunnels[0].Nodes) != "[gw-0]" {
		t.Fatalf("GET /api/v1/cluster on gw-1: %+v", view)
	}
	(&trafficGateway{adminAddr: adm}).awaitMetrics(t, map[string]float64{
		"diglett_cluster_members": 3,
		"diglett_cluster_healthy": 1,
	})
	scraped := (&trafficGateway{adminAddr: adm}).scrape(t)
	if !regexp.MustCompile(`(?m)^diglett_cluster_forwarded_total [1-9]`).MatchString(scraped) {
		t.Errorf("gw-1 forwarded visitors but its metrics do not count them:\n%s", scraped)
	}
	t.Logf("gw-1's API lists 3 members and web served by gw-0; its metrics count the members and the visitors it forwarded")
	a.stop()
	for _, n := range nodes {
		n.stop()
	}
}

// hookCalls records the webhook registerer's calls, by path.
type hookCalls struct {
	mu    sync.Mutex
	calls map[string][]string // path -> "event name"
}

func (h *hookCalls) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var ev struct{ Event, Name string }
	json.NewDecoder(r.Body).Decode(&ev)
	h.mu.Lock()
	h.calls[r.URL.Path] = append(h.calls[r.URL.Path], ev.Event+" "+ev.Name)
	h.mu.Unlock()
}

func (h *hookCalls) of(path string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.calls[path])
}

// The registerers that tell outside systems run on the node that leads
// the cluster only, and it publishes every tunnel, its own agents' or
// not; when it stops, another node takes over and publishes them.
func TestClusterLeaderPublishes(t *testing.T) {
	parallel(t)
	etcd := etcdtest.Start(t)
	hooks := &hookCalls{calls: map[string][]string{}}
	hs := httptest.NewServer(hooks)
	defer hs.Close()
	prefix := fmt.Sprintf("/l%d/", time.Now().UnixNano())
	lo, hi := randomPortWindow()
	var nodes []*serverCommand
	for i, host := range []string{"127.0.0.1", "127.0.0.2"} {
		dir := t.TempDir()
		cfg := nodeFile(t, dir, host, i, lo, hi, etcd.Endpoint, prefix,
			fmt.Sprintf("lease: 2s\nregister:\n  - log: {}\n  - webhook: {url: \"%s/gw-%d\"}\n", hs.URL, i))
		nodes = append(nodes, startServerCommand(t, "--config", cfg))
	}
	// The agent is on both nodes: the tunnel outlives either.
	a := startAgentCommand(t, "-g", nodes[0].Addr, "-g", nodes[1].Addr,
		"--known-gateways", filepath.Join(t.TempDir(), "known_gateways"), "-n", "web", nameBackend(t, "web"))
	a.tunnel(t, "web")
	leader, follower := -1, -1
	if err := testutil.Poll(eventually, func() error {
		for i := range nodes {
			if slices.Contains(hooks.of(fmt.Sprintf("/gw-%d", i)), "register web") {
				leader, follower = i, 1-i
				return nil
			}
		}
		return errors.New("no node published web")
	}); err != nil {
		t.Fatal(err)
	}
	if got := hooks.of(fmt.Sprintf("/gw-%d", follower)); len(got) != 0 {
		t.Fatalf("gw-%d, not the leader, called the webhook: %v", follower, got)
	}
	waitFor(t, "leader", &nodes[leader].stderr, "leading the cluster")
	t.Logf("gw-%d leads and published web; gw-%d published nothing", leader, follower)

	nodes[leader].stop()
	if err := testutil.Poll(eventually, func() error {
		if !slices.Contains(hooks.of(fmt.Sprintf("/gw-%d", follower)), "register web") {
			return fmt.Errorf("gw-%d has not published web", follower)
		}
		return nil
	}); err != nil {
		t.Fatalf("%v\n%s", err, &nodes[follower].stderr)
	}
	t.Logf("gw-%d stopped; gw-%d took the lead and published web", leader, follower)
	a.stop()
}

// A steady load by host over three real gateway processes; the node of
// one of the agent's two sessions is killed (SIGKILL, no goodbye): not a
// request started after the kill fails on the two others, and the dead
// node leaves the membership within its lease.
func TestClusterFailover(t *testing.T) {
	parallel(t)
	etcd := etcdtest.Start(t)
	bin := filepath.Join(buildCommands(t, "./cmd/diglett-server"), "diglett-server")
	prefix := fmt.Sprintf("/k%d/", time.Now().UnixNano())
	lo, hi := randomPortWindow()
	const ttl = 2 * time.Second
	hosts := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}
	var nodes []*gatewayProcess
	var web, admin []string
	for i, host := range hosts {
		dir := t.TempDir()
		httpPort, adminPort := portOn(t, host), portOn(t, host)
		cfg := nodeFile(t, dir, host, i, lo, hi, etcd.Endpoint, prefix,
			fmt.Sprintf("domain: %s\nhttp_addr: %s:%d\nadmin_addr: %s:%d\n", testDomain, host, httpPort, host, adminPort))
		nodes = append(nodes, startGatewayCmd(t, exec.Command(bin, "--config", cfg)))
		web = append(web, fmt.Sprintf("%s:%d", host, httpPort))
		admin = append(admin, fmt.Sprintf("%s:%d", host, adminPort))
	}
	members := func(at string) (int, []string, error) {
		var view struct {
			Members []struct{} `json:"members"`
			Tunnels []struct {
				Name  string   `json:"name"`
				Nodes []string `json:"nodes"`
			} `json:"tunnels"`
		}
		resp, err := http.Get("http://" + at + "/api/v1/cluster")
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(&view); err != nil {
			return 0, nil, err
		}
		var nodes []string
		for _, tn := range view.Tunnels {
			if tn.Name == "web" {
				nodes = tn.Nodes
			}
		}
		return len(view.Members), nodes, nil
	}
	a := startAgentCommand(t, "-g", nodes[0].Addr, "-g", nodes[1].Addr,
		"--known-gateways", filepath.Join(t.TempDir(), "known_gateways"), "-n", "web", nameBackend(t, "web"))
	a.tunnel(t, "web")
	if err := testutil.Poll(eventually, func() error {
		n, holders, err := members(admin[2])
		if err != nil || n != 3 || fmt.Sprint(holders) != "[gw-0 gw-1]" {
			return fmt.Errorf("gw-2 sees %d members, web on %v (%v)", n, holders, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	clients := make([]*http.Client, len(web))
	for i, addr := range web {
		clients[i] = (&testGateway{HTTPAddr: addr}).httpClient(t)
	}
	var before atomic.Int64
	const maxCalls = 3000 // per worker: the load is bounded in count as well as in time
	l := startLoad(t, 6, func(worker, call int) error {
		if call >= maxCalls {
			<-time.After(10 * time.Millisecond)
			return nil
		}
		node := (worker + call) % 3
		if l := before.Load(); l < 0 { // after the kill: the survivors only
			node = 1 + (worker+call)%2
		}
		if code, body, err := fetch(clients[node], "http://web."+testDomain+"/"); err != nil || code != http.StatusOK || body != "web" {
			return fmt.Errorf("gw-%d: %d %q %v", node, code, body, err)
		}
		if before.Load() >= 0 {
			before.Add(1)
		}
		return nil
	})
	if err := testutil.Poll(eventually, func() error {
		if n := before.Load(); n < 150 {
			return fmt.Errorf("%d requests so far", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	served := before.Swap(-1)
	l.mark()
	killed := time.Now()
	nodes[0].kill(t)
	if err := testutil.Poll(ttl+5*time.Second, func() error {
		n, holders, err := members(admin[2])
		if err != nil || n != 2 || fmt.Sprint(holders) != "[gw-1]" {
			return fmt.Errorf("gw-2 sees %d members, web on %v (%v)", n, holders, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	gone := time.Since(killed)
	// Some more load on the membership without the dead node.
	settled := l.ok.Load()
	if err := testutil.Poll(eventually, func() error {
		if n := l.ok.Load(); n < settled+200 {
			return fmt.Errorf("%d requests since the membership settled", n-settled)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	l.finish(t, "SIGKILL of gw-0")
	if gone > ttl+3*time.Second {
		t.Errorf("the dead node left the membership %v after the kill; its lease is %v", gone.Round(100*time.Millisecond), ttl)
	}
	t.Logf("%d requests over 3 nodes before the kill; after SIGKILL of gw-0: %d requests on gw-1 and gw-2, 0 failed; gw-0 left the membership %v after the kill (lease %v)",
		served, l.ok.Load(), gone.Round(100*time.Millisecond), ttl)
}

// fetch GETs url: status, body, or the error (never failing the test, for
// polls and load loops).
func fetch(c *http.Client, url string) (int, string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// With a three-member etcd cluster under them, the gateways go on as if
// nothing happened when one etcd member is killed: names are given and
// visitors forwarded, and the only trace is in the logs.
func TestClusterEtcdMemberKilled(t *testing.T) {
	parallel(t)
	etcd := etcdtest.StartCluster(t, 3)
	prefix := fmt.Sprintf("/m%d/", time.Now().UnixNano())
	lo, hi := randomPortWindow()
	a := startNode(t, etcd.Endpoints, prefix, "gw-a", "127.0.0.1", lo, hi)
	b := startNode(t, etcd.Endpoints, prefix, "gw-b", "127.0.0.2", lo, hi)
	publish := func(name string) string {
		cfg := agentConfig(t, a.testGateway, name)
		cfg.Token = "as-alice"
		ln := listenClusterPort(t, cfg)
		forward(t, ln, startEcho(t))
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		return port
	}
	reach := func(port string) {
		t.Helper()
		if err := testutil.Poll(eventually, func() error { return checksummedEcho(net.JoinHostPort(b.host, port), 64<<10) }); err != nil {
			t.Fatalf("through gw-b: %v", err)
		}
	}
	reach(publish("before"))
	for i := range 3 {
		etcd.Stop(i)
		start := time.Now()
		port := publish(fmt.Sprintf("without-%d", i))
		reach(port)
		t.Logf("etcd member %d killed: a new name was given and forwarded through gw-b in %v", i, time.Since(start).Round(time.Millisecond))
		etcd.Restart(t, i)
	}
}

// One node of a cluster orders a tunnel's certificate; the other serves
// the same certificate from etcd, with no order of its own.
func TestClusterSharedCertificates(t *testing.T) {
	parallel(t)
	etcd := etcdtest.Start(t)
	bin := filepath.Join(buildCommands(t, "./cmd/diglett-server"), "diglett-server")
	prefix := fmt.Sprintf("/s%d/", time.Now().UnixNano())
	// A domain of its own: certificate orders are per name.
	domain := fmt.Sprintf("c%d.test", time.Now().UnixNano()%1e9)
	lo, hi := randomPortWindow()
	httpA, httpsA := portOn(t, "127.0.0.1"), portOn(t, "127.0.0.1")
	p := pebbletest.Start(t, httpA, httpsA)
	t.Cleanup(p.CloseClientConnections)
	var nodes []*gatewayProcess
	var https []string
	for i, host := range []string{"127.0.0.1", "127.0.0.2"} {
		dir := t.TempDir()
		httpPort, httpsPort := portOn(t, host), portOn(t, host)
		if i == 0 {
			// Where the CA checks its challenges.
			httpPort, httpsPort = httpA, httpsA
		}
		cfg := nodeFile(t, dir, host, i, lo, hi, etcd.Endpoint, prefix, fmt.Sprintf(
			"domain: %s\nhttp_addr: %s:%d\nhttps_addr: %s:%d\nacme_ca: %s\nacme_ca_root: %s\nacme_email: ops@example.com\n",
			domain, host, httpPort, host, httpsPort, p.DirectoryURL, p.RootCAFile))
		nodes = append(nodes, startGatewayCmd(t, exec.Command(bin, "--config", cfg)))
		https = append(https, fmt.Sprintf("%s:%d", host, httpsPort))
	}
	a := startAgentCommand(t, "-g", nodes[0].Addr, "--fingerprint", nodes[0].Fingerprint,
		"--known-gateways", filepath.Join(t.TempDir(), "known_gateways"), "-n", "web", nameBackend(t, "web"))
	a.tunnel(t, "web")
	serial := func(addr string) (string, error) {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
			&tls.Config{ServerName: "web." + domain, RootCAs: p.IssuerRoots(t)})
		if err != nil {
			return "", err
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
	}
	var first string
	if err := testutil.Poll(2*eventually, func() (err error) {
		first, err = serial(https[0])
		return err
	}); err != nil {
		t.Fatalf("gw-0: %v\n%s", err, nodes[0].stderr)
	}
	orders := p.Orders()
	var second string
	if err := testutil.Poll(eventually, func() (err error) {
		second, err = serial(https[1])
		return err
	}); err != nil {
		t.Fatalf("gw-1: %v\n%s", err, nodes[1].stderr)
	}
	if first != second {
		t.Fatalf("gw-0 served certificate %s, gw-1 %s", first, second)
	}
	if n := p.Orders(); n != orders || n != 1 {
		t.Fatalf("%d orders (%d after gw-0's), want 1", n, orders)
	}
	t.Logf("gw-0 ordered web.%s's certificate (serial %s); gw-1 served the same one from etcd; 1 order in all", domain, first)
	a.stop()
}

// registerEventually registers cfg's name, again and again as an agent
// would while the gateway refuses it for now, until it is given (the
// listener is closed at once) or eventually passes.
// listenClusterPort is mustListen for a new name, whose port the cluster
// chooses from the nodes' window. The windows of concurrent tests are
// random and may overlap, so the port chosen may be held on this machine
// by another test's process, which the node refuses as unavailable (and
// the cluster releases): not the behaviour under test, so that refusal is
// tried again, up to 5 times, after which it fails as any other error.
func listenClusterPort(t *testing.T, cfg diglett.Config) *diglett.Listener {
	t.Helper()
	for try := 1; ; try++ {
		ln, err := listen(t, cfg)
		if err == nil {
			return ln
		}
		if !errors.Is(err, diglett.ErrPortUnavailable) || try == 5 {
			t.Fatalf("listen: %v", err)
		}
		t.Logf("listen, try %d: %v: a port held elsewhere on this machine; trying again", try, err)
	}
}

func registerEventually(t *testing.T, cfg diglett.Config) error {
	return testutil.Poll(eventually, func() error {
		ln, err := listen(t, cfg)
		if err == nil {
			ln.Close()
		}
		return err
	})
}

// A node reaches an etcd that asks for client certificates with the
// cluster section's etcd_ca, etcd_cert and etcd_key; without a client
// certificate it does not start, and says why.
func TestClusterEtcdTLS(t *testing.T) {
	parallel(t)
	etcd := etcdtest.StartTLS(t)
	prefix := fmt.Sprintf("/t%d/", time.Now().UnixNano())
	lo, hi := randomPortWindow()
	file := func(extra string) string {
		link := portOn(t, "127.0.0.1")
		return writeFile(t, t.TempDir(), "node.yaml", fmt.Sprintf(`version: 1
listen: 127.0.0.1:0
data_dir: %s
ports: %d-%d
public_bind: 127.0.0.1
cluster:
  etcd: [%s]
  prefix: %s
  node: gw-tls
  advertise: 127.0.0.1:%d
  link_listen: 127.0.0.1:%d
  etcd_ca: %s
  timeout: 2s
%s`, t.TempDir(), lo, hi, etcd.Endpoint, prefix, link, link, etcd.CAFile, extra))
	}
	ctx, cancel := context.WithTimeout(context.Background(), eventually)
	var out bytes.Buffer
	err := servercli.Server(ctx, []string{"--config", file("")}, &out, &out)
	cancel()
	if err == nil || !strings.Contains(err.Error(), "cluster") {
		t.Fatalf("without a client certificate: %v\n%s", err, &out)
	}
	t.Logf("without a client certificate the node did not start: %v", err)

	srv := startServerCommand(t, "--config", file(fmt.Sprintf("  etcd_cert: %s\n  etcd_key: %s\n", etcd.ClientCertFile, etcd.ClientKeyFile)))
	waitFor(t, "joined", &srv.stderr, `"serving as a node of the cluster"`)
	resp, err := etcd.Client.Get(context.Background(), prefix+"members/gw-tls")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("membership key: %v %v", resp, err)
	}
	t.Logf("with etcd_cert and etcd_key the node joined over TLS: %s", resp.Kvs[0].Key)
	srv.stop()
}

// nodeFile writes, in dir, the file of node gw-I of a cluster on etcd at
// endpoint under prefix: its agent port and public ports on host (tunnel
// ports lo-hi), settings (YAML lines) and its cluster section, its link
// on host too.
func nodeFile(t *testing.T, dir, host string, i, lo, hi int, endpoint, prefix, settings string) string {
	t.Helper()
	link := portOn(t, host)
	return writeFile(t, dir, "node.yaml", fmt.Sprintf(`version: 1
listen: %s:0
data_dir: %s
ports: %d-%d
public_bind: %s
%scluster:
  etcd: [%s]
  prefix: %s
  node: gw-%d
  advertise: %s:%d
  link_listen: %s:%d
  ttl: 2s
  timeout: 2s
`, host, dir, lo, hi, host, settings, endpoint, prefix, i, host, link, host, link))
}
