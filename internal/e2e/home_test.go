//go:build linux

package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/diglett/diglett/internal/autotls/pebbletest"
	"github.com/diglett/diglett/internal/cli/servercli"
	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/testutil/consultest"
	"github.com/diglett/diglett/internal/testutil/dnstest"
	"github.com/diglett/diglett/internal/testutil/etcdtest"
	"github.com/diglett/diglett/internal/testutil/routertest"
)

// homeLifetime is the mappings' lifetime in the home tests: short, so a
// killed gateway's mappings lapse within the test.
const homeLifetime = 4 * time.Second

// homeGateway writes the configuration of a gateway at home behind r,
// mapping over protocol, with its agent port, HTTP port and tunnel ports
// on the LAN address.
func homeGateway(t *testing.T, r *routertest.Router, protocol string) (cfg string, agentPort, httpPort int, lo int) {
	t.Helper()
	// All three from the test's own window, outside the ephemeral range
	// where other tests' connections take their local ports: the gateway
	// binds them again when it restarts.
	lo, hi := randomPortWindow()
	agentPort, httpPort, hi = hi-1, hi, hi-2
	dir := t.TempDir()
	cfg = writeFile(t, dir, "gateway.yaml", fmt.Sprintf(`version: 1
listen: 0.0.0.0:%d
data_dir: %s
domain: home.test
http_addr: 0.0.0.0:%d
ports: %d-%d
lease: 1s
nat: {protocol: %s, router: %s, refresh: 1s, lifetime: %s}
`, agentPort, dir, httpPort, lo, hi, protocol, r.LAN, homeLifetime))
	return cfg, agentPort, httpPort, lo
}

// homeAgent runs an agent publishing web on g's tunnel port range and
// returns its public port.
func homeAgent(t *testing.T, g *gatewayProcess, agentPort int, backend string) (*agentCommand, int) {
	t.Helper()
	dir := t.TempDir()
	ag := writeFile(t, dir, "agent.yaml", fmt.Sprintf(`version: 1
gateway: [127.0.0.1:%d]
fingerprint: %s
known_gateways: known_gateways
transport: tcp
drain_timeout: 1s
tunnels:
  - {name: web, backend: %q}
`, agentPort, g.Fingerprint, backend))
	a := startAgentCommand(t, "--config", ag)
	_, p, _ := net.SplitHostPort(a.tunnel(t, "web"))
	port, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("tunnel port %q", p)
	}
	return a, port
}

// waitMapped polls the router's own list (read with the UPnP client
// program) until each of want is mapped to this machine, or none is when
// gone.
func waitMapped(t *testing.T, r *routertest.Router, within time.Duration, gone bool, want ...string) {
	t.Helper()
	err := testutil.Poll(within, func() error {
		for _, w := range want {
			proto, port, _ := strings.Cut(w, "/")
			n, _ := strconv.Atoi(port)
			if r.Listed(t, proto, uint16(n)) == gone {
				return fmt.Errorf("%s mapped: %t, want %t", w, !gone, !gone)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v\nrouter's list:\n%s", err, r.Upnpc(t, "-l"))
	}
}

// A gateway at home maps its agent port (TCP and UDP), its HTTP port and
// each live tunnel's port on the router; a visitor on the internet side
// reaches the tunnel through the router; a router that restarts gets its
// mappings back; a tunnel whose lease ends loses its mapping; a stopped
// gateway deletes them all, and a killed one's lapse after their lifetime.
func TestGatewayAtHome(t *testing.T) {
	parallel(t)
	r := routertest.Start(t, routertest.Options{})
	server := filepath.Join(buildCommands(t, "./cmd/diglett-server"), "diglett-server")
	backend := startHTTPBackend(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "hello from home") }))
	// Another test may hold a port of the window picked: pick again.
	var cfg string
	var agentPort, httpPort int
	g := testutil.StartRetrying(t, "diglett-server", func() (*gatewayProcess, error) {
		cfg, agentPort, httpPort, _ = homeGateway(t, r, "upnp")
		return tryGatewayCmd(t, exec.Command(server, "--config", cfg))
	})
	waitFor(t, "router found", g.stderr, "router found for port mapping")
	if !strings.Contains(g.stderr.String(), "external_ip="+r.WAN.String()) {
		t.Fatalf("the gateway did not log the router's external address %s:\n%s", r.WAN, g.stderr)
	}
	a, tunnelPort := homeAgent(t, g, agentPort, backend)
	fixed := []string{fmt.Sprintf("tcp/%d", agentPort), fmt.Sprintf("udp/%d", agentPort), fmt.Sprintf("tcp/%d", httpPort)}
	all := append(fixed, fmt.Sprintf("tcp/%d", tunnelPort))
	waitMapped(t, r, eventually, false, all...)
	t.Logf("mapped on the router: %v; its list:\n%s", all, r.Upnpc(t, "-l"))

	// From the internet side, through the router's public address.
	for _, u := range []string{
		fmt.Sprintf("http://%s:%d/", r.WAN, tunnelPort),
		fmt.Sprintf("http://%s:%d/", r.WAN, httpPort),
	} {
		out := r.Internet(t, "curl", "-sS", "--max-time", "10", "-H", "Host: web.home.test", u)
		if !strings.Contains(out, "hello from home") {
			t.Fatalf("from the internet, %s answered: %s", u, out)
		}
		t.Logf("from the internet namespace, %s reached the backend", u)
	}

	// The router restarts with an empty table: the next refresh puts
	// every mapping back.
	r.Restart(t)
	waitMapped(t, r, eventually, false, all...)
	t.Logf("router restarted; the mappings are back")

	// The agent leaves; once its 1s lease ends the tunnel's port goes.
	if err := a.stop(); err != nil {
		t.Logf("agent: %v", err)
	}
	waitMapped(t, r, eventually, true, fmt.Sprintf("tcp/%d", tunnelPort))
	waitMapped(t, r, time.Second, false, fixed...)
	t.Logf("the tunnel's lease ended: tcp/%d unmapped, the gateway's own ports kept", tunnelPort)

	// A gateway that stops deletes its mappings at once.
	if err := g.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.exited:
	case <-time.After(eventually):
		t.Fatalf("the gateway did not stop:\n%s", g.stderr)
	}
	g.killed = true
	waitMapped(t, r, time.Second, true, fixed...)
	if !strings.Contains(g.stderr.String(), "port mappings deleted from the router") {
		t.Errorf("no log line of the deletion:\n%s", g.stderr)
	}
	t.Logf("SIGTERM: the gateway deleted its mappings before it exited")

	// A gateway killed outright cannot: its mappings lapse after their
	// lifetime, since nobody renews them.
	g = startGatewayProcess(t, server, cfg)
	waitMapped(t, r, eventually, false, fixed...)
	g.kill(t)
	killed := time.Now()
	waitMapped(t, r, homeLifetime+eventually, true, fixed...)
	// Renewed every refresh (1s), they cannot lapse much sooner than a
	// lifetime after the kill: a mapping deleted would go at once. The
	// bound allows a renewal one refresh late on a loaded machine (a CI
	// run saw one lapse 2.48s after the kill).
	if took := time.Since(killed); took < homeLifetime-2*time.Second {
		t.Fatalf("the killed gateway's mappings went after %v, before their lifetime %v could end", took, homeLifetime)
	}
	t.Logf("SIGKILL: the mappings lapsed %v after the kill (lifetime %v)", time.Since(killed).Round(100*time.Millisecond), homeLifetime)
}

// portmapCommand runs diglett-server portmap in-process with args until
// the returned stop is called; stop returns its error.
func portmapCommand(t *testing.T, args ...string) (out *testutil.Buffer, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out = &testutil.Buffer{}
	errc := make(chan error, 1)
	go func() { errc <- servercli.Server(ctx, append([]string{"portmap"}, args...), out, out) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-errc:
			case <-time.After(eventually):
				err = fmt.Errorf("portmap did not stop:\n%s", out)
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return out, stop
}

// diglett-server portmap follows a ports file and etcd keys: what they
// ask for is mapped on the router, what they drop is unmapped, and
// everything is deleted when it stops.
func TestPortmapCommand(t *testing.T) {
	parallel(t)
	r := routertest.Start(t, routertest.Options{})
	dir := t.TempDir()
	cfg := writeFile(t, dir, "home.yaml", fmt.Sprintf("version: 1\nnat: {protocol: upnp, router: %s, refresh: 1s, lifetime: 30s}\n", r.LAN))

	ports := writeFile(t, dir, "ports.yaml", "ports:\n  - {service: mail, tcp: [45301]}\n  - {service: dns, udp: [45302]}\n")
	out, stop := portmapCommand(t, "--config", cfg, "--source", "file", "--file", ports)
	waitMapped(t, r, eventually, false, "tcp/45301", "udp/45302")
	t.Logf("ports file: tcp/45301 and udp/45302 mapped:\n%s", r.Upnpc(t, "-l"))
	writeFile(t, dir, "ports.yaml", "ports:\n  - {service: web, tcp: [45303]}\n")
	waitMapped(t, r, eventually, false, "tcp/45303")
	waitMapped(t, r, eventually, true, "tcp/45301", "udp/45302")
	t.Logf("ports file rewritten: tcp/45303 mapped, the others unmapped")
	if err := stop(); err != nil {
		t.Fatalf("portmap: %v\n%s", err, out)
	}
	waitMapped(t, r, time.Second, true, "tcp/45303")
	for _, want := range []string{"router found for port mapping", "ports wanted", "port mappings deleted from the router"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the command's log lacks %q:\n%s", want, out)
		}
	}
	t.Logf("stopped: tcp/45303 deleted")

	e := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), eventually)
	defer cancel()
	if _, err := e.Client.Put(ctx, "/diglett/ports/nas/mail", `{tcp: [45311, 45312]}`); err != nil {
		t.Fatal(err)
	}
	out, stop = portmapCommand(t, "--config", cfg, "--source", "etcd", "--etcd", e.Endpoint, "--node", "nas")
	waitMapped(t, r, eventually, false, "tcp/45311", "tcp/45312")
	if _, err := e.Client.Put(ctx, "/diglett/ports/nas/dns", `{udp: [45313]}`); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Client.Delete(ctx, "/diglett/ports/nas/mail"); err != nil {
		t.Fatal(err)
	}
	waitMapped(t, r, eventually, false, "udp/45313")
	waitMapped(t, r, eventually, true, "tcp/45311", "tcp/45312")
	t.Logf("etcd: keys put and deleted; the router followed")
	if err := stop(); err != nil {
		t.Fatalf("portmap: %v\n%s", err, out)
	}
	waitMapped(t, r, time.Second, true, "udp/45313")
}

// diglett-server portmap follows a node's services in a service catalog
// (blocking queries on its node endpoint): a tag asks for ports, a
// changed tag moves them, and a token given by file is sent.
func TestPortmapCommandCatalog(t *testing.T) {
	parallel(t)
	r := routertest.Start(t, routertest.Options{})
	c := consultest.Start(t)
	dir := t.TempDir()
	cfg := writeFile(t, dir, "home.yaml", fmt.Sprintf("version: 1\nnat: {protocol: upnp, router: %s, refresh: 1s, lifetime: 30s}\n", r.LAN))
	token := writeFile(t, dir, "token", "catalog-s3cret\n")
	c.Set("nas", &consul.AgentService{ID: "mail", Service: "mail", Tags: []string{"(diglett (tcp_port 45321 45322))", "primary"}})
	out, stop := portmapCommand(t, "--config", cfg, "--source", "consul", "--consul-addr", c.URL,
		"--consul-token-file", token, "--node", "nas")
	waitMapped(t, r, eventually, false, "tcp/45321", "tcp/45322")
	c.Set("nas", &consul.AgentService{ID: "dns", Service: "dns", Tags: []string{"(diglett (udp_port 45323))"}})
	waitMapped(t, r, eventually, false, "udp/45323")
	waitMapped(t, r, eventually, true, "tcp/45321", "tcp/45322")
	t.Logf("catalog: the node's tags asked for tcp/45321-45322, then udp/45323; the router followed")
	if err := stop(); err != nil {
		t.Fatalf("portmap: %v\n%s", err, out)
	}
	waitMapped(t, r, time.Second, true, "udp/45323")
	reqs := c.RequestsSince(time.Time{})
	if len(reqs) == 0 || reqs[0].Token != "catalog-s3cret" {
		t.Errorf("the token was not sent: %+v", reqs)
	}
	if strings.Contains(out.String(), "catalog-s3cret") {
		t.Errorf("the token is in the log:\n%s", out)
	}
}

func TestPortmapCommandErrors(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	empty := writeFile(t, dir, "empty.yaml", "version: 1\n")
	bad := writeFile(t, dir, "bad.yaml", "version: 1\nnat: {protocol: igd}\nauth: []\n")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--source", "zk"}, `--source must be one of "consul","etcd","file"`},
		{[]string{"--config", empty, "--source", "consul"}, "--source consul needs --node"},
		{[]string{"--config", empty, "--source", "file"}, "--source file needs --file"},
		{[]string{"--config", empty, "--source", "etcd", "--node", "nas"}, "--source etcd needs --etcd"},
		{[]string{"--config", empty, "--source", "etcd", "--etcd", "http://127.0.0.1:1", "--node", "nas"}, "nothing to do: give a --config file with a nat, firewall or dns section"},
		{[]string{"--config", bad, "--source", "file", "--file", empty}, `nat.protocol: want one of auto, upnp, pcp, natpmp, got "igd"`},
	} {
		var out bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), eventually)
		err := servercli.Server(ctx, append([]string{"portmap"}, c.args...), &out, &out)
		cancel()
		if err == nil || !strings.Contains(err.Error()+out.String(), c.want) {
			t.Errorf("portmap %v: %v\n%s\nwant %q", c.args, err, &out, c.want)
		}
	}
}

// A gateway whose dns section updates its zone gets one wildcard
// certificate over the DNS-01 challenge (from a real ACME server that
// resolves through the test's name server), and serves it to every
// tunnel's host with no order of their own, with nothing listening
// where the CA would try the other challenges.
func TestGatewayDNS01Wildcard(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	// A zone of its own: certificate orders are per name and per process.
	zone := fmt.Sprintf("home%d.test", time.Now().UnixNano()%1e9)
	ns := dnstest.Start(t, zone)
	httpAddr, httpsAddr := freeAddr(t), freeAddr(t)
	p := pebbletest.StartWithOptions(t, addrPort(t, freeAddr(t)), addrPort(t, freeAddr(t)), pebbletest.Options{DNSServer: ns.Addr})
	t.Cleanup(p.CloseClientConnections)
	secret := writeFile(t, dir, "tsig.key", ns.Secret+"\n")
	lo, hi := randomPortWindow()
	cfg := writeFile(t, dir, "gateway.yaml", fmt.Sprintf(`version: 1
listen: 127.0.0.1:0
data_dir: %s
ports: %d-%d
public_bind: 127.0.0.1
domain: %s
http_addr: %s
https_addr: %s
acme_ca: %s
acme_ca_root: %s
acme_email: ops@example.com
dns:
  server: %s
  tsig_key: %s
  tsig_algorithm: %s
  tsig_secret_file: %s
  addresses: [127.0.0.1]
  acme: true
  resolvers: [%s]
`, filepath.Join(dir, "data"), lo, hi, zone, httpAddr, httpsAddr, p.DirectoryURL, p.RootCAFile,
		ns.Addr, ns.KeyName, ns.KeyAlgorithm, secret, ns.Addr))
	srv := startServerCommand(t, "--config", cfg)
	a := startAgentCommand(t, "-g", srv.Addr, "-n", "web", "--fingerprint", srv.Fingerprint,
		"--known-gateways", filepath.Join(dir, "known_gateways"), nameBackend(t, "web"))
	a.tunnel(t, "web")

	for _, name := range []string{zone, "*." + zone} {
		if err := testutil.Poll(eventually, func() error {
			if got := strings.TrimSpace(ns.Dig(t, "+short", name, "A")); got != "127.0.0.1" {
				return fmt.Errorf("%s A = %q", name, got)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%s and *.%s point at the gateway (dig)", zone, zone)

	// The wildcard is ordered at start; web's host is served it.
	var cert *x509.Certificate
	if err := testutil.Poll(2*eventually, func() error {
		conn, err := tls.Dial("tcp", httpsAddr, &tls.Config{ServerName: "web." + zone, RootCAs: p.IssuerRoots(t)})
		if err != nil {
			return err
		}
		defer conn.Close()
		cert = conn.ConnectionState().PeerCertificates[0]
		return nil
	}); err != nil {
		t.Fatalf("no trusted certificate for web.%s: %v\n%s", zone, err, &srv.stderr)
	}
	if !slices.Contains(cert.DNSNames, "*."+zone) {
		t.Fatalf("web.%s was served a certificate for %v, want the wildcard", zone, cert.DNSNames)
	}
	orders := p.Orders()
	g := &testGateway{HTTPAddr: httpAddr, HTTPSAddr: httpsAddr, CA: p.IssuerRoots(t)}
	if code, body := get(t, g.httpClient(t), "https://web."+zone+"/"); code != 200 || body != "web" {
		t.Fatalf("https://web.%s/: %d %q", zone, code, body)
	}
	if n := p.Orders(); n != orders {
		t.Errorf("a request to web.%s made %d more orders", zone, n-orders)
	}
	// Once the orders end (the apex's may still run), their challenge
	// records are gone.
	if err := testutil.Poll(eventually, func() error {
		if got := strings.TrimSpace(ns.Dig(t, "+short", "_acme-challenge."+zone, "TXT")); got != "" {
			return fmt.Errorf("challenge records left in the zone: %s", got)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	t.Logf("web.%s served the wildcard certificate %v over HTTPS; %d orders in all", zone, cert.DNSNames, orders)
	a.stop()
	srv.stop()
}
