package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

// The gateway's metrics (on the management listener), its access log and
// its log flags, through the real server and agent commands in-process,
// with real visitors over HTTP and TCP.

// trafficGateway is a server command with an HTTP ingress, a management
// listener and an agent command publishing tunnel "web" to an HTTP
// backend.
type trafficGateway struct {
	srv       *serverCommand
	agent     *agentCommand
	adminAddr string
	httpAddr  string
	public    string // the tunnel's TCP port
	dir       string
}

// Bodies of the test backend.
const (
	helloBody   = "hello, visitor\n"
	missingBody = "nothing here\n"
)

func startTrafficGateway(t *testing.T, extra ...string) *trafficGateway {
	t.Helper()
	dir := t.TempDir()
	tokens := writeFile(t, dir, "tokens.yaml", "- token: s3cret\n  identity: alice\n  names: [web]\n")
	lo, hi := randomPortWindow()
	g := &trafficGateway{adminAddr: unusedAddr(t), httpAddr: unusedAddr(t), dir: dir}
	args := append([]string{"-l", "127.0.0.1:0", "--no-quic", "--data-dir", dir,
		"--ports", fmt.Sprintf("%d-%d", lo, hi), "--public-bind", "127.0.0.1", "--tokens", tokens,
		"--domain", "gw.test", "--http-addr", g.httpAddr, "--admin-addr", g.adminAddr}, extra...)
	g.srv = startServerCommand(t, args...)
	g.agent = startAgentCommand(t, "-g", g.srv.Addr, "--fingerprint", g.srv.Fingerprint,
		"--known-gateways", filepath.Join(dir, "known_gateways"), "--transport", "tcp", "--connections", "1",
		"-n", "web", "-t", "s3cret", startHelloBackend(t))
	g.public = g.agent.tunnel(t, "web")
	waitFor(t, "server log", &g.srv.stderr, "register domain 'web'")
	return g
}

// startHelloBackend serves helloBody at /hello and 404 elsewhere.
func startHelloBackend(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hello" {
			io.WriteString(w, helloBody)
			return
		}
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, missingBody)
	}), ReadHeaderTimeout: eventually}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	return ln.Addr().String()
}

// traffic is what visit sent and got.
type traffic struct {
	tcpIn, tcpOut int // bytes the TCP visitor sent and got
	httpOut       int // bytes of the HTTP responses' bodies
}

// tcpRequest is the TCP visitor's request: HTTP/1.0, so the backend
// closes the connection after its answer.
const tcpRequest = "GET /hello HTTP/1.0\r\nHost: backend\r\n\r\n"

// visit sends two HTTP requests through the ingress (one with a secret in
// its query, one the backend answers 404) and one TCP visitor through the
// tunnel's port.
func (g *trafficGateway) visit(t *testing.T) traffic {
	t.Helper()
	var tr traffic
	client := &http.Client{Timeout: eventually, Transport: &http.Transport{DisableKeepAlives: true}}
	for path, want := range map[string]int{"/hello?token=hunter2": http.StatusOK, "/missing": http.StatusNotFound} {
		req, err := http.NewRequest(http.MethodGet, "http://"+g.httpAddr+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = "web.gw.test"
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != want {
			t.Fatalf("GET %s: %d %q %v, want %d", path, resp.StatusCode, body, err, want)
		}
		tr.httpOut += len(body)
	}
	c, err := net.DialTimeout("tcp", g.public, eventually)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(eventually))
	if _, err := io.WriteString(c, tcpRequest); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || !bytes.HasSuffix(got, []byte(helloBody)) {
		t.Fatalf("TCP visitor got %q, %v", got, err)
	}
	tr.tcpIn, tr.tcpOut = len(tcpRequest), len(got)
	return tr
}

// scrape reads the metrics of the management listener.
func (g *trafficGateway) scrape(t *testing.T) string {
	t.Helper()
	client := &http.Client{Timeout: eventually}
	resp, err := client.Get("http://" + g.adminAddr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %d %v\n%s", resp.StatusCode, err, b)
	}
	return string(b)
}

// metricValue finds the sample of name whose labels include labels
// (`tunnel="web"` and such) in the metrics format's text.
func metricValue(text, name string, labels ...string) (float64, bool) {
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		series, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		n, ls, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		have := strings.Split(strings.TrimSuffix(ls, "}"), ",")
		match := true
		for _, l := range labels {
			found := false
			for _, h := range have {
				found = found || h == l
			}
			match = match && found
		}
		if !match {
			continue
		}
		v, err := strconv.ParseFloat(val, 64)
		return v, err == nil
	}
	return 0, false
}

// awaitMetrics scrapes until every expectation holds and returns the
// last scrape.
func (g *trafficGateway) awaitMetrics(t *testing.T, want map[string]float64) string {
	t.Helper()
	var text string
	err := testutil.Poll(eventually, func() error {
		text = g.scrape(t)
		var errs []error
		for key, v := range want {
			name, labels, _ := strings.Cut(key, " ")
			var ls []string
			if labels != "" {
				ls = strings.Split(labels, ",")
			}
			got, ok := metricValue(text, name, ls...)
			if !ok || got != v {
				errs = append(errs, fmt.Errorf("%s = %v (found: %v), want %v", key, got, ok, v))
			}
		}
		return errors.Join(errs...)
	})
	if err != nil {
		t.Fatalf("metrics: %v\n%s", err, text)
	}
	return text
}

// TestMetricsAndAccessLog checks the metrics after real traffic (bytes
// moved, requests by status, a refused login), in the metrics format as
// the format's own checker reads it, and the access log's lines for HTTP
// requests and a TCP visitor, in the gateway's log by default.
func TestMetricsAndAccessLog(t *testing.T) {
	parallel(t)
	promtool := testutil.Program(t, "promtool")
	g := startTrafficGateway(t)

	bad := agentConfig(t, &testGateway{Addr: g.srv.Addr}, "web")
	bad.Fingerprint, bad.Token = g.srv.Fingerprint, "wrong"
	if ln, err := listen(t, bad); err == nil {
		ln.Close()
		t.Fatal("an agent with a wrong token logged in")
	}

	tr := g.visit(t)
	text := g.awaitMetrics(t, map[string]float64{
		`diglett_agent_sessions transport="tcp"`:                   1,
		`diglett_tunnels state="live"`:                             1,
		`diglett_tunnels state="leased"`:                           0,
		`diglett_tunnel_members tunnel="web"`:                      1,
		`diglett_registrations_total`:                              1,
		`diglett_login_refusals_total reason="credentials"`:        1,
		`diglett_http_requests_total tunnel="web",code="200"`:      1,
		`diglett_http_requests_total tunnel="web",code="404"`:      1,
		`diglett_http_request_duration_seconds_count tunnel="web"`: 2,
		`diglett_visitors_total tunnel="web",kind="http"`:          2,
		`diglett_visitors_total tunnel="web",kind="tcp"`:           1,
		`diglett_visitors_open tunnel="web",kind="tcp"`:            0,
		`diglett_visitor_bytes_total tunnel="web",direction="in"`:  float64(tr.tcpIn),
		`diglett_visitor_bytes_total tunnel="web",direction="out"`: float64(tr.tcpOut + tr.httpOut),
		`diglett_leases_started_total`:                             0,
	})
	if _, ok := metricValue(text, "go_goroutines"); !ok {
		t.Error("no Go runtime metrics")
	}
	if _, ok := metricValue(text, "process_open_fds"); !ok {
		t.Error("no process metrics")
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}

	log := g.srv.stderr.String()
	for _, re := range []string{
		`msg="http request" tunnel=web method=GET host=web.gw.test path=/hello status=200 bytes=` + strconv.Itoa(len(helloBody)) + ` duration=\S+ visitor=127\.0\.0\.1:\d+ session=[1-9]\d*\n`,
		`msg="http request" tunnel=web method=GET host=web.gw.test path=/missing status=404 bytes=` + strconv.Itoa(len(missingBody)) + ` duration=\S+ visitor=127\.0\.0\.1:\d+ session=[1-9]\d*\n`,
		fmt.Sprintf(`msg="tcp visitor" tunnel=web visitor=127\.0\.0\.1:\d+ session=[1-9]\d* bytes_in=%d bytes_out=%d duration=\S+\n`, tr.tcpIn, tr.tcpOut),
	} {
		if !regexp.MustCompile(re).MatchString(log) {
			t.Errorf("no access log line %s in the server's log:\n%s", re, log)
		}
	}
	if strings.Contains(log, "hunter2") {
		t.Errorf("the access log shows a query string:\n%s", log)
	}
}

// accessLines are the access log lines in text.
var accessLines = regexp.MustCompile(`"?msg"?[=:]"(http request|tcp visitor)"`)

// TestAccessLogOption checks that --access-log off logs no visitor, and
// that --access-log FILE writes them to the file, created 0640, and not to
// the gateway's log.
func TestAccessLogOption(t *testing.T) {
	parallel(t)
	for _, mode := range []string{"off", "file"} {
		t.Run(mode, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "access.log")
			spec := file
			if mode == "off" {
				spec = "off"
			}
			g := startTrafficGateway(t, "--access-log", spec)
			tr := g.visit(t)
			// The counts are told after the lines are written.
			g.awaitMetrics(t, map[string]float64{
				`diglett_http_requests_total tunnel="web",code="200"`:     1,
				`diglett_visitor_bytes_total tunnel="web",direction="in"`: float64(tr.tcpIn),
			})
			if m := accessLines.FindString(g.srv.stderr.String()); m != "" {
				t.Errorf("the gateway's log has access lines (%s) with --access-log %s:\n%s", m, spec, &g.srv.stderr)
			}
			if mode == "off" {
				return
			}
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if got := len(accessLines.FindAll(b, -1)); got != 3 {
				t.Errorf("access log file has %d lines, want 3:\n%s", got, b)
			}
			fi, err := os.Stat(file)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm()&^0o640 != 0 {
				t.Errorf("access log created with mode %v, want at most 0640", fi.Mode().Perm())
			}
		})
	}
}

// TestLogFormatAndLease runs the gateway with JSON logs and a short lease:
// every line is a JSON object; the registerer's line is the original one;
// when the agent leaves the route stays through the lease ("name and port
// leased" is not followed by "unregister domain" before the lease ends);
// the metrics follow the session, the lease and the tunnel's release.
func TestLogFormatAndLease(t *testing.T) {
	parallel(t)
	g := startTrafficGateway(t, "--log-format", "json", "--lease", "1s")
	_, port, _ := net.SplitHostPort(g.public)
	if err := g.agent.stop(); err != nil {
		t.Fatalf("agent: %v", err)
	}
	waitFor(t, "server log", &g.srv.stderr, `"msg":"unregister domain 'web'"`)
	text := g.awaitMetrics(t, map[string]float64{
		`diglett_agent_sessions transport="tcp"`: 0,
		`diglett_tunnels state="live"`:           0,
		`diglett_tunnels state="leased"`:         0,
		`diglett_leases_started_total`:           1,
		`diglett_leases_expired_total`:           1,
	})
	if _, ok := metricValue(text, "diglett_tunnel_members", `tunnel="web"`); ok {
		t.Errorf("a released tunnel still has series:\n%s", text)
	}
	var msgs []string
	sc := bufio.NewScanner(strings.NewReader(g.srv.stderr.String()))
	for sc.Scan() {
		var line struct {
			Msg   string `json:"msg"`
			Level string `json:"level"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil || line.Msg == "" || line.Level == "" {
			t.Errorf("not a JSON log line (%v): %s", err, sc.Bytes())
			continue
		}
		msgs = append(msgs, line.Msg)
	}
	index := func(msg string) int {
		for i, m := range msgs {
			if m == msg {
				return i
			}
		}
		t.Fatalf("no %q in the log: %q", msg, msgs)
		return -1
	}
	reg := index("register domain 'web' -> '" + port + "'")
	leased := index("agent offline, name and port leased")
	expired := index("lease expired, name and port released")
	unreg := index("unregister domain 'web'")
	if !(reg < leased && leased < expired && expired < unreg) {
		t.Errorf("log lines out of order (register %d, leased %d, expired %d, unregister %d): %q", reg, leased, expired, unreg, msgs)
	}
}

// TestLogLevel checks that --log-level warn drops Info lines and -d shows
// Debug ones.
func TestLogLevel(t *testing.T) {
	parallel(t)
	for _, tc := range []struct {
		args      []string
		want, not string
	}{
		{[]string{"--log-level", "warn"}, "", "level=INFO"},
		{[]string{"--log-level", "info"}, "level=INFO", "level=DEBUG"},
		{[]string{"-d"}, "level=DEBUG", ""},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			args := append([]string{"-l", "127.0.0.1:0", "--no-quic", "--data-dir", t.TempDir()}, tc.args...)
			s := startServerCommand(t, args...)
			// An agent's failed handshake is logged at Debug.
			c, err := net.Dial("tcp", s.Addr)
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(c, "not TLS\r\n\r\n")
			c.Close()
			if tc.want != "" {
				waitFor(t, "server log", &s.stderr, tc.want)
			}
			s.stop()
			log := s.stderr.String()
			if tc.not != "" && strings.Contains(log, tc.not) {
				t.Errorf("%s in:\n%s", tc.not, log)
			}
		})
	}
}

// TestGroupJoinLogged checks the gateway's line when a second agent joins
// a tunnel's group.
func TestGroupJoinLogged(t *testing.T) {
	parallel(t)
	g := startGateway(t, gatewayOptions{})
	// The first agent keeps two sessions: its second is no news.
	first := agentConfig(t, g, "team")
	first.Connections = 2
	var firstLog *logSink
	first.Logger, firstLog = newLogger(t, "first agent")
	mustListen(t, first)
	waitForN(t, "gateway log", g.Logs, "agent logged in", 2)
	if strings.Contains(g.Logs.String(), "agent joined a tunnel's group") {
		t.Errorf("the first agent was logged as joining a group:\n%s", g.Logs)
	}
	mustListen(t, agentConfig(t, g, "team"))
	waitFor(t, "gateway log", g.Logs, `msg="agent joined a tunnel's group" tunnel=team session=`)
	if !regexp.MustCompile(`msg="agent joined a tunnel's group" tunnel=team session=\d+ members=3 agents=2\n`).MatchString(g.Logs.String()) {
		t.Errorf("no join line with 3 members from 2 agents:\n%s", g.Logs)
	}
	// The agent already serving the name is told, once.
	waitFor(t, "first agent's log", firstLog, `msg="another agent joined the tunnel: the gateway now shares its visitors among them"`)
	if !regexp.MustCompile(`msg="another agent joined the tunnel: [^"]*" .*tunnel=team agents=2\n`).MatchString(firstLog.String()) {
		t.Errorf("the notice lacks the tunnel or the count of agents:\n%s", firstLog)
	}
	if n := strings.Count(firstLog.String(), "another agent joined the tunnel"); n != 1 {
		t.Errorf("the first agent was told %d times, want once:\n%s", n, firstLog)
	}
}
