package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/reflection"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/gateway"
)

func TestHTTPWebSocket(t *testing.T) {
	checkLeaks(t)
	g := httpGateway(t, gatewayOptions{})
	backend := startHTTPBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte("echo: "), msg...)); err != nil {
				return
			}
		}
	}))
	startHTTPAgent(t, g, "ws", backend)
	ctx, cancel := context.WithTimeout(t.Context(), eventually)
	defer cancel()
	for _, scheme := range []string{"ws", "wss"} {
		t.Run(scheme, func(t *testing.T) {
			hc := g.httpClient(t)
			if scheme == "wss" {
				// WebSocket upgrades ride HTTP/1.1.
				hc.Transport.(*http.Transport).ForceAttemptHTTP2 = false
			}
			c, _, err := websocket.Dial(ctx, scheme+"://ws.gw.test/", &websocket.DialOptions{HTTPClient: hc})
			if err != nil {
				t.Fatal(err)
			}
			defer c.CloseNow()
			for i := range 20 {
				msg := fmt.Sprintf("message %d", i)
				if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
					t.Fatal(err)
				}
				_, got, err := c.Read(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if string(got) != "echo: "+msg {
					t.Fatalf("got %q", got)
				}
			}
			c.Close(websocket.StatusNormalClosure, "")
		})
	}
}

func TestHTTPServerSentEvents(t *testing.T) {
	checkLeaks(t)
	g := httpGateway(t, gatewayOptions{})
	next := make(chan struct{})
	backend := startHTTPBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 5 {
			fmt.Fprintf(w, "data: event %d\n\n", i)
			w.(http.Flusher).Flush()
			select {
			case <-next:
			case <-r.Context().Done():
				return
			}
		}
	}))
	startHTTPAgent(t, g, "events", backend)
	for _, url := range []string{"http://events.gw.test/", "https://events.gw.test/"} {
		t.Run(url, func(t *testing.T) {
			resp, err := g.httpClient(t).Get(url)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			br := bufio.NewReader(resp.Body)
			for i := range 5 {
				// The backend sends the next event only once this one
				// arrived: a buffering proxy would hang here.
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatalf("event %d: %v", i, err)
				}
				if want := fmt.Sprintf("data: event %d\n", i); line != want {
					t.Fatalf("got %q, want %q", line, want)
				}
				br.ReadString('\n')
				next <- struct{}{}
			}
		})
	}
}

// patternReader yields n bytes of a repeatable pseudo-random stream.
type patternReader struct {
	rng *rand.ChaCha8
	n   int64
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.n {
		b = b[:p.n]
	}
	p.rng.Read(b)
	p.n -= int64(len(b))
	return len(b), nil
}

func TestHTTPLargeUpload(t *testing.T) {
	checkLeaks(t)
	const size = 1 << 30
	g := httpGateway(t, gatewayOptions{})
	backend := startHTTPBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
	}))
	startHTTPAgent(t, g, "upload", backend)

	want := sha256.New()
	io.Copy(want, &patternReader{rng: rand.NewChaCha8([32]byte{1}), n: size})
	wantBody := fmt.Sprintf("%d %s", size, hex.EncodeToString(want.Sum(nil)))

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				if ms.HeapInuse > peak.Load() {
					peak.Store(ms.HeapInuse)
				}
			}
		}
	}()
	c := g.httpClient(t)
	c.Timeout = 10 * time.Minute
	resp, err := c.Post("http://upload.gw.test/", "application/octet-stream",
		io.NopCloser(&patternReader{rng: rand.NewChaCha8([32]byte{1}), n: size}))
	close(stop)
	<-sampled
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != wantBody {
		t.Fatalf("status %d body %q, want %q", resp.StatusCode, b, wantBody)
	}
	// The whole test process (client, gateway, agent and backend) must not
	// hold the upload: its heap stays within a few windows of where it was.
	grew := int64(peak.Load()) - int64(base)
	t.Logf("heap in use: %d MiB before, peak %d MiB during a %d MiB upload", base>>20, peak.Load()>>20, size>>20)
	if grew > 96<<20 {
		t.Fatalf("heap grew by %d MiB during the upload", grew>>20)
	}
}

func TestHTTPVisitorAccess(t *testing.T) {
	checkLeaks(t)
	g := httpGateway(t, gatewayOptions{})
	var seen atomic.Int64
	var sawAuth atomic.Bool
	backend := startHTTPBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		if r.Header.Get("Authorization") != "" {
			sawAuth.Store(true)
		}
		fmt.Fprint(w, "secret page")
	}))
	authLn := startHTTPAgent(t, g, "private", backend, func(c *diglett.Config) { c.BasicAuth = "alice:wonder land" })
	lanLn := startHTTPAgent(t, g, "lan", backend, func(c *diglett.Config) { c.AllowIPs = []string{"10.0.0.0/8", "192.0.2.7"} })
	startHTTPAgent(t, g, "local", backend, func(c *diglett.Config) { c.AllowIPs = []string{"127.0.0.0/8"} })
	c := g.httpClient(t)

	do := func(url, user, pass string) int {
		req, _ := http.NewRequest("GET", url, nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 401 && resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("401 without WWW-Authenticate")
		}
		return resp.StatusCode
	}
	for _, tc := range []struct {
		url, user, pass string
		code            int
	}{
		{"http://private.gw.test/", "", "", 401},
		{"http://private.gw.test/", "alice", "wrong", 401},
		{"http://private.gw.test/", "bob", "wonder land", 401},
		{"https://private.gw.test/", "", "", 401},
		{"http://lan.gw.test/", "", "", 403},
		{"https://lan.gw.test/", "", "", 403},
	} {
		if code := do(tc.url, tc.user, tc.pass); code != tc.code {
			t.Errorf("%s as %q: status %d, want %d", tc.url, tc.user, code, tc.code)
		}
	}
	if n := seen.Load(); n != 0 {
		t.Fatalf("denied visitors reached the backend %d times", n)
	}
	if code := do("http://private.gw.test/", "alice", "wonder land"); code != 200 {
		t.Errorf("right password: status %d", code)
	}
	if code := do("http://local.gw.test/", "", ""); code != 200 {
		t.Errorf("allowed address: status %d", code)
	}
	if sawAuth.Load() {
		t.Error("the backend received the gateway's credentials")
	}
	// The allow-list holds on the raw TCP port too; a tunnel with a
	// password refuses its raw TCP port's visitors, since it cannot ask.
	expectTurnedAway(t, lanLn.Addr().String())
	expectTurnedAway(t, authLn.Addr().String())
	if n := seen.Load(); n != 2 {
		t.Fatalf("backend saw %d requests, want the 2 allowed ones", n)
	}
}

func TestHTTPVisitorAccessPolicy(t *testing.T) {
	checkLeaks(t)
	withAuth := func(c *diglett.Config) { c.BasicAuth = "alice:secret" }
	withIPs := func(c *diglett.Config) { c.AllowIPs = []string{"127.0.0.1"} }
	for _, tc := range []struct {
		policy gateway.VisitorAccess
		opt    func(*diglett.Config)
		want   string // "" for accepted
	}{
		{gateway.VisitorAccessDeny, withAuth, "does not take visitor rules"},
		{gateway.VisitorAccessDeny, withIPs, "does not take visitor rules"},
		{gateway.VisitorAccessDeny, func(*diglett.Config) {}, ""},
		{gateway.VisitorAccessRequire, func(*diglett.Config) {}, "only tunnels with basic auth or allowed IPs"},
		{gateway.VisitorAccessRequire, withAuth, ""},
		{gateway.VisitorAccessRequire, withIPs, ""},
	} {
		g := httpGateway(t, gatewayOptions{VisitorAccess: tc.policy})
		cfg := agentConfig(t, g, "app")
		cfg.Fingerprint = g.Fingerprint
		tc.opt(&cfg)
		_, err := listen(t, cfg)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: refused: %v", tc.policy, err)
		case tc.want != "" && (!errors.Is(err, diglett.ErrNameRefused) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: err = %v, want ErrNameRefused saying %q", tc.policy, err, tc.want)
		}
		g.Close()
	}
}

func TestHTTPForwardedHeaders(t *testing.T) {
	checkLeaks(t)
	type seenHeaders struct{ xff, xfh, xfp, fwd, conn string }
	headers := make(chan seenHeaders, 10)
	backend := startHTTPBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		headers <- seenHeaders{
			xff: strings.Join(r.Header.Values("X-Forwarded-For"), ","),
			xfh: r.Header.Get("X-Forwarded-Host"),
			xfp: r.Header.Get("X-Forwarded-Proto"),
			fwd: strings.Join(r.Header.Values("Forwarded"), ","),
		}
	}))
	spoof := "GET / HTTP/1.1\r\nHost: fwd.gw.test\r\n" +
		"X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n" +
		"Forwarded: for=203.0.113.9\r\nConnection: close, X-Forwarded-For, Forwarded, X-Forwarded-Proto\r\n\r\n"

	t.Run("untrusted peer", func(t *testing.T) {
		g := httpGateway(t, gatewayOptions{})
		startHTTPAgent(t, g, "fwd", backend)
		if code, _ := rawHTTP(t, g.HTTPAddr, spoof); code != 200 {
			t.Fatalf("status %d", code)
		}
		h := <-headers
		want := seenHeaders{xff: "127.0.0.1", xfh: "fwd.gw.test", xfp: "http", fwd: `for=127.0.0.1;host="fwd.gw.test";proto=http`}
		if h != want {
			t.Fatalf("backend saw %+v, want %+v", h, want)
		}
		if _, err := g.httpClient(t).Get("https://fwd.gw.test/"); err != nil {
			t.Fatal(err)
		}
		if h := <-headers; h.xfp != "https" || !strings.Contains(h.fwd, "proto=https") {
			t.Fatalf("over HTTPS the backend saw %+v", h)
		}
	})
	t.Run("trusted proxy", func(t *testing.T) {
		g := httpGateway(t, gatewayOptions{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
		startHTTPAgent(t, g, "fwd", backend)
		if code, _ := rawHTTP(t, g.HTTPAddr, spoof); code != 200 {
			t.Fatalf("status %d", code)
		}
		h := <-headers
		if h.xff != "203.0.113.9, 127.0.0.1" || h.xfp != "https" || !strings.HasPrefix(h.fwd, "for=203.0.113.9, ") {
			t.Fatalf("backend saw %+v, want the proxy's headers kept", h)
		}
	})
}

func TestHTTPSmuggling(t *testing.T) {
	checkLeaks(t)
	// A handler in front of the router (an ACME challenge responder) must
	// not let a request skip the guard's count.
	challenge := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/.well-known/acme-challenge/") {
				fmt.Fprint(w, "token")
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	g := httpGateway(t, gatewayOptions{HTTPChallenge: challenge})
	var requests sync.Map
	backend := startHTTPBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Store(r.URL.Path, true)
		io.Copy(io.Discard, r.Body)
		fmt.Fprint(w, "ok")
	}))
	startHTTPAgent(t, g, "app", backend)
	smuggled := "GET /smuggled HTTP/1.1\r\nHost: app.gw.test\r\n\r\n"
	for _, tc := range []struct {
		name, req string
	}{
		{"content-length and chunked", "POST /a HTTP/1.1\r\nHost: app.gw.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled},
		{"chunked then content-length", "POST /b HTTP/1.1\r\nHost: app.gw.test\r\nTransfer-Encoding: chunked\r\nContent-Length: " + fmt.Sprint(len(smuggled)+5) + "\r\n\r\n0\r\n\r\n" + smuggled},
		{"differing content-lengths", "POST /c HTTP/1.1\r\nHost: app.gw.test\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc" + smuggled},
		{"duplicate content-length", "POST /d HTTP/1.1\r\nHost: app.gw.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"},
		{"bad chunk size", "POST /e HTTP/1.1\r\nHost: app.gw.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"},
		{"chunk size overflow", "POST /f HTTP/1.1\r\nHost: app.gw.test\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n0\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, _ := rawHTTP(t, g.HTTPAddr, tc.req); code != 400 {
				t.Fatalf("status %d, want 400", code)
			}
		})
	}
	t.Run("after a challenge request", func(t *testing.T) {
		codes := rawHTTPAll(t, g.HTTPAddr, "GET /.well-known/acme-challenge/x HTTP/1.1\r\nHost: app.gw.test\r\n\r\n"+
			"POST /h HTTP/1.1\r\nHost: app.gw.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"+smuggled)
		if fmt.Sprint(codes) != "[200 400]" {
			t.Fatalf("statuses %v, want [200 400] and the connection closed", codes)
		}
	})
	// A transfer coding the gateway does not implement is 501, as the
	// HTTP standard asks.
	if code, _ := rawHTTP(t, g.HTTPAddr, "POST /g HTTP/1.1\r\nHost: app.gw.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"+smuggled); code != 501 {
		t.Fatalf("unknown transfer coding: status %d, want 501", code)
	}
	if _, ok := requests.Load("/smuggled"); ok {
		t.Fatal("a smuggled request reached the backend")
	}
	if code, body := rawHTTP(t, g.HTTPAddr, "POST /ok HTTP/1.1\r\nHost: app.gw.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"); code != 200 || body != "ok" {
		t.Fatalf("a well-formed chunked request: %d %q", code, body)
	}
}

func TestHTTPSlowloris(t *testing.T) {
	checkLeaks(t)
	g := httpGateway(t, gatewayOptions{ReadHeaderTimeout: time.Minute})
	startHTTPAgent(t, g, "app", nameBackend(t, "app"))
	const attackers = 2000
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range attackers {
		addr := g.HTTPAddr
		if i%2 == 1 {
			addr = g.HTTPSAddr
		}
		c, err := net.DialTimeout("tcp", addr, promptly)
		if err != nil {
			t.Fatalf("attacker %d: %v", i, err)
		}
		conns = append(conns, c)
		if i%2 == 0 {
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: app.gw.test\r\n")
		} else {
			// Half a TLS handshake.
			c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01})
		}
	}
	// Keep dribbling a header byte now and then while visitors come.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				for i := 0; i < len(conns); i += 2 {
					conns[i].Write([]byte("X"))
				}
			}
		}
	}()
	defer func() {
		close(stop)
		wg.Wait()
	}()
	c := g.httpClient(t)
	c.Timeout = promptly
	for i := range 50 {
		url := "http://app.gw.test/"
		if i%2 == 1 {
			url = "https://app.gw.test/"
		}
		if code, body := get(t, c, url); code != 200 || body != "app" {
			t.Fatalf("visitor %d: %d %q", i, code, body)
		}
	}
}

func TestHTTPGRPCBidiStream(t *testing.T) {
	checkLeaks(t)
	g := httpGateway(t, gatewayOptions{})
	gs := grpc.NewServer()
	reflection.Register(gs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		gs.Serve(ln)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-done
	})
	startHTTPAgent(t, g, "grpc", ln.Addr().String(), func(c *diglett.Config) { c.H2C = true })

	creds := credentials.NewTLS(&tls.Config{RootCAs: g.CA, ServerName: "grpc.gw.test"})
	conn, err := grpc.NewClient("passthrough:///"+g.HTTPSAddr, grpc.WithTransportCredentials(creds), grpc.WithAuthority("grpc.gw.test"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), eventually)
	defer cancel()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Each request is answered before the next is sent: both directions
	// stay open and flow message by message.
	for i := range 5 {
		host := fmt.Sprintf("req-%d", i)
		err := stream.Send(&reflectionpb.ServerReflectionRequest{
			Host:           host,
			MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: "*"},
		})
		if err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("recv %d: %v", i, err)
		}
		names := resp.GetListServicesResponse().GetService()
		if len(names) == 0 || resp.GetOriginalRequest().GetHost() != host {
			t.Fatalf("response %d: %v", i, resp)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("end of stream: %v, want EOF (the status trailer came through)", err)
	}
}
