package ingress

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/protocol"
)

// countingObserver records the observer's events.
type countingObserver struct {
	mu      sync.Mutex
	started []string
	done    []string // tunnel status in out
}

func (o *countingObserver) RequestStarted(tunnel string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.started = append(o.started, tunnel)
}

func (o *countingObserver) RequestDone(tunnel string, status int, in, out int64, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.done = append(o.done, strings.Join([]string{tunnel, http.StatusText(status), strconv.FormatInt(in, 10), strconv.FormatInt(out, 10)}, " "))
}

var _ Observer = (*countingObserver)(nil)

// TestAccessLogAndObserver: every request gets an access line, without its
// query; requests that reached a tunnel are told to the observer, with the
// bytes of the bodies and the session that took them.
func TestAccessLogAndObserver(t *testing.T) {
	t.Parallel()
	m := newFakeMember(7, protocol.StatusOK, nil)
	defer m.leave()
	var logs bytes.Buffer
	obs := &countingObserver{}
	gw := &fakeGateway{tunnels: map[string]*fakeTunnel{"app": {name: "app", members: []gateway.Member{m}}}}
	in := New(gw, Config{Logger: slog.New(slog.DiscardHandler), StatusTimeout: 5 * time.Second,
		AccessLog: slog.New(slog.NewTextHandler(&logs, nil)), Observer: obs})
	defer in.Close()

	r := httptest.NewRequest(http.MethodPost, "/upload?token=s3cret", strings.NewReader("hello"))
	r.Host = "app.gw.test"
	r.RemoteAddr = "192.0.2.1:1234"
	w := httptest.NewRecorder()
	in.ServeHTTP(w, r)
	if w.Code != http.StatusOK || w.Body.String() != "7" {
		t.Fatalf("answer %d %q", w.Code, w.Body.String())
	}
	if w := visit(in, "nope.gw.test"); w.Code != http.StatusNotFound {
		t.Fatalf("unknown host: %d", w.Code)
	}

	obs.mu.Lock()
	started, done := obs.started, obs.done
	obs.mu.Unlock()
	if len(started) != 1 || started[0] != "app" || len(done) != 1 || done[0] != "app OK 5 1" {
		t.Errorf("observer saw started %q, done %q; want one request of app, 5 bytes in, 1 out", started, done)
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("access log has %d lines, want 2:\n%s", len(lines), logs.String())
	}
	for i, want := range []string{
		`msg="http request" tunnel=app method=POST host=app.gw.test path=/upload status=200 bytes=1 duration=`,
		`msg="http request" tunnel="" method=GET host=nope.gw.test path=/ status=404 bytes=`,
	} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d: %s\nwant it to contain %s", i, lines[i], want)
		}
	}
	if !strings.HasSuffix(lines[0], "visitor=192.0.2.1:1234 session=7") || !strings.HasSuffix(lines[1], "session=0") {
		t.Errorf("visitor or session missing:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), "s3cret") {
		t.Errorf("the access log shows the query:\n%s", logs.String())
	}
}
