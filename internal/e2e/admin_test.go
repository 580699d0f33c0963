package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/cli/servercli"
	"github.com/diglett/diglett/internal/testutil"
)

// The gateway's management listener (diglett-server --admin-addr) over
// real sockets: the server command in-process, agents through the library
// and the agent command, the API asked over HTTP.

var (
	adminLine = regexp.MustCompile(`msg="serving the management API" addr=(\S+)`)
	httpLine  = regexp.MustCompile(`msg="serving tunnels over HTTP" addr=(\S+)`)
)

// adminServer runs the server command with a management listener on a
// loopback port and returns it with the listener's address.
func adminServer(t *testing.T, extra ...string) (*serverCommand, string) {
	t.Helper()
	lo, hi := randomPortWindow()
	args := append([]string{"-l", "127.0.0.1:0", "--no-quic", "--data-dir", t.TempDir(),
		"--ports", fmt.Sprintf("%d-%d", lo, hi), "--public-bind", "127.0.0.1",
		"--admin-addr", "127.0.0.1:0"}, extra...)
	s := startServerCommand(t, args...)
	return s, logged(t, s, adminLine)
}

// logged is the first group of re in the server's log, which must be
// there already.
func logged(t *testing.T, s *serverCommand, re *regexp.Regexp) string {
	t.Helper()
	m := re.FindStringSubmatch(s.stderr.String())
	if m == nil {
		t.Fatalf("server log has no %s:\n%s", re, &s.stderr)
	}
	return m[1]
}

// api asks the management listener at addr; out, if not nil, gets the
// JSON answer. It returns the status code and the body.
func api(t *testing.T, method, addr, path, token string, out any) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	client := &http.Client{Timeout: eventually}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, path, err, body)
		}
	}
	return resp.StatusCode, string(body)
}

type tunnelList struct {
	Tunnels []gateway.TunnelInfo `json:"tunnels"`
}

type agentList struct {
	Agents []gateway.AgentInfo `json:"agents"`
}

type leaseList struct {
	Leases []gateway.LeaseInfo `json:"leases"`
}

// publicPort is the public TCP port of ln's tunnel.
func publicPort(t *testing.T, ln *diglett.Listener) int {
	t.Helper()
	_, p, err := net.SplitHostPort(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// adminAgent is an agent config for the server command s.
func adminAgent(t *testing.T, s *serverCommand, name string) diglett.Config {
	cfg := agentConfig(t, &testGateway{Addr: s.Addr}, name)
	cfg.Fingerprint = s.Fingerprint
	return cfg
}

// A real agent's tunnel and session show in the API with their port,
// hosts, transport and open visitors; the API is not on the public ports;
// /readyz turns 503 while the gateway shuts down.
func TestAdminListsTunnelsAndAgents(t *testing.T) {
	parallel(t)
	s, adm := adminServer(t, "--domain", "admin.test", "--http-addr", "127.0.0.1:0")
	if code, body := api(t, "GET", adm, "/readyz", "", nil); code != 200 {
		t.Fatalf("readyz: %d %s", code, body)
	}
	ln := mustListen(t, adminAgent(t, s, "web"))
	forward(t, ln, startEcho(t))
	public := ln.Addr().String()
	_, port, _ := net.SplitHostPort(public)

	// One visitor stays open.
	visitor, err := net.DialTimeout("tcp", public, promptly)
	if err != nil {
		t.Fatal(err)
	}
	defer visitor.Close()
	visitor.SetDeadline(time.Now().Add(eventually))
	if _, err := io.WriteString(visitor, "ping"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(visitor, make([]byte, 4)); err != nil {
		t.Fatalf("echo: %v", err)
	}

	var tl tunnelList
	if code, body := api(t, "GET", adm, "/api/v1/tunnels", "", &tl); code != 200 {
		t.Fatalf("tunnels: %d %s", code, body)
	}
	if len(tl.Tunnels) != 1 {
		t.Fatalf("tunnels: %+v", tl.Tunnels)
	}
	tn := tl.Tunnels[0]
	if tn.Name != "web" || strconv.Itoa(tn.Port) != port || tn.State != "live" || tn.Identity == "" ||
		len(tn.Hosts) != 1 || tn.Hosts[0] != "web.admin.test" || len(tn.Members) != 1 || tn.Visitors != 1 {
		t.Fatalf("tunnel: %+v", tn)
	}
	m := tn.Members[0]
	if m.Transport != "tcp" || !strings.HasPrefix(m.Address, "127.0.0.1:") || time.Since(m.Since) > time.Minute || m.Session == 0 {
		t.Fatalf("member: %+v", m)
	}
	var al agentList
	if code, body := api(t, "GET", adm, "/api/v1/agents", "", &al); code != 200 {
		t.Fatalf("agents: %d %s", code, body)
	}
	if len(al.Agents) != 1 {
		t.Fatalf("agents: %+v", al.Agents)
	}
	if a := al.Agents[0]; a.ID != m.Session || a.Identity != tn.Identity || a.Address != m.Address ||
		a.Transport != "tcp" || len(a.Names) != 1 || a.Names[0] != "web" {
		t.Fatalf("agent: %+v, member %+v", a, m)
	}
	var ll leaseList
	if code, body := api(t, "GET", adm, "/api/v1/leases", "", &ll); code != 200 || len(ll.Leases) != 0 {
		t.Fatalf("leases: %d %s", code, body)
	}
	// A live tunnel holds no lease to release.
	if code, body := api(t, "DELETE", adm, "/api/v1/leases/web", "", nil); code != 409 || !strings.Contains(body, "tunnel is live") {
		t.Fatalf("release of a live tunnel: %d %s", code, body)
	}
	// Without a tokens or config file there is nothing to reload.
	if code, body := api(t, "POST", adm, "/api/v1/reload", "", nil); code != 409 || !strings.Contains(body, "nothing to reload") {
		t.Fatalf("reload: %d %s", code, body)
	}

	// The public ports do not serve the API: the HTTP ingress answers
	// 404 (whatever the host), the agent port and the tunnel's port do
	// not answer it.
	httpAddr := logged(t, s, httpLine)
	for _, host := range []string{httpAddr, "127.0.0.1", "admin.test", "web.admin.test"} {
		for _, path := range []string{"/api/v1/tunnels", "/healthz", "/debug/pprof/"} {
			req, _ := http.NewRequest("GET", "http://"+httpAddr+path, nil)
			req.Host = host
			resp, err := (&http.Client{Timeout: eventually}).Do(req)
			if host == "web.admin.test" {
				// The tunnel's own backend (an echo, not HTTP) gets it.
				if err == nil {
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if strings.Contains(string(body), `"tunnels"`) || strings.Contains(string(body), "goroutine") {
						t.Fatalf("%s%s on the HTTP port answered the API: %s", host, path, body)
					}
				}
				continue
			}
			if err != nil {
				t.Fatalf("%s%s on the HTTP port: %v", host, path, err)
			}
			resp.Body.Close()
			if resp.StatusCode != 404 {
				t.Fatalf("%s%s on the HTTP port: %d, want 404", host, path, resp.StatusCode)
			}
		}
	}
	for _, addr := range []string{s.Addr} {
		resp, err := (&http.Client{Timeout: promptly}).Get("http://" + addr + "/api/v1/tunnels")
		if err == nil {
			resp.Body.Close()
			t.Fatalf("the agent port answered the API: %s", resp.Status)
		}
	}

	// Shutting down, with the visitor still open: not ready.
	s.cancel()
	if err := testutil.Poll(eventually, func() error {
		code, body := api(t, "GET", adm, "/readyz", "", nil)
		if code != 503 || !strings.Contains(body, "shutting down") {
			return fmt.Errorf("readyz: %d %s", code, body)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	visitor.Close()
	s.stop()
	if _, err := net.DialTimeout("tcp", adm, promptly); err == nil {
		t.Fatal("the management listener is still open after the gateway stopped")
	}
}

// Disconnect ends an agent's session: the agent shows the operator's
// reason and reconnects, getting its name and port back.
func TestAdminDisconnect(t *testing.T) {
	parallel(t)
	s, adm := adminServer(t)
	a := startAgentCommand(t, credsAgentArgs(t, s, "kick", startEcho(t))...)
	public := a.tunnel(t, "kick")
	mustRoundTrip(t, public, "before")

	// The agent command keeps several sessions; one is disconnected.
	var al agentList
	api(t, "GET", adm, "/api/v1/agents", "", &al)
	if len(al.Agents) == 0 {
		t.Fatalf("agents: %+v", al.Agents)
	}
	sessions := len(al.Agents)
	first := al.Agents[0].ID
	if code, body := api(t, "POST", adm, "/api/v1/agents/12345/disconnect", "", nil); code != 404 || !strings.Contains(body, "no such agent session") {
		t.Fatalf("unknown agent: %d %s", code, body)
	}
	req, _ := http.NewRequest("POST", "http://"+adm+"/api/v1/agents/"+strconv.FormatUint(first, 10)+"/disconnect",
		strings.NewReader(`{"reason": "moving to a new host"}`))
	resp, err := (&http.Client{Timeout: eventually}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), fmt.Sprintf(`"disconnected": %d`, first)) {
		t.Fatalf("disconnect: %d %s", resp.StatusCode, body)
	}
	waitFor(t, "agent", &a.stderr, "disconnected by the gateway's operator: moving to a new host")
	waitFor(t, "agent", &a.stderr, "disconnected from gateway, reconnecting")
	waitFor(t, "server", &s.stderr, `msg="agent session closed by the operator"`)

	// Back under a new session, on the same port.
	if err := testutil.Poll(eventually, func() error {
		var tl tunnelList
		api(t, "GET", adm, "/api/v1/tunnels", "", &tl)
		if len(tl.Tunnels) != 1 || tl.Tunnels[0].State != "live" || len(tl.Tunnels[0].Members) != sessions {
			return fmt.Errorf("tunnels: %+v", tl.Tunnels)
		}
		for _, m := range tl.Tunnels[0].Members {
			if m.Session == first {
				return fmt.Errorf("session %d still a member", first)
			}
		}
		if p := strconv.Itoa(tl.Tunnels[0].Port); !strings.HasSuffix(public, ":"+p) {
			return fmt.Errorf("came back on port %s, had %s", p, public)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	mustRoundTrip(t, public, "after")
	// The old session is gone.
	if code, _ := api(t, "POST", adm, "/api/v1/agents/"+strconv.FormatUint(first, 10)+"/disconnect", "", nil); code != 404 {
		t.Fatalf("disconnect of the ended session: %d", code)
	}
}

// Releasing a lease frees the name at once for another identity.
func TestAdminReleaseLease(t *testing.T) {
	parallel(t)
	tokens := filepath.Join(t.TempDir(), "tokens.yaml")
	writeTokens(t, tokens, tokenLine("secret-alice", "alice", "shared"), tokenLine("secret-bob", "bob", "shared"))
	s, adm := adminServer(t, "--tokens", tokens)
	echo := startEcho(t)

	alice := adminAgent(t, s, "shared")
	alice.Token = "secret-alice"
	ln := mustListen(t, alice)
	forward(t, ln, echo)
	port := publicPort(t, ln)
	ln.Close()
	waitFor(t, "server", &s.stderr, "agent offline, name and port leased")

	var ll leaseList
	api(t, "GET", adm, "/api/v1/leases", "", &ll)
	if len(ll.Leases) != 1 || ll.Leases[0].Name != "shared" || ll.Leases[0].Identity != "alice" ||
		ll.Leases[0].Port != port || time.Until(ll.Leases[0].Ends) < 30*time.Second {
		t.Fatalf("leases: %+v", ll.Leases)
	}
	var tl tunnelList
	api(t, "GET", adm, "/api/v1/tunnels", "", &tl)
	if len(tl.Tunnels) != 1 || tl.Tunnels[0].State != "leased" || tl.Tunnels[0].LeaseEnds.IsZero() || len(tl.Tunnels[0].Members) != 0 {
		t.Fatalf("tunnels: %+v", tl.Tunnels)
	}

	bob := adminAgent(t, s, "shared")
	bob.Token = "secret-bob"
	if _, err := listen(t, bob); !errors.Is(err, diglett.ErrNameTaken) {
		t.Fatalf("bob during alice's lease: %v, want ErrNameTaken", err)
	}
	if code, body := api(t, "DELETE", adm, "/api/v1/leases/nope", "", nil); code != 404 {
		t.Fatalf("release of an unknown name: %d %s", code, body)
	}
	if code, body := api(t, "DELETE", adm, "/api/v1/leases/shared", "", nil); code != 200 || !strings.Contains(body, `"released": "shared"`) {
		t.Fatalf("release: %d %s", code, body)
	}
	waitFor(t, "server", &s.stderr, `msg="lease released by the operator, name and port freed"`)
	api(t, "GET", adm, "/api/v1/leases", "", &ll)
	if len(ll.Leases) != 0 {
		t.Fatalf("leases after the release: %+v", ll.Leases)
	}
	// At once: no waiting for the lease's end.
	ln2, err := listen(t, bob)
	if err != nil {
		t.Fatalf("bob after the release: %v", err)
	}
	forward(t, ln2, echo)
	mustRoundTrip(t, ln2.Addr().String(), "bob")
	api(t, "GET", adm, "/api/v1/tunnels", "", &tl)
	if len(tl.Tunnels) != 1 || tl.Tunnels[0].Identity != "bob" || tl.Tunnels[0].State != "live" {
		t.Fatalf("tunnels: %+v", tl.Tunnels)
	}
}

// A reload through the API picks up a token added to the tokens file and
// says what changed; a broken file is refused with its error, and the
// tokens in force stay.
func TestAdminReload(t *testing.T) {
	parallel(t)
	tokens := filepath.Join(t.TempDir(), "tokens.yaml")
	alice := tokenLine("secret-alice", "alice", "a")
	writeTokens(t, tokens, alice)
	s, adm := adminServer(t, "--tokens", tokens)

	bob := adminAgent(t, s, "b")
	bob.Token = "secret-bob"
	if _, err := listen(t, bob); !errors.Is(err, diglett.ErrUnauthorized) {
		t.Fatalf("bob before the reload: %v, want ErrUnauthorized", err)
	}
	writeTokens(t, tokens, alice, tokenLine("secret-bob", "bob", "b"))
	var out struct {
		Reloaded bool           `json:"reloaded"`
		Changes  map[string]any `json:"changes"`
	}
	code, body := api(t, "POST", adm, "/api/v1/reload", "", &out)
	if code != 200 || !out.Reloaded || fmt.Sprint(out.Changes["added"]) != "[bob]" {
		t.Fatalf("reload: %d %s", code, body)
	}
	if strings.Contains(body, "secret-") {
		t.Fatalf("the reload's answer shows a token: %s", body)
	}
	waitFor(t, "server", &s.stderr, `msg="tokens reloaded" trigger="admin API"`)
	ln, err := listen(t, bob)
	if err != nil {
		t.Fatalf("bob after the reload: %v", err)
	}
	forward(t, ln, startEcho(t))
	mustRoundTrip(t, ln.Addr().String(), "bob")

	if err := os.WriteFile(tokens, []byte("- {token: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, body = api(t, "POST", adm, "/api/v1/reload", "", nil)
	if code != 422 || !strings.Contains(body, "the configuration in force stays") || !strings.Contains(body, "tokens.yaml") {
		t.Fatalf("reload of a broken file: %d %s", code, body)
	}
	// Bob is still allowed.
	mustRoundTrip(t, ln.Addr().String(), "bob again")
}

// Anywhere but loopback the listener needs a token; with one, every
// request without it gets 401, but the probes.
func TestAdminToken(t *testing.T) {
	parallel(t)
	err := servercli.Server(context.Background(), []string{"-l", "127.0.0.1:0", "--no-quic", "--data-dir", t.TempDir(),
		"--admin-addr", "0.0.0.0:0"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--admin-addr 0.0.0.0:0 is not a loopback address") ||
		!strings.Contains(err.Error(), "--admin-token-file") {
		t.Fatalf("non-loopback without a token: %v", err)
	}

	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "admin-token")
	if err := os.WriteFile(tokenFile, []byte("  admin-s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err = servercli.Server(context.Background(), []string{"-l", "127.0.0.1:0", "--no-quic", "--data-dir", t.TempDir(),
		"--admin-addr", "127.0.0.1:0", "--admin-token-file", empty}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("empty token file: %v", err)
	}

	lo, hi := randomPortWindow()
	s := startServerCommand(t, "-l", "127.0.0.1:0", "--no-quic", "--data-dir", t.TempDir(),
		"--ports", fmt.Sprintf("%d-%d", lo, hi), "--public-bind", "127.0.0.1",
		"--admin-addr", "0.0.0.0:0", "--admin-token-file", tokenFile)
	_, port, _ := net.SplitHostPort(logged(t, s, adminLine))
	adm := net.JoinHostPort("127.0.0.1", port)
	for _, path := range []string{"/api/v1/tunnels", "/api/v1/agents", "/api/v1/leases", "/debug/pprof/", "/metrics"} {
		for _, token := range []string{"", "wrong"} {
			if code, body := api(t, "GET", adm, path, token, nil); code != 401 || strings.Contains(body, "s3cret") {
				t.Fatalf("%s with token %q: %d %s", path, token, code, body)
			}
		}
		if code, body := api(t, "GET", adm, path, "admin-s3cret", nil); code != 200 {
			t.Fatalf("%s with the token: %d %s", path, code, body)
		}
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := api(t, "GET", adm, path, "", nil); code != 200 {
			t.Fatalf("%s without a token: %d %s", path, code, body)
		}
	}
	if code, _ := api(t, "POST", adm, "/api/v1/agents/1/disconnect", "", nil); code != 401 {
		t.Fatalf("disconnect without a token: %d", code)
	}
	if strings.Contains(s.stderr.String(), "s3cret") {
		t.Fatal("the token is in the log")
	}

	// status asks for the token, and takes it from a file.
	var out bytes.Buffer
	err = servercli.Server(context.Background(), []string{"status", "--admin-addr", adm}, &out, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "wants a token: give --admin-token-file FILE") {
		t.Fatalf("status without the token: %v", err)
	}
	if err := servercli.Server(context.Background(), []string{"status", "--admin-addr", adm, "--admin-token-file", tokenFile}, &out, io.Discard); err != nil {
		t.Fatalf("status with the token: %v", err)
	}
	if out.String() != "no tunnels\n" {
		t.Fatalf("status: %q", out.String())
	}
}

// --debug-addr, the old name of --admin-addr, still serves the profiler.
func TestAdminDebugAddrAlias(t *testing.T) {
	parallel(t)
	lo, hi := randomPortWindow()
	s := startServerCommand(t, "-l", "127.0.0.1:0", "--no-quic", "--data-dir", t.TempDir(),
		"--ports", fmt.Sprintf("%d-%d", lo, hi), "--debug-addr", "127.0.0.1:0")
	waitFor(t, "server", &s.stderr, "--debug-addr is deprecated: use --admin-addr")
	url := logged(t, s, regexp.MustCompile(`msg="serving the profiler" url=http://(\S+)/debug/pprof/`))
	if code, body := api(t, "GET", url, "/debug/pprof/goroutine?debug=1", "", nil); code != 200 || !strings.Contains(body, "goroutine profile") {
		t.Fatalf("profiler: %d %.200s", code, body)
	}
	err := servercli.Server(context.Background(), []string{"-l", "127.0.0.1:0", "--no-quic", "--data-dir", t.TempDir(),
		"--debug-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:1"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "give only --admin-addr") {
		t.Fatalf("both names: %v", err)
	}
}

// diglett-server status prints the live and leased tunnels as a table,
// or the API's JSON.
func TestAdminStatus(t *testing.T) {
	parallel(t)
	s, adm := adminServer(t, "--domain", "status.test", "--http-addr", "127.0.0.1:0")
	echo := startEcho(t)
	live := mustListen(t, adminAgent(t, s, "live"))
	forward(t, live, echo)
	gone := mustListen(t, adminAgent(t, s, "gone"))
	forward(t, gone, echo)
	livePort := strconv.Itoa(publicPort(t, live))
	gonePort := strconv.Itoa(publicPort(t, gone))
	gone.Close()
	waitFor(t, "server", &s.stderr, "agent offline, name and port leased")

	var out, errOut bytes.Buffer
	if err := servercli.Server(context.Background(), []string{"status", "--admin-addr", adm}, &out, &errOut); err != nil {
		t.Fatalf("status: %v\n%s", err, &errOut)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("status printed:\n%s", &out)
	}
	fields := func(i int) []string { return strings.Fields(lines[i]) }
	if h := strings.Join(fields(0), " "); h != "NAME PORT STATE MEMBERS VISITORS IDENTITY HOSTS" {
		t.Fatalf("header %q", h)
	}
	// Sorted by name: gone, then live.
	g := fields(1)
	if len(g) != 9 || g[0] != "gone" || g[1] != gonePort || g[2] != "leased" || !strings.HasSuffix(g[4], "left)") ||
		g[5] != "-" || g[6] != "0" || g[8] != "gone.status.test" {
		t.Fatalf("leased row %q", lines[1])
	}
	l := fields(2)
	if len(l) != 7 || l[0] != "live" || l[1] != livePort || l[2] != "live" || !strings.HasSuffix(l[3], "/tcp") ||
		l[4] != "0" || l[6] != "live.status.test" {
		t.Fatalf("live row %q", lines[2])
	}

	out.Reset()
	if err := servercli.Server(context.Background(), []string{"status", "--admin-addr", adm, "--json"}, &out, &errOut); err != nil {
		t.Fatalf("status --json: %v", err)
	}
	var tl tunnelList
	if err := json.Unmarshal(out.Bytes(), &tl); err != nil || len(tl.Tunnels) != 2 || tl.Tunnels[1].Name != "live" {
		t.Fatalf("status --json: %v\n%s", err, &out)
	}

	// Nobody there: a clear error.
	err := servercli.Server(context.Background(), []string{"status", "--admin-addr", unusedAddr(t)}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "cannot reach the management listener") {
		t.Fatalf("status of nothing: %v", err)
	}
}

// The configuration file sets the listener (admin_addr, admin_token_file
// beside it), and a reload through the API reloads the file.
func TestAdminConfigFile(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	write := func(name, content string) string { return writeFile(t, dir, name, content) }
	lo, hi := randomPortWindow()
	write("admin-token", "file-s3cret\n")
	write("tokens.yaml", tokenLine("secret-alice", "alice", "a"))
	gw := write("gateway.yaml", fmt.Sprintf(`version: 1
listen: 127.0.0.1:0
quic: false
data_dir: state
ports: %d-%d
public_bind: 127.0.0.1
admin_addr: 0.0.0.0:0
admin_token_file: admin-token
auth:
  - tokens: {file: tokens.yaml}
`, lo, hi))
	s := startServerCommand(t, "--config", gw)
	_, port, _ := net.SplitHostPort(logged(t, s, adminLine))
	adm := net.JoinHostPort("127.0.0.1", port)
	if code, _ := api(t, "GET", adm, "/api/v1/tunnels", "", nil); code != 401 {
		t.Fatalf("without the token: %d", code)
	}

	bob := adminAgent(t, s, "b")
	bob.Token = "secret-bob"
	if _, err := listen(t, bob); !errors.Is(err, diglett.ErrUnauthorized) {
		t.Fatalf("bob before the reload: %v", err)
	}
	write("tokens.yaml", tokenLine("secret-alice", "alice", "a")+tokenLine("secret-bob", "bob", "b"))
	var out struct {
		Changes map[string]any `json:"changes"`
	}
	if code, body := api(t, "POST", adm, "/api/v1/reload", "file-s3cret", &out); code != 200 || fmt.Sprint(out.Changes["added"]) != "[bob]" {
		t.Fatalf("reload: %d %s", code, body)
	}
	waitFor(t, "server", &s.stderr, `msg="config reloaded" trigger="admin API"`)
	ln, err := listen(t, bob)
	if err != nil {
		t.Fatalf("bob after the reload: %v", err)
	}
	forward(t, ln, startEcho(t))
	mustRoundTrip(t, ln.Addr().String(), "bob")
}
