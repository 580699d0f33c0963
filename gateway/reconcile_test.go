package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/internal/identity"
)

// regLogBuffer is a log sink safe for concurrent writes.
type regLogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *regLogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *regLogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// regRecorder is a registerer that records its calls: "+name:port" for a
// Register, "-name" for a Close. Before each Register it runs hook, if set.
type regRecorder struct {
	mu     sync.Mutex
	events []string
	active map[string]int // routes published, by name
	hook   func(ctx context.Context, r Route) error
}

func (rec *regRecorder) Register(ctx context.Context, r Route) (io.Closer, error) {
	if rec.hook != nil {
		if err := rec.hook(ctx, r); err != nil {
			return nil, err
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.active == nil {
		rec.active = make(map[string]int)
	}
	rec.active[r.Name]++
	rec.events = append(rec.events, fmt.Sprintf("+%s:%d", r.Name, r.Port))
	return regCloseFunc(func() error {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		rec.active[r.Name]--
		rec.events = append(rec.events, "-"+r.Name)
		return nil
	}), nil
}

func (rec *regRecorder) snapshot() ([]string, map[string]int) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	m := make(map[string]int, len(rec.active))
	for k, v := range rec.active {
		m[k] = v
	}
	return append([]string(nil), rec.events...), m
}

type regCloseFunc func() error

func (f regCloseFunc) Close() error { return f() }

// awaitReg polls cond until it holds or d passes.
func awaitReg(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// regGateway is a gateway serving agents over TLS on loopback, with the
// given registerers; logs go to Logs.
type regGateway struct {
	*Server
	Addr, Fingerprint string
	Logs              *regLogBuffer
}

func startRegGateway(t *testing.T, cfg Config) *regGateway {
	t.Helper()
	key, _, err := identity.LoadOrCreateKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := identity.SelfSigned(key)
	if err != nil {
		t.Fatal(err)
	}
	fp, err := identity.Fingerprint(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	logs := &regLogBuffer{}
	cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	cfg.Auth = allowAll
	cfg.PublicHost = "127.0.0.1"
	if cfg.Lease == 0 {
		// A route is kept through its tunnel's lease: these tests see it
		// taken down as soon as the agent leaves.
		cfg.Lease = time.Millisecond
	}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.registerBackoff = [2]time.Duration{20 * time.Millisecond, 200 * time.Millisecond}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return &regGateway{Server: srv, Addr: ln.Addr().String(), Fingerprint: fp, Logs: logs}
}

// listen connects an agent publishing name.
func (g *regGateway) listen(t *testing.T, name string) (net.Listener, time.Duration) {
	t.Helper()
	start := time.Now()
	ln, err := diglett.Listen(context.Background(), diglett.Config{
		Gateway:       g.Addr,
		Transport:     diglett.TransportTCP,
		Connections:   1,
		Name:          name,
		Fingerprint:   g.Fingerprint,
		KnownGateways: filepath.Join(t.TempDir(), "known_gateways"),
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatalf("listen %s: %v", name, err)
	}
	return ln, time.Since(start)
}

// hangingHook is a registerer hook that blocks for 30s or until its context ends.
func hangingHook(called chan<- Route) func(ctx context.Context, r Route) error {
	return func(ctx context.Context, r Route) error {
		select {
		case called <- r:
		default:
		}
		select {
		case <-time.After(30 * time.Second):
			return errors.New("hung for 30s")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// A registerer that hangs for 30s does not hold up the agent's
// registration: Listen returns while Register is still blocked.
func TestHangingRegistererDoesNotDelayRegistration(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	called := make(chan Route, 1)
	g := startRegGateway(t, Config{Registerer: &regRecorder{hook: hangingHook(called)}})
	ln, took := g.listen(t, "slow")
	select {
	case r := <-called:
		if r.Name != "slow" || r.Port == 0 {
			t.Fatalf("registerer got route %+v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("registerer was never called")
	}
	// Register is still blocked (it returns after 30s); Listen returned
	// long before.
	if took > 10*time.Second {
		t.Fatalf("Listen took %v with a hanging registerer", took)
	}
	ln.Close()
	g.Close()
}

// Several registerers at once: one hangs, the others publish the route
// (and take it down when the agent leaves) while it is still hanging.
func TestRegisterersAreIndependent(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	called := make(chan Route, 1)
	a, b := &regRecorder{}, &regRecorder{}
	g := startRegGateway(t, Config{
		Registerer:  &regRecorder{hook: hangingHook(called)},
		Registerers: []Registerer{a, b},
	})
	ln, _ := g.listen(t, "multi")
	select {
	case <-called:
	case <-time.After(10 * time.Second):
		t.Fatal("the hanging registerer was never called")
	}
	for _, rec := range []*regRecorder{a, b} {
		awaitReg(t, 10*time.Second, "the route published by the other registerers", func() bool {
			_, active := rec.snapshot()
			return active["multi"] == 1
		})
	}
	ln.Close()
	for _, rec := range []*regRecorder{a, b} {
		awaitReg(t, 10*time.Second, "the route taken down by the other registerers", func() bool {
			_, active := rec.snapshot()
			return active["multi"] == 0
		})
	}
	g.Close()
	if ev, _ := a.snapshot(); len(ev) != 2 || !strings.HasPrefix(ev[0], "+multi:") || ev[1] != "-multi" {
		t.Fatalf("registerer saw %q, want one register and one unregister", ev)
	}
}

// A registerer that fails twice is retried, each failure logged at Warn
// with the registerer, the tunnel and the attempt, and the route is then
// published.
func TestFailingRegistererIsRetried(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	var mu sync.Mutex
	calls := 0
	rec := &regRecorder{hook: func(ctx context.Context, r Route) error {
		mu.Lock()
		defer mu.Unlock()
		if calls++; calls <= 2 {
			return fmt.Errorf("proxy down (call %d)", calls)
		}
		return nil
	}}
	g := startRegGateway(t, Config{Registerer: rec})
	ln, _ := g.listen(t, "flaky")
	awaitReg(t, 10*time.Second, "the route published after two failures", func() bool {
		_, active := rec.snapshot()
		return active["flaky"] == 1
	})
	logs := g.Logs.String()
	for i := 1; i <= 2; i++ {
		want := fmt.Sprintf(`level=WARN msg="registerer failed" tunnel=flaky registerer=*gateway.regRecorder op=register attempt=%d`, i)
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
		if !strings.Contains(logs, fmt.Sprintf(`err="proxy down (call %d)"`, i)) {
			t.Errorf("log lacks failure %d's error:\n%s", i, logs)
		}
	}
	if strings.Contains(logs, "attempt=3") {
		t.Errorf("a third failure was logged:\n%s", logs)
	}
	ln.Close()
	g.Close()
	if _, active := rec.snapshot(); active["flaky"] != 0 {
		t.Fatal("route still published after the gateway closed")
	}
}

// Close waits for the registerers to take down the routes of the tunnels
// it removes: an operator sees every unregister on shutdown.
func TestCloseUnregisters(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	rec := &regRecorder{}
	g := startRegGateway(t, Config{Registerer: rec})
	ln, _ := g.listen(t, "bye")
	defer ln.Close()
	awaitReg(t, 10*time.Second, "the route published", func() bool {
		_, active := rec.snapshot()
		return active["bye"] == 1
	})
	g.Close()
	if ev, active := rec.snapshot(); active["bye"] != 0 || ev[len(ev)-1] != "-bye" {
		t.Fatalf("after Close the registerer saw %q", ev)
	}
}

// A tunnel that flaps (join, leave, join, ...) while its registerer is
// slow converges on its latest state, with Register and Close never
// overlapping for the tunnel, and a route published after its tunnel went
// away closed at once.
func TestFlappingTunnelConverges(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	var inFlight, overlaps sync.Map
	rec := &regRecorder{}
	slow := RegistererFunc(func(ctx context.Context, r Route) (io.Closer, error) {
		if _, busy := inFlight.LoadOrStore(r.Name, true); busy {
			overlaps.Store(r.Name, true)
		}
		defer inFlight.Delete(r.Name)
		time.Sleep(5 * time.Millisecond) // a slow proxy
		c, err := rec.Register(ctx, r)
		if err != nil {
			return nil, err
		}
		return regCloseFunc(func() error {
			if _, busy := inFlight.LoadOrStore(r.Name, true); busy {
				overlaps.Store(r.Name, true)
			}
			defer inFlight.Delete(r.Name)
			return c.Close()
		}), nil
	})
	srv, err := New(Config{
		TLS:        &tls.Config{Certificates: []tls.Certificate{{}}},
		Auth:       allowAll,
		Registerer: slow,
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	tn := &tunnel{reg: srv.reg, name: "flap", identity: "alice", port: 30001, log: srv.log}
	member := []*session{{}}
	// The tunnel is made and removed (its lease ending), over and over.
	set := func(live bool) {
		srv.reg.mu.Lock()
		if live {
			tn.members.Store(&member)
		} else {
			tn.members.Store(&[]*session{})
		}
		tn.removed = !live
		srv.reg.mu.Unlock()
		tn.reconcile()
	}
	for i := 0; i < 200; i++ {
		set(i%2 == 0) // join, leave, join, ...
		if i%7 == 0 {
			time.Sleep(3 * time.Millisecond) // let some calls complete
		}
	}
	// The last change was a leave: nothing stays published.
	awaitReg(t, 10*time.Second, "the route taken down", func() bool { return srv.regs.wait(0) })
	ev, active := rec.snapshot()
	if active["flap"] != 0 {
		t.Fatalf("route still published after the tunnel left: %q", ev)
	}
	set(true)
	awaitReg(t, 10*time.Second, "the route published again", func() bool { return srv.regs.wait(0) })
	if ev, active = rec.snapshot(); active["flap"] != 1 || ev[len(ev)-1] != "+flap:30001" {
		t.Fatalf("route not published once after the tunnel came back: %q", ev)
	}
	for i := 0; i+1 < len(ev); i++ {
		if ev[i][0] == ev[i+1][0] {
			t.Fatalf("registerer calls out of order at %d: %q", i, ev)
		}
	}
	if _, bad := overlaps.Load("flap"); bad {
		t.Fatal("Register and Close overlapped for one tunnel")
	}
	set(false)
	srv.Close()
	if _, active = rec.snapshot(); active["flap"] != 0 {
		t.Fatal("route still published after Close")
	}
}

// hangingRoute is a route whose first unregistering hangs until its
// context ends; the later ones succeed.
type hangingRoute struct {
	calls  atomic.Int32
	closed chan struct{}
}

func (h *hangingRoute) Close() error { panic("Close called on a ContextCloser") }

func (h *hangingRoute) CloseContext(ctx context.Context) error {
	if h.calls.Add(1) == 1 {
		<-ctx.Done()
		return ctx.Err()
	}
	close(h.closed)
	return nil
}

// A route whose unregistering hangs is cut off at the register timeout,
// logged and retried, instead of holding its worker for ever.
func TestHangingUnregisterIsBounded(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	route := &hangingRoute{closed: make(chan struct{})}
	registered := make(chan struct{}, 1)
	rg := RegistererFunc(func(context.Context, Route) (io.Closer, error) {
		select {
		case registered <- struct{}{}:
		default:
		}
		return route, nil
	})
	g := startRegGateway(t, Config{Registerer: rg, RegisterTimeout: 200 * time.Millisecond})
	ln, _ := g.listen(t, "stuck")
	// Registering is off the agent's path: a tunnel gone before its
	// route was made has no route to take down.
	select {
	case <-registered:
	case <-time.After(10 * time.Second):
		t.Fatal("the route was never registered")
	}
	ln.Close() // the tunnel goes away: its route is taken down
	select {
	case <-route.closed:
	case <-time.After(10 * time.Second):
		t.Fatalf("the route was never taken down; CloseContext called %d times", route.calls.Load())
	}
	if n := route.calls.Load(); n != 2 {
		t.Errorf("CloseContext called %d times, want 2 (one cut off, one retry)", n)
	}
	if !strings.Contains(g.Logs.String(), "op=unregister") || !strings.Contains(g.Logs.String(), "context deadline exceeded") {
		t.Errorf("the cut-off unregistering was not logged:\n%s", g.Logs.String())
	}
	g.Close()
}

// A tunnel whose agent went offline keeps its route through its lease,
// and loses it when the lease ends.
func TestRouteKeptThroughLease(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	rec := &regRecorder{}
	g := startRegGateway(t, Config{Registerer: rec, Lease: time.Second})
	ln, _ := g.listen(t, "kept")
	awaitReg(t, 10*time.Second, "the route published", func() bool {
		_, active := rec.snapshot()
		return active["kept"] == 1
	})
	left := time.Now()
	ln.Close()
	awaitReg(t, 10*time.Second, "the route taken down at the lease's end", func() bool {
		_, active := rec.snapshot()
		return active["kept"] == 0
	})
	if d := time.Since(left); d < time.Second {
		t.Errorf("the route was taken down %v after the agent left, before its 1s lease ended", d)
	}
	g.Close()
}

// A registerer that sweeps gets no Register before its Sweep succeeded;
// a Sweep that fails is retried.
type sweepingRecorder struct {
	regRecorder
	sweeps atomic.Int32
	failN  int32
}

func (s *sweepingRecorder) Sweep(context.Context) error {
	if n := s.sweeps.Add(1); n <= s.failN {
		return fmt.Errorf("sweep %d: proxy down", n)
	}
	return nil
}

func (s *sweepingRecorder) Register(ctx context.Context, r Route) (io.Closer, error) {
	if s.sweeps.Load() <= s.failN {
		return nil, errors.New("registered before the sweep succeeded")
	}
	return s.regRecorder.Register(ctx, r)
}

func TestSweepBeforeRegister(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	rec := &sweepingRecorder{failN: 2}
	g := startRegGateway(t, Config{Registerer: rec})
	ln, _ := g.listen(t, "swept")
	defer ln.Close()
	awaitReg(t, 10*time.Second, "the route published after the sweep", func() bool {
		_, active := rec.snapshot()
		return active["swept"] == 1
	})
	if n := rec.sweeps.Load(); n != 3 {
		t.Errorf("Sweep called %d times, want 3 (two failures, then success)", n)
	}
	if strings.Contains(g.Logs.String(), "registered before the sweep") {
		t.Errorf("Register called before the sweep succeeded:\n%s", g.Logs.String())
	}
	if !strings.Contains(g.Logs.String(), "could not sweep") {
		t.Errorf("the failed sweeps were not logged:\n%s", g.Logs.String())
	}
	g.Close()
}

// A route carries the tunnel's hosts; when they change (SetHosts after a
// reload), the old route is taken down and the new one published.
func TestRouteFollowsHosts(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	var mu sync.Mutex
	var events []string
	rg := RegistererFunc(func(_ context.Context, r Route) (io.Closer, error) {
		mu.Lock()
		defer mu.Unlock()
		events = append(events, "+"+strings.Join(r.Hosts, ","))
		return regCloseFunc(func() error {
			mu.Lock()
			defer mu.Unlock()
			events = append(events, "-"+strings.Join(r.Hosts, ","))
			return nil
		}), nil
	})
	seen := func() string {
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(events, " ")
	}
	g := startRegGateway(t, Config{Registerer: rg, Domain: "gw.test", Hosts: Hosts{"www.example.org": "web"}})
	ln, _ := g.listen(t, "web")
	defer ln.Close()
	awaitReg(t, 10*time.Second, "the route published", func() bool { return seen() == "+web.gw.test,www.example.org" })
	if err := g.SetHosts(Hosts{"a.example.org": "web", "b.example.org": "web"}); err != nil {
		t.Fatal(err)
	}
	want := "+web.gw.test,www.example.org -web.gw.test,www.example.org +web.gw.test,a.example.org,b.example.org"
	awaitReg(t, 10*time.Second, "the route published with the new hosts", func() bool { return seen() == want })
	g.Close()
}
