package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/internal/cli"
	"github.com/diglett/diglett/internal/inspect"
	"github.com/diglett/diglett/internal/testutil"
)

// inspectBackend is an HTTP backend that counts the requests it serves and
// keeps the last one's Authorization; it answers "seen N", with the
// SHA-256 of the request's body in X-Body-Sum.
type inspectBackend struct {
	addr string
	n    atomic.Int64
	mu   sync.Mutex
	auth string
}

func startInspectBackend(t testing.TB) *inspectBackend {
	b := &inspectBackend{}
	b.addr = startHTTPBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sum := sha256.New()
		io.Copy(sum, r.Body)
		w.Header().Set("X-Body-Sum", hex.EncodeToString(sum.Sum(nil)))
		b.mu.Lock()
		b.auth = r.Header.Get("Authorization")
		b.mu.Unlock()
		fmt.Fprintf(w, "seen %d", b.n.Add(1))
	}))
	return b
}

func (b *inspectBackend) lastAuth() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.auth
}

var inspectLine = regexp.MustCompile(`(?m)^inspect: (http://\S+)$`)

// startInspectedAgent runs the agent command publishing "web" on g, to
// backend, with the inspector on a free loopback port, and returns it
// with the inspector's URL once the tunnel is registered.
func startInspectedAgent(t *testing.T, g *testGateway, backend string) (*agentCommand, string) {
	t.Helper()
	a := startAgentCommand(t, "-g", g.Addr, "-n", "web", "--fingerprint", g.Fingerprint,
		"--known-gateways", filepath.Join(t.TempDir(), "known_gateways"),
		"--inspect", "127.0.0.1:0", "--inspect-size", "50", backend)
	a.tunnel(t, "web")
	m := inspectLine.FindStringSubmatch(a.stdout.String())
	if m == nil {
		t.Fatalf("the agent did not print the inspector's address:\n%s", &a.stdout)
	}
	return a, m[1]
}

// getJSON fetches url into v and returns the status.
func getJSON(t testing.TB, url string, v any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if v != nil && resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
	}
	return resp.StatusCode
}

// waitRequests waits until the inspector at base lists n requests, and
// returns them, newest first.
func waitRequests(t testing.TB, base string, n int) []inspect.Summary {
	t.Helper()
	var list []inspect.Summary
	if err := testutil.Poll(eventually, func() error {
		list = nil
		getJSON(t, base+"/api/requests", &list)
		if len(list) != n {
			return fmt.Errorf("%d requests listed, want %d", len(list), n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return list
}

// TestInspector runs the agent command with the inspector and sends HTTP
// visitors through a real gateway: each exchange is recorded (secrets
// redacted, large bodies kept in part), a replay reaches the backend
// again, the metrics count them and /readyz says the tunnel is ready.
func TestInspector(t *testing.T) {
	parallel(t)
	g := httpGateway(t, gatewayOptions{})
	b := startInspectBackend(t)
	a, base := startInspectedAgent(t, g, b.addr)
	if code := getJSON(t, base+"/readyz", nil); code != http.StatusOK {
		t.Errorf("/readyz with the tunnel registered: %d", code)
	}
	c := g.httpClient(t)

	req, _ := http.NewRequest("GET", "http://web."+testDomain+"/hello?x=1", nil)
	req.Header.Set("Authorization", "Bearer topsecret")
	req.Header.Set("Cookie", "session=alsosecret")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	// Large bodies: the relay carries all of them, byte for byte, and
	// the inspector keeps the first 64 KiB of each.
	const uploads, size = 20, 1 << 20
	body := make([]byte, size)
	rand.Read(body)
	sum := sha256.Sum256(body)
	for range uploads {
		resp, err := c.Post("http://web."+testDomain+"/upload", "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("upload: %d", resp.StatusCode)
		}
		if got := resp.Header.Get("X-Body-Sum"); got != hex.EncodeToString(sum[:]) {
			t.Fatalf("the backend received a body that differs from the one sent")
		}
	}
	// A visitor of the tunnel's TCP port that does not speak HTTP is
	// relayed but not recorded.
	raw, err := net.DialTimeout("tcp", a.tunnel(t, "web"), eventually)
	if err != nil {
		t.Fatal(err)
	}
	raw.SetDeadline(time.Now().Add(eventually))
	raw.Write([]byte("\x16\x03\x01 not http at all\r\n\r\n"))
	io.Copy(io.Discard, raw) // the backend answers 400 and closes
	raw.Close()

	list := waitRequests(t, base, 1+uploads)
	first := list[len(list)-1]
	if first.Method != "GET" || first.Path != "/hello?x=1" || first.Host != "web."+testDomain ||
		first.Status != 200 || first.Tunnel != "web" || first.ResponseSize != int64(len("seen 1")) {
		t.Errorf("first request recorded as %+v", first)
	}
	var raw1 json.RawMessage
	getJSON(t, fmt.Sprintf("%s/api/requests/%d", base, first.ID), &raw1)
	if bytes.Contains(raw1, []byte("topsecret")) || bytes.Contains(raw1, []byte("alsosecret")) {
		t.Errorf("a secret shows in the inspector: %s", raw1)
	}
	var e inspect.Entry
	json.Unmarshal(raw1, &e)
	if got := e.Request.Header.Get("Authorization"); got != "Bearer [redacted]" {
		t.Errorf("Authorization shown as %q", got)
	}
	if string(e.Response.Body) != "seen 1" {
		t.Errorf("response body recorded as %q", e.Response.Body)
	}
	for _, s := range list[:uploads] {
		if s.Method != "POST" || s.RequestSize != size || s.Status != 200 || s.Error != "" {
			t.Errorf("upload recorded as %+v", s)
			break
		}
	}
	var up inspect.Entry
	getJSON(t, fmt.Sprintf("%s/api/requests/%d", base, list[0].ID), &up)
	if len(up.Request.Body) != inspect.BodyLimit || !up.Request.Truncated {
		t.Errorf("upload body: kept %d bytes of %d, truncated %v", len(up.Request.Body), up.Request.Size, up.Request.Truncated)
	}

	// Replay the first request: it reaches the backend with its
	// credentials, and shows as a new entry.
	seen := b.n.Load()
	r := postReplay(t, base, first.ID, http.StatusOK)
	if b.n.Load() != seen+1 || b.lastAuth() != "Bearer topsecret" {
		t.Errorf("after the replay the backend saw %d requests (want %d), the last with Authorization %q", b.n.Load(), seen+1, b.lastAuth())
	}
	var replayed inspect.Entry
	getJSON(t, fmt.Sprintf("%s/api/requests/%d", base, r.ID), &replayed)
	if replayed.ReplayOf != first.ID || replayed.Status != 200 || string(replayed.Response.Body) != fmt.Sprintf("seen %d", seen+1) {
		t.Errorf("replay recorded as %+v, body %q", replayed.Summary, replayed.Response.Body)
	}
	// An upload's body was not kept whole: it cannot be replayed.
	postReplay(t, base, list[0].ID, http.StatusConflict)

	resp, err = http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []struct {
		series string
		value  float64
	}{
		{`diglett_agent_http_requests_total{code="200",tunnel="web"}`, 1 + uploads + 1},
		{`diglett_agent_http_request_body_bytes_total{tunnel="web"}`, uploads * size},
	} {
		if v, ok := inspectorMetric(metrics, want.series); !ok || v != want.value {
			t.Errorf("metric %s = %v (found: %v), want %v", want.series, v, ok, want.value)
		}
	}
	check := exec.Command(testutil.Program(t, "promtool"), "check", "metrics")
	check.Stdin = bytes.NewReader(metrics)
	if out, err := check.CombinedOutput(); err != nil {
		t.Errorf("the metrics checker refuses the inspector's /metrics: %v\n%s", err, out)
	}
}

// inspectorMetric is the value of series in a page of metrics.
func inspectorMetric(metrics []byte, series string) (float64, bool) {
	for _, line := range strings.Split(string(metrics), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			return f, err == nil
		}
	}
	return 0, false
}

// TestInspectorNotReady checks that /readyz answers 503 while the agent
// has not registered its tunnels yet: here its gateway never answers.
func TestInspectorNotReady(t *testing.T) {
	parallel(t)
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			held = append(held, c) // read nothing, answer nothing
		}
	}()
	defer func() {
		silent.Close()
		<-accepted
		for _, c := range held {
			c.Close()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr testutil.Buffer
	done := make(chan error, 1)
	go func() {
		done <- cli.Agent(ctx, []string{"-g", silent.Addr().String(), "-n", "web", "--transport", "tcp",
			"--known-gateways", filepath.Join(t.TempDir(), "known_gateways"), "--inspect", "127.0.0.1:0", "9"}, &stdout, &stderr)
	}()
	defer func() {
		cancel()
		<-done // an error: the agent never got going
	}()
	var base string
	if err := testutil.Poll(eventually, func() error {
		m := inspectLine.FindStringSubmatch(stdout.String())
		if m == nil {
			return errors.New("no inspector address printed")
		}
		base = m[1]
		return nil
	}); err != nil {
		t.Fatalf("%v:\n%s\n%s", err, &stdout, &stderr)
	}
	if code := getJSON(t, base+"/readyz", nil); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz before the tunnel is registered: %d, want 503", code)
	}
}

// postReplay replays request id through the API and checks the status.
func postReplay(t testing.TB, base string, id uint64, want int) (r struct {
	ID    uint64 `json:"id"`
	Error string `json:"error"`
}) {
	t.Helper()
	resp, err := http.Post(fmt.Sprintf("%s/api/requests/%d/replay", base, id), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	json.NewDecoder(resp.Body).Decode(&r)
	if resp.StatusCode != want {
		t.Fatalf("replay of %d: status %d (%s), want %d", id, resp.StatusCode, r.Error, want)
	}
	return r
}

// TestInspectorFlags checks --inspect off and the refusals of an
// --inspect address that cannot be served.
func TestInspectorFlags(t *testing.T) {
	parallel(t)
	g := httpGateway(t, gatewayOptions{})
	backend := nameBackend(t, "web")
	a := startAgentCommand(t, "-g", g.Addr, "-n", "web", "--fingerprint", g.Fingerprint,
		"--known-gateways", filepath.Join(t.TempDir(), "known_gateways"), "--inspect", "off", backend)
	a.tunnel(t, "web")
	if strings.Contains(a.stdout.String(), "inspect:") {
		t.Errorf("--inspect off printed an inspector:\n%s", &a.stdout)
	}

	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, tt := range []struct{ addr, want string }{
		{taken.Addr().String(), "--inspect " + taken.Addr().String() + ": listen tcp " + taken.Addr().String() + ": bind: address already in use (give another address, or --inspect off)"},
		{"0.0.0.0:0", "--inspect 0.0.0.0:0: the inspector shows the requests and replays them, so it listens on loopback addresses only (127.0.0.1:PORT)"},
		{":0", "--inspect :0: the inspector shows the requests and replays them, so it listens on loopback addresses only (127.0.0.1:PORT)"},
		{"nonsense", "--inspect nonsense: listen tcp: address nonsense: missing port in address"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), eventually)
		var stdout, stderr testutil.Buffer
		err := cli.Agent(ctx, []string{"-g", g.Addr, "-n", "other", "--fingerprint", g.Fingerprint,
			"--known-gateways", filepath.Join(t.TempDir(), "known_gateways"), "--inspect", tt.addr, backend}, &stdout, &stderr)
		cancel()
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("--inspect %s: error %v, want %q", tt.addr, err, tt.want)
		}
	}
	var stdout, stderr testutil.Buffer
	err = cli.Agent(t.Context(), []string{"-g", g.Addr, "-n", "other", "--inspect-size", "0", backend}, &stdout, &stderr)
	if err == nil || err.Error() != "--inspect-size 0: want 1 to 100000" {
		t.Errorf("--inspect-size 0: %v", err)
	}
}

// TestInspectorPage drives the inspector's page in a headless browser: it
// shows, live, a request the test sends through a real gateway and agent,
// its details on a click, and its Replay button sends the request to the
// backend again and lists the replay.
func TestInspectorPage(t *testing.T) {
	parallel(t)
	browser := testutil.Program(t, "chromium")
	g := httpGateway(t, gatewayOptions{})
	b := startInspectBackend(t)
	_, base := startInspectedAgent(t, g, b.addr)

	ctx := inspectorBrowser(t, browser)
	run, eval := pageActions(t, ctx)
	run("open the page", chromedp.Navigate(base+"/"))
	eval("the page follows the live stream", `document.getElementById("live").textContent`, "live")

	if code, body := get(t, g.httpClient(t), "http://web."+testDomain+"/from-the-browser-test"); code != 200 || body != "seen 1" {
		t.Fatalf("visitor: %d %q", code, body)
	}
	eval("the request shows up without a reload",
		`Array.from(document.querySelectorAll("#requests tbody tr")).map(r => r.children[4].textContent + " " + r.children[5].textContent).join(",")`,
		"/from-the-browser-test 200")

	run("open the request", chromedp.Click(chromedp.CSS(`#requests tbody tr[data-id="1"]`)))
	eval("its details", `document.getElementById("detail-title").textContent + " | " + document.getElementById("response-body").textContent`,
		"GET web."+testDomain+"/from-the-browser-test | seen 1")

	run("replay it", chromedp.Click(chromedp.CSS(`#replay`)))
	eval("the replay is reported", `document.getElementById("replay-status").textContent`, "replayed as #2")
	eval("and listed", `Array.from(document.querySelectorAll("#requests tbody tr")).map(r => r.dataset.id).join(",")`, "2,1")
	if n := b.n.Load(); n != 2 {
		t.Errorf("the backend saw %d requests, want 2 (the visitor's and the replay)", n)
	}
	run("open the replay", chromedp.Click(chromedp.CSS(`#requests tbody tr[data-id="2"]`)))
	eval("the replay's details", `document.getElementById("response-body").textContent`, "seen 2")
}

// inspectorBrowser starts the headless browser at path for the test and
// returns the context of its tab; the browser stops when the test ends.
func inspectorBrowser(t *testing.T, path string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // tests may run as root
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
	})
	// Start the browser now, so that a missing or broken one fails here;
	// the start is bounded by a watchdog, since a timeout on this first
	// call's context would bind the browser's life to it.
	watchdog := time.AfterFunc(time.Minute, cancelTab)
	err := chromedp.Do(ctx)
	if !watchdog.Stop() {
		t.Fatal("the headless browser did not start within a minute")
	}
	if err != nil {
		t.Fatalf("start the headless browser: %v", err)
	}
	return ctx
}

// pageActions returns, for the page of the browser tab ctx, run (do
// actions, bounded) and eval (poll until the page's js yields want); both
// fail t with what they were doing.
func pageActions(t *testing.T, ctx context.Context) (run func(what string, actions ...chromedp.Action[chromedp.Void]), eval func(what, js, want string)) {
	run = func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		actx, cancel := context.WithTimeout(ctx, eventually)
		defer cancel()
		if err := chromedp.Do(actx, actions...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	eval = func(what, js, want string) {
		t.Helper()
		err := testutil.Poll(eventually, func() error {
			actx, cancel := context.WithTimeout(ctx, eventually)
			defer cancel()
			got, err := chromedp.Run(actx, chromedp.Evaluate[string](js))
			if err != nil {
				return err
			}
			if got != want {
				return fmt.Errorf("got %q, want %q", got, want)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	return run, eval
}

// BenchmarkInspectorOverhead posts 64 MiB per operation to an HTTP backend
// directly, through a tunnel's public TCP port, and through the same with
// the inspector recording the exchanges: the MB/s of the last two are the
// inspector's cost.
//
//	go test -run '^$' -bench BenchmarkInspectorOverhead -count 5 ./internal/e2e
func BenchmarkInspectorOverhead(b *testing.B) {
	const size = 64 << 20
	backend := startHTTPBackend(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
	}))
	g := startGateway(b, gatewayOptions{})
	ins, err := inspect.New(inspect.Config{})
	if err != nil {
		b.Fatal(err)
	}
	paths := [][2]string{{"direct", backend}}
	for _, name := range []string{"tunnel", "inspected"} {
		cfg := agentConfig(b, g, "bench-"+name)
		cfg.Fingerprint = g.Fingerprint
		ln := mustListen(b, cfg)
		var o diglett.ForwardOptions
		if name == "inspected" {
			o.Inspect = func(c *diglett.Conn) (fromVisitor, fromBackend io.WriteCloser) {
				return ins.Observe(c.Name(), c.RemoteAddr())
			}
		}
		done := make(chan error, 1)
		go func() { done <- diglett.Forward(context.Background(), ln, backend, o) }()
		b.Cleanup(func() {
			ln.Close()
			<-done
		})
		paths = append(paths, [2]string{name, ln.Addr().String()})
	}
	body := make([]byte, size)
	for _, p := range paths {
		b.Run(p[0], func(b *testing.B) {
			tr := &http.Transport{DisableKeepAlives: true}
			defer tr.CloseIdleConnections()
			b.SetBytes(size)
			for b.Loop() {
				resp, err := tr.RoundTrip(mustRequest(b, "http://"+p[1]+"/upload", body))
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("upload: %d", resp.StatusCode)
				}
			}
		})
	}
	if len(ins.List()) == 0 {
		b.Error("the inspector recorded nothing")
	}
}

func mustRequest(b *testing.B, url string, body []byte) *http.Request {
	req, err := http.NewRequest("POST", url, bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	return req
}
