package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
	regexec "github.com/diglett/diglett/register/exec"
	"github.com/diglett/diglett/register/webhook"
)

// hookRecorder is an exec hook that appends one line per event to the
// file named by its first argument.
const hookRecorder = `#!/bin/sh
echo "$DIGLETT_EVENT name=$DIGLETT_NAME port=$DIGLETT_PORT host=$DIGLETT_HOST hosts=$DIGLETT_HOSTS identity=$DIGLETT_IDENTITY" >> "$1"
`

// fileText is a file's content as a fmt.Stringer, for waitFor.
type fileText string

func (f fileText) String() string {
	data, _ := os.ReadFile(string(f))
	return string(data)
}

// webhookSink is a webhook endpoint that checks each POST's signature
// and keeps the events, one line each like hookRecorder's. Its answers
// to register events are given by status, 200 once they run out.
type webhookSink struct {
	*httptest.Server
	secret []byte

	mu     sync.Mutex
	status []int
	events strings.Builder
}

func startWebhookSink(t *testing.T, secret []byte, status ...int) *webhookSink {
	t.Helper()
	s := &webhookSink{secret: secret, status: status}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *webhookSink) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return
	}
	if s.secret != nil && r.Header.Get(webhook.HeaderSignature) != webhook.Sign(s.secret, body) {
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	var ev webhook.Event
	if err := json.Unmarshal(body, &ev); err != nil || ev.Event != r.Header.Get(webhook.HeaderEvent) || ev.Time.IsZero() {
		http.Error(w, fmt.Sprintf("bad event %s: %v", body, err), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.status) > 0 && ev.Event == webhook.EventRegister {
		code := s.status[0]
		s.status = s.status[1:]
		if code != http.StatusOK {
			http.Error(w, "try again later", code)
			return
		}
	}
	host := ""
	if len(ev.Hosts) > 0 {
		host = ev.Hosts[0]
	}
	port := ""
	if ev.Port != 0 {
		port = fmt.Sprint(ev.Port)
	}
	fmt.Fprintf(&s.events, "%s name=%s port=%s host=%s hosts=%s identity=%s\n", ev.Event, ev.Name, port, host, strings.Join(ev.Hosts, " "), ev.Identity)
}

func (s *webhookSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.events.String()
}

// TestHooksFromConfig runs a gateway whose register list, in its file,
// holds an exec hook and a signed webhook, and a real agent: both hear
// of the sweep at start, of the tunnel's register with its name, port
// and host, and of its unregister once the agent left and its lease
// (1s) ended.
func TestHooksFromConfig(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	sink := startWebhookSink(t, []byte("webhook s3cret"))
	write("hook.sh", hookRecorder, 0o700)
	write("webhook.key", "webhook s3cret\n", 0o600)
	write("tokens.yaml", "- token: s3cret\n  identity: alice\n  names: [web]\n", 0o600)
	hookEvents := fileText(filepath.Join(dir, "hook.events"))
	lo, hi := randomPortWindow()
	gw := write("gateway.yaml", fmt.Sprintf(`version: 1
listen: 127.0.0.1:0
data_dir: state
ports: %d-%d
public_bind: 127.0.0.1
domain: example.test
http_addr: 127.0.0.1:0
lease: 1s
auth:
  - tokens: {file: tokens.yaml}
register:
  - exec: {command: [./hook.sh, hook.events], dir: ., timeout: 5s}
  - webhook: {url: %q, secret_file: webhook.key, timeout: 5s}
`, lo, hi, sink.URL+"/diglett"), 0o600)
	srv := startServerCommand(t, "--config", gw)

	ag := write("agent.yaml", fmt.Sprintf(`version: 1
gateway: [%s]
token: s3cret
fingerprint: %s
known_gateways: known_gateways
transport: tcp
tunnels:
  - {name: web, backend: %q}
`, srv.Addr, srv.Fingerprint, startGreeter(t, "web")), 0o600)
	a := startAgentCommand(t, "--config", ag)
	_, port, err := net.SplitHostPort(a.tunnel(t, "web"))
	if err != nil {
		t.Fatal(err)
	}
	route := "name=web port=" + port + " host=web.example.test hosts=web.example.test identity=alice\n"
	want := "sweep name= port= host= hosts= identity=\nregister " + route
	waitFor(t, "exec hook", hookEvents, want)
	waitFor(t, "webhook", sink, want)

	if err := a.stop(); err != nil {
		t.Fatalf("agent command: %v", err)
	}
	want += "unregister " + route
	waitFor(t, "exec hook", hookEvents, want)
	waitFor(t, "webhook", sink, want)
	srv.stop()
	if got := hookEvents.String(); got != want {
		t.Errorf("the hook heard, in all:\n%s\nwant\n%s", got, want)
	}
	if got := sink.String(); got != want {
		t.Errorf("the webhook heard, in all:\n%s\nwant\n%s", got, want)
	}
}

// TestHooksRetried: the gateway retries, with backoff, a hook that fails
// twice and a webhook that answers 500 twice, until each succeeds.
func TestHooksRetried(t *testing.T) {
	parallel(t)
	t.Run("exec", func(t *testing.T) {
		parallel(t)
		dir := t.TempDir()
		flaky := filepath.Join(dir, "flaky.sh")
		if err := os.WriteFile(flaky, []byte(`#!/bin/sh
[ "$DIGLETT_EVENT" = register ] || exit 0
n=$(cat "$0.count" 2>/dev/null || echo 0)
n=$((n+1)); echo $n > "$0.count"
[ $n -gt 2 ] || { echo "attempt $n: proxy unreachable"; exit 1; }
`), 0o700); err != nil {
			t.Fatal(err)
		}
		hook, err := regexec.New(regexec.Config{Command: []string{flaky}, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		g := startGateway(t, gatewayOptions{Registerer: hook})
		mustListen(t, agentConfig(t, g, "web"))
		waitFor(t, "gateway log", g.Logs, "registerer caught up")
		for _, want := range []string{"hook register: exit status 1: attempt 1: proxy unreachable", "hook register: exit status 1: attempt 2: proxy unreachable", "failed_attempts=2"} {
			if !strings.Contains(g.Logs.String(), want) {
				t.Errorf("the gateway's log lacks %q", want)
			}
		}
		if got := fileText(flaky + ".count").String(); got != "3\n" {
			t.Errorf("the hook ran %q times for register, want 3", got)
		}
	})
	t.Run("hang", func(t *testing.T) {
		parallel(t)
		dir := t.TempDir()
		hang := filepath.Join(dir, "hang.sh")
		if err := os.WriteFile(hang, []byte(`#!/bin/sh
[ "$DIGLETT_EVENT" = register ] || exit 0
[ -e "$0.hung" ] && exit 0
sleep 60 &
echo $! > "$0.child"
touch "$0.hung"
sleep 60
`), 0o700); err != nil {
			t.Fatal(err)
		}
		hook, err := regexec.New(regexec.Config{Command: []string{hang}, Timeout: 500 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		g := startGateway(t, gatewayOptions{Registerer: hook})
		mustListen(t, agentConfig(t, g, "web"))
		waitFor(t, "gateway log", g.Logs, "registerer caught up")
		if !strings.Contains(g.Logs.String(), `err="hook register: timed out after 500ms"`) {
			t.Errorf("the gateway's log lacks the timeout")
		}
		pid, err := strconv.Atoi(strings.TrimSpace(fileText(hang + ".child").String()))
		if err != nil {
			t.Fatal(err)
		}
		if err := testutil.Poll(eventually, func() error {
			if processRuns(pid) {
				return fmt.Errorf("the hook's child %d still runs", pid)
			}
			return nil
		}); err != nil {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Error(err)
		}
	})
	t.Run("webhook", func(t *testing.T) {
		parallel(t)
		sink := startWebhookSink(t, nil, http.StatusInternalServerError, http.StatusInternalServerError)
		wh, err := webhook.New(webhook.Config{URL: sink.URL, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		g := startGateway(t, gatewayOptions{Registerer: wh})
		mustListen(t, agentConfig(t, g, "web"))
		waitFor(t, "webhook", sink, "register name=web")
		waitFor(t, "gateway log", g.Logs, "registerer caught up")
		log := g.Logs.String()
		if n := strings.Count(log, "webhook register: 500 Internal Server Error: try again later"); n != 2 {
			t.Errorf("the gateway logged %d failures of the webhook, want 2:\n%s", n, log)
		}
		if got := sink.String(); strings.Count(got, "register ") != 1 {
			t.Errorf("the webhook heard:\n%s\nwant one register", got)
		}
	})
}

// processRuns reports whether pid is a process that has not ended: one
// that exists and is not a zombie waiting for its parent.
func processRuns(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	// pid (comm) STATE ...: comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}
