package inspect

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/diglett/diglett/internal/testutil"
)

const wait = 10 * time.Second

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newInspector(t testing.TB, cfg Config) *Inspector {
	t.Helper()
	in, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// relayed feeds the raw bytes of one connection to in as a relay would,
// in pieces of chunk bytes: what the visitor sent, then what the backend
// answered.
func relayed(in *Inspector, tunnel, fromVisitor, fromBackend string, chunk int) {
	fv, fb := in.Observe(tunnel, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 4242})
	for _, x := range []struct {
		w io.Writer
		s string
	}{{fv, fromVisitor}, {fb, fromBackend}} {
		for s := x.s; s != ""; {
			n := min(chunk, len(s))
			x.w.Write([]byte(s[:n]))
			s = s[n:]
		}
	}
	fv.Close()
	fb.Close()
}

// waitEntries waits until in keeps n entries and returns them, newest
// first.
func waitEntries(t testing.TB, in *Inspector, n int) []*Entry {
	t.Helper()
	var list []Summary
	if err := testutil.Poll(wait, func() error {
		if list = in.List(); len(list) < n {
			return fmt.Errorf("%d entries, want %d", len(list), n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var out []*Entry
	for _, s := range list {
		e, ok := in.Get(s.ID)
		if !ok {
			t.Fatalf("entry %d listed but not found", s.ID)
		}
		out = append(out, e)
	}
	return out
}

func TestRecordsExchanges(t *testing.T) {
	big := strings.Repeat("x", 100<<10)
	tests := []struct {
		name                string
		fromVisitor, answer string
		want                []Summary // newest first
		check               func(t *testing.T, es []*Entry)
	}{{
		name:        "get with secrets",
		fromVisitor: "GET /a?b=c HTTP/1.1\r\nHost: web.example.com\r\nAuthorization: Bearer s3cret\r\nCookie: session=abc; theme=dark\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nX-Trace: 1\r\n\r\n",
		answer:      "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: id=s3cret; Path=/; HttpOnly\r\n\r\nhello",
		want:        []Summary{{Method: "GET", Path: "/a?b=c", Host: "web.example.com", Status: 200, ResponseSize: 5}},
		check: func(t *testing.T, es []*Entry) {
			e := es[0]
			if got := e.Request.Header.Get("Authorization"); got != "Bearer [redacted]" {
				t.Errorf("Authorization shown as %q", got)
			}
			if got := e.Request.Header.Get("Proxy-Authorization"); got != "Basic [redacted]" {
				t.Errorf("Proxy-Authorization shown as %q", got)
			}
			if got := e.Request.Header.Get("Cookie"); got != "session=[redacted]; theme=[redacted]" {
				t.Errorf("Cookie shown as %q", got)
			}
			if got := e.Response.Header.Get("Set-Cookie"); got != "id=[redacted]; Path=/; HttpOnly" {
				t.Errorf("Set-Cookie shown as %q", got)
			}
			if got := e.Request.Header.Get("X-Trace"); got != "1" {
				t.Errorf("X-Trace shown as %q", got)
			}
			data, _ := json.Marshal(e)
			if bytes.Contains(data, []byte("s3cret")) || bytes.Contains(data, []byte("Zm9v")) || bytes.Contains(data, []byte("abc")) {
				t.Errorf("a secret is in the entry's JSON: %s", data)
			}
			if string(e.Response.Body) != "hello" || !e.Response.Complete || e.Response.Truncated {
				t.Errorf("response body %q complete %v truncated %v", e.Response.Body, e.Response.Complete, e.Response.Truncated)
			}
			if e.Visitor != "192.0.2.7:4242" || e.Tunnel != "web" {
				t.Errorf("visitor %q tunnel %q", e.Visitor, e.Tunnel)
			}
		},
	}, {
		name:        "large bodies kept in part",
		fromVisitor: fmt.Sprintf("POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s", len(big), big),
		answer:      fmt.Sprintf("HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(big), big),
		want:        []Summary{{Method: "POST", Path: "/up", Host: "h", Status: 201, RequestSize: 100 << 10, ResponseSize: 100 << 10}},
		check: func(t *testing.T, es []*Entry) {
			for _, m := range []Message{es[0].Request, es[0].Response} {
				if len(m.Body) != BodyLimit || !m.Truncated || !m.Complete || m.Size != int64(len(big)) {
					t.Errorf("body: kept %d of %d, truncated %v, complete %v", len(m.Body), m.Size, m.Truncated, m.Complete)
				}
			}
		},
	}, {
		name: "keep-alive, head and 100-continue",
		fromVisitor: "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n" +
			"HEAD /2 HTTP/1.1\r\nHost: h\r\n\r\n" +
			"PUT /3 HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
		answer: "HTTP/1.1 204 No Content\r\n\r\n" +
			"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" +
			"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		want: []Summary{
			{Method: "PUT", Path: "/3", Host: "h", Status: 200, RequestSize: 3, ResponseSize: 2},
			{Method: "HEAD", Path: "/2", Host: "h", Status: 200},
			{Method: "GET", Path: "/1", Host: "h", Status: 204},
		},
	}, {
		name:        "no response",
		fromVisitor: "GET /gone HTTP/1.1\r\nHost: h\r\n\r\n",
		want:        []Summary{{Method: "GET", Path: "/gone", Host: "h", Error: "response: the connection ended first"}},
	}, {
		name:        "websocket upgrade stops at the switch",
		fromVisitor: "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
		answer:      "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x02hi",
		want:        []Summary{{Method: "GET", Path: "/ws", Host: "h", Status: 101}},
	}}
	for _, tt := range tests {
		for _, chunk := range []int{1 << 20, 7} {
			t.Run(fmt.Sprintf("%s/%d", tt.name, chunk), func(t *testing.T) {
				in := newInspector(t, Config{})
				relayed(in, "web", tt.fromVisitor, tt.answer, chunk)
				es := waitEntries(t, in, len(tt.want))
				if len(in.List()) != len(tt.want) {
					t.Fatalf("%d entries, want %d", len(in.List()), len(tt.want))
				}
				for i, w := range tt.want {
					g := es[i].Summary
					if g.Method != w.Method || g.Path != w.Path || g.Host != w.Host || g.Status != w.Status ||
						g.RequestSize != w.RequestSize || g.ResponseSize != w.ResponseSize || g.Error != w.Error {
						t.Errorf("entry %d:\n got %+v\nwant %+v", i, g, w)
					}
					if g.ID != uint64(len(tt.want)-i) {
						t.Errorf("entry %d has id %d", i, g.ID)
					}
				}
				if tt.check != nil {
					tt.check(t, es)
				}
			})
		}
	}
}

// TestIgnoresOtherProtocols checks that a stream that is not HTTP/1 is let
// go without an entry.
func TestIgnoresOtherProtocols(t *testing.T) {
	for name, data := range map[string]string{
		"raw tcp": "\x00\x01\x02 binary \xff\xfe\r\n\r\n",
		"h2c":     "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
		"ssh":     "SSH-2.0-client\r\n" + strings.Repeat("z", 100<<10),
	} {
		t.Run(name, func(t *testing.T) {
			in := newInspector(t, Config{})
			relayed(in, "tcp", data, "answer\r\n", 1024)
			// The parsers give up and end, having kept nothing.
			if err := testutil.Poll(wait, func() error { return goleak.Find() }); err != nil {
				t.Fatal(err)
			}
			if l := in.List(); len(l) != 0 {
				t.Errorf("recorded %+v", l)
			}
		})
	}
}

// TestRing keeps the newest Size entries.
func TestRing(t *testing.T) {
	in := newInspector(t, Config{Size: 3})
	for i := range 5 {
		relayed(in, "web", fmt.Sprintf("GET /%d HTTP/1.1\r\nHost: h\r\n\r\n", i), "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 1<<20)
		// Listed entries are not fetched here: the entry of request i
		// may still be on its way, and its arrival evicts the oldest
		// (waitEntries would race that).
		if err := testutil.Poll(wait, func() error {
			l := in.List()
			if len(l) != min(i+1, 3) || l[0].Path != fmt.Sprintf("/%d", i) {
				return fmt.Errorf("%d entries, the newest %v", len(l), l)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	var paths []string
	for _, s := range in.List() {
		paths = append(paths, s.Path)
	}
	if got := strings.Join(paths, " "); got != "/4 /3 /2" {
		t.Errorf("kept %s, want /4 /3 /2", got)
	}
	if _, ok := in.Get(1); ok {
		t.Error("the oldest entry is still kept")
	}
}

func TestConfigValidate(t *testing.T) {
	for _, size := range []int{-1, MaxSize + 1} {
		if _, err := New(Config{Size: size}); err == nil {
			t.Errorf("size %d accepted", size)
		}
	}
}

// TestMemoryBoundedUnderFlood relays 500 requests of 1 MiB bodies over 8
// connections at once (one in ten of them chunked, which the inspector
// parses instead of dropping past what it keeps), paced as a network would
// (the relay never waits for the inspector, but a network gives it time):
// the ring keeps its bound and so does the heap.
func TestMemoryBoundedUnderFlood(t *testing.T) {
	const (
		requests = 500
		conns    = 8
		size     = 1 << 20
	)
	in := newInspector(t, Config{Size: 100})
	body := bytes.Repeat([]byte("y"), size)
	head := fmt.Sprintf("POST /flood HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n", size)
	chunked := []byte(fmt.Sprintf("POST /flood HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", size, body))
	answer := []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	// The heap's peak while the flood goes on, sampled.
	var peak atomic.Uint64
	sampled := make(chan struct{})
	stopSampling := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			peak.Store(max(peak.Load(), m.HeapAlloc))
			select {
			case <-stopSampling:
				return
			case <-tick.C:
			}
		}
	}()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fv, fb := in.Observe("web", nil)
			defer fv.Close()
			defer fb.Close()
			paced := func(w io.Writer, p []byte) {
				f := w.(*feed)
				for len(p) > 0 {
					n := min(32<<10, len(p))
					f.Write(p[:n])
					p = p[n:]
					for f.pending() > feedLimit/2 {
						runtime.Gosched()
					}
				}
			}
			for i := next.Add(1); i <= requests; i = next.Add(1) {
				if i%10 == 0 {
					paced(fv, chunked)
				} else {
					paced(fv, []byte(head))
					paced(fv, body)
				}
				paced(fb, answer)
			}
		}()
	}
	wg.Wait()
	close(stopSampling)
	<-sampled
	if p := peak.Load(); p > 160<<20 {
		t.Errorf("the heap peaked at %d MiB during the flood", p>>20)
	}
	if err := testutil.Poll(wait, func() error {
		var n int64
		for _, s := range in.List() {
			n = max(n, int64(s.ID))
		}
		if n < requests {
			return fmt.Errorf("%d requests recorded, want %d", n, requests)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Each entry keeps at most 64 KiB of each body, and small heads.
	if r, max := in.Retained(), int64(100*(2*BodyLimit+4<<10)); r > max {
		t.Errorf("the ring keeps %d bytes, want at most %d", r, max)
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	// 500 MiB went through; the ring holds about 7 MiB.
	if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > 48<<20 {
		t.Errorf("the heap grew by %d MiB", grown>>20)
	}
	for _, s := range in.List() {
		if s.RequestSize != size || s.ResponseSize != 2 || s.Error != "" {
			t.Errorf("entry %d: %+v", s.ID, s)
			break
		}
	}
}

// pending is how many bytes f holds for its parser.
func (f *feed) pending() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.buf) - f.r
}

// TestFallsBehind checks that a relay waits only so long for a parser
// that does not keep up, and that the stream then stops being observed.
func TestFallsBehind(t *testing.T) {
	in := newInspector(t, Config{})
	fv, fb := in.Observe("web", nil)
	// Requests that get no response yet: once maxPending of them wait,
	// the parser of requests waits too.
	for i := range maxPending + 2 {
		fv.Write(fmt.Appendf(nil, "GET /%d HTTP/1.1\r\nHost: h\r\n\r\n", i))
	}
	chunk := []byte("GET /more HTTP/1.1\r\nHost: h\r\n\r\n")
	for range 2 * feedLimit / len(chunk) {
		fv.Write(chunk) // returns, after feedWait at most once
	}
	f := fv.(*feed)
	f.mu.Lock()
	behind := f.behind
	f.mu.Unlock()
	if !behind {
		t.Error("the stream is still observed")
	}
	fv.Close()
	fb.Close()
	es := waitEntries(t, in, 1)
	for _, e := range es {
		if e.Error == "" || e.Status != 0 {
			t.Errorf("entry of a stream that had no answers: %+v", e.Summary)
		}
	}
}

// backend is an HTTP server on loopback that counts its requests and
// keeps the last one.
type backend struct {
	addr  string
	count atomic.Int64
	mu    sync.Mutex
	last  *http.Request
	body  []byte
}

func startBackend(t testing.TB) *backend {
	b := &backend{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		b.last, b.body = r, body
		b.mu.Unlock()
		n := b.count.Add(1)
		w.Header().Set("X-Count", fmt.Sprint(n))
		fmt.Fprintf(w, "request %d: %s %s", n, r.Method, r.URL)
	}))
	t.Cleanup(srv.Close)
	b.addr = srv.Listener.Addr().String()
	return b
}

func (b *backend) dial(ctx context.Context, tunnel string) (net.Conn, error) {
	if tunnel != "web" {
		return nil, errors.New("unknown tunnel")
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", b.addr)
}

func TestReplay(t *testing.T) {
	b := startBackend(t)
	in := newInspector(t, Config{Dial: b.dial})
	relayed(in, "web", "POST /form?x=1 HTTP/1.1\r\nHost: web.example.com\r\nAuthorization: Bearer s3cret\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1<<20)
	orig := waitEntries(t, in, 1)[0]
	n, err := in.Replay(t.Context(), orig)
	if err != nil {
		t.Fatal(err)
	}
	if n.ID != 2 || n.ReplayOf != 1 || n.Status != 200 || n.Tunnel != "web" {
		t.Errorf("replay entry %+v", n.Summary)
	}
	if b.count.Load() != 1 {
		t.Fatalf("backend saw %d requests", b.count.Load())
	}
	b.mu.Lock()
	r, body := b.last, string(b.body)
	b.mu.Unlock()
	if r.Method != "POST" || r.URL.String() != "/form?x=1" || r.Host != "web.example.com" || body != "hello" {
		t.Errorf("backend got %s %s Host %s body %q", r.Method, r.URL, r.Host, body)
	}
	if got := r.Header.Get("Authorization"); got != "Bearer s3cret" {
		t.Errorf("replayed Authorization %q: the credentials must be sent again", got)
	}
	if r.Header.Get("X-Hop") != "" || r.Header.Get("User-Agent") != "" {
		t.Errorf("replay sent headers the visitor did not: %v", r.Header)
	}
	if got := string(n.Response.Body); got != "request 1: POST /form?x=1" {
		t.Errorf("replay response %q", got)
	}
	if got := n.Request.Header.Get("Authorization"); got != "Bearer [redacted]" {
		t.Errorf("replay entry shows Authorization %q", got)
	}

	t.Run("incomplete body", func(t *testing.T) {
		big := strings.Repeat("z", BodyLimit+1)
		relayed(in, "web", fmt.Sprintf("PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s", len(big), big), "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 1<<20)
		e := waitEntries(t, in, 3)[0]
		if _, err := in.Replay(t.Context(), e); !errors.Is(err, ErrIncompleteBody) {
			t.Errorf("replay of a truncated body: %v", err)
		}
	})
	t.Run("backend down", func(t *testing.T) {
		down := newInspector(t, Config{Dial: func(ctx context.Context, tunnel string) (net.Conn, error) {
			return nil, errors.New("connection refused")
		}})
		relayed(down, "web", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 1<<20)
		e := waitEntries(t, down, 1)[0]
		n, err := down.Replay(t.Context(), e)
		if err == nil || n == nil || n.Error == "" || n.ReplayOf != e.ID {
			t.Errorf("replay to a dead backend: %v, entry %+v", err, n)
		}
	})
}

func get(t *testing.T, url string, v any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if v != nil {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
	}
	return resp.StatusCode
}

func TestAPI(t *testing.T) {
	b := startBackend(t)
	var ready atomic.Bool
	in := newInspector(t, Config{Dial: b.dial, Ready: ready.Load})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- in.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	base := "http://" + ln.Addr().String()

	// The live stream, followed from before the requests.
	resp, err := http.Get(base + "/api/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("events Content-Type %q", ct)
	}
	events := bufio.NewReader(resp.Body)

	relayed(in, "web", "GET /one HTTP/1.1\r\nHost: h\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", 1<<20)
	waitEntries(t, in, 1) // recorded in this order: each relay's parsers run on their own
	relayed(in, "web", "POST /two HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc", "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 1<<20)
	waitEntries(t, in, 2)

	var list []Summary
	if code := get(t, base+"/api/requests", &list); code != 200 || len(list) != 2 || list[0].Path != "/two" || list[1].Path != "/one" {
		t.Fatalf("list: %d %+v", code, list)
	}
	var e Entry
	if code := get(t, fmt.Sprintf("%s/api/requests/%d", base, list[0].ID), &e); code != 200 || string(e.Request.Body) != "abc" || e.Status != 404 {
		t.Errorf("get: %d %+v", code, e)
	}
	if code := get(t, base+"/api/requests/99", nil); code != 404 {
		t.Errorf("unknown id: %d", code)
	}
	if code := get(t, base+"/api/requests/x", nil); code != 400 {
		t.Errorf("bad id: %d", code)
	}

	// Two events, in order.
	for _, want := range []string{"/one", "/two"} {
		var s Summary
		for {
			line, err := events.ReadString('\n')
			if err != nil {
				t.Fatalf("events: %v", err)
			}
			if data, ok := strings.CutPrefix(line, "data: "); ok {
				if err := json.Unmarshal([]byte(data), &s); err != nil {
					t.Fatal(err)
				}
				break
			}
		}
		if s.Path != want {
			t.Errorf("event for %s, want %s", s.Path, want)
		}
	}

	// Replay through the API.
	post, err := http.Post(fmt.Sprintf("%s/api/requests/%d/replay", base, list[0].ID), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var r replayResult
	json.NewDecoder(post.Body).Decode(&r)
	post.Body.Close()
	if post.StatusCode != 200 || r.ID != 3 || b.count.Load() != 1 {
		t.Errorf("replay: %d %+v, backend saw %d", post.StatusCode, r, b.count.Load())
	}

	// A page of another site may not replay, nor read through a name of
	// its own.
	req, _ := http.NewRequest("POST", fmt.Sprintf("%s/api/requests/%d/replay", base, list[0].ID), nil)
	req.Header.Set("Origin", "http://evil.example")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 403 {
		t.Errorf("cross-origin replay: %v %v", resp.StatusCode, err)
	} else {
		resp.Body.Close()
	}
	req, _ = http.NewRequest("GET", base+"/api/requests", nil)
	req.Host = "rebound.example:4040"
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 403 {
		t.Errorf("request for another host: %v %v", resp.StatusCode, err)
	} else {
		resp.Body.Close()
	}
	if b.count.Load() != 1 {
		t.Errorf("backend saw %d requests", b.count.Load())
	}

	// Readiness.
	if code := get(t, base+"/readyz", nil); code != 503 {
		t.Errorf("readyz before: %d", code)
	}
	ready.Store(true)
	if code := get(t, base+"/readyz", nil); code != 200 {
		t.Errorf("readyz after: %d", code)
	}

	// Metrics, in the metrics format through its own parser's eyes.
	mresp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	for _, want := range []string{
		`diglett_agent_http_requests_total{code="200",tunnel="web"} 2`,
		`diglett_agent_http_requests_total{code="404",tunnel="web"} 1`,
		`diglett_agent_http_request_body_bytes_total{tunnel="web"} 6`,
		fmt.Sprintf(`diglett_agent_http_response_body_bytes_total{tunnel="web"} %d`, 1+len("request 1: POST /two")),
		`go_goroutines `,
	} {
		if !bytes.Contains(metrics, []byte(want)) {
			t.Errorf("metrics lack %q:\n%s", want, metrics)
		}
	}

	// The page and its files.
	for _, p := range []string{"/", "/app.js", "/style.css"} {
		resp, err := http.Get(base + p)
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || len(page) == 0 || bytes.Contains(page, []byte("https://")) {
			t.Errorf("%s: %d, %d bytes (and nothing from another site)", p, resp.StatusCode, len(page))
		}
	}
}
