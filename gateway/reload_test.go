package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/tlsmux"
)

// tableAuth is an Authenticator of fixed tables: token -> identity, and
// identity -> names it may publish. fail makes every call fail (neither a
// refusal nor an answer).
type tableAuth struct {
	ids   map[string]string
	names map[string][]string
	fail  bool
}

func (a *tableAuth) Authenticate(_ context.Context, c Credentials) (Identity, error) {
	if a.fail {
		return Identity{}, errors.New("authentication backend down")
	}
	id, ok := a.ids[c.Token]
	if !ok {
		return Identity{}, ErrUnauthorized
	}
	return Identity{Name: id}, nil
}

func (a *tableAuth) Authorize(_ context.Context, id Identity, name string) error {
	if a.fail {
		return errors.New("authorization backend down")
	}
	if slices.Contains(a.names[id.Name], name) {
		return nil
	}
	return fmt.Errorf("%w: %q", ErrForbidden, name)
}

var _ Authenticator = (*tableAuth)(nil)

// reloadServer serves agents on 127.0.0.1 with auth; its logs go to the
// returned buffer.
func reloadServer(t *testing.T, auth Authenticator) (*Server, string, *testutil.Buffer) {
	t.Helper()
	logs := &testutil.Buffer{}
	srv, err := New(Config{
		TLS:        testutil.ServerTLS(t),
		Auth:       auth,
		PublicHost: "127.0.0.1",
		PortMin:    20000,
		PortMax:    32000,
		Logger:     slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		// Refused logins are part of these tests: neither slowed down
		// nor locked out.
		LoginFailureLimit: 1 << 20,
		LoginFailureDelay: time.Nanosecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	return srv, serveLoopback(t, srv), logs
}

// rawAgent is an agent speaking the protocol by hand, to see exactly what
// the gateway sends on the control stream.
type rawAgent struct {
	sess transport.Session
	ctrl transport.Stream
	msgs chan protocol.Message // control messages after registration
}

// rawLogin logs in with token and registers names; it returns the
// gateway's first refusal as an error.
func rawLogin(t *testing.T, addr, token string, names ...string) (*rawAgent, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{protocol.ALPN}, InsecureSkipVerify: true}
	sess, err := tlsmux.Client(ctx, raw, tc, transport.Config{})
	if err != nil {
		return nil, err
	}
	a := &rawAgent{sess: sess}
	fail := func(err error) (*rawAgent, error) {
		sess.Close()
		return nil, err
	}
	if a.ctrl, err = sess.OpenStream(ctx); err != nil {
		return fail(err)
	}
	a.ctrl.SetDeadline(time.Now().Add(10 * time.Second))
	ask := func(m protocol.Message) (protocol.Message, error) {
		if err := protocol.WriteMessage(a.ctrl, m); err != nil {
			return nil, err
		}
		r, err := protocol.ReadMessage(a.ctrl)
		if err != nil {
			return nil, err
		}
		if e, ok := r.(*protocol.Error); ok {
			return nil, fmt.Errorf("%s: %s", e.Code, e.Message)
		}
		return r, nil
	}
	if _, err := ask(&protocol.Hello{Version: protocol.Version}); err != nil {
		return fail(err)
	}
	if _, err := ask(&protocol.Login{Token: token}); err != nil {
		return fail(err)
	}
	for _, n := range names {
		if _, err := ask(&protocol.Register{Name: n}); err != nil {
			return fail(err)
		}
	}
	a.ctrl.SetDeadline(time.Time{})
	a.msgs = make(chan protocol.Message, 8)
	go func() {
		defer close(a.msgs)
		for {
			m, err := protocol.ReadMessage(a.ctrl)
			if err != nil {
				return
			}
			a.msgs <- m
		}
	}()
	t.Cleanup(func() { sess.Close() })
	return a, nil
}

func mustLogin(t *testing.T, addr, token string, names ...string) *rawAgent {
	t.Helper()
	a, err := rawLogin(t, addr, token, names...)
	if err != nil {
		t.Fatalf("login %s: %v", token, err)
	}
	return a
}

// expectRevoked waits for the gateway's Error on a's control stream and
// for the session to end, although the agent does not hang up.
func (a *rawAgent) expectRevoked(t *testing.T, code protocol.Code, msg string) {
	t.Helper()
	select {
	case m, ok := <-a.msgs:
		e, isErr := m.(*protocol.Error)
		if !ok || !isErr {
			t.Fatalf("got %v instead of an error %s", m, code)
		}
		if e.Code != code || e.Message != msg {
			t.Fatalf("got error %s %q, want %s %q", e.Code, e.Message, code, msg)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no error %s sent", code)
	}
	select {
	case <-a.sess.Context().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("revoked session still open")
	}
}

// expectAlive checks that a got nothing on its control stream and that its
// session is open.
func (a *rawAgent) expectAlive(t *testing.T) {
	t.Helper()
	select {
	case m := <-a.msgs:
		t.Fatalf("kept session got %v", m)
	default:
	}
	if err := a.sess.Context().Err(); err != nil {
		t.Fatalf("kept session ended: %v", context.Cause(a.sess.Context()))
	}
}

// members is how many live sessions serve name.
func members(srv *Server, name string) int {
	t := srv.reg.route(name)
	if t == nil {
		return 0
	}
	return len(t.live())
}

func TestSetAuthenticator(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	old := &tableAuth{
		ids:   map[string]string{"secret-a": "alice", "secret-b": "bob", "secret-c": "carol", "secret-c2": "carol"},
		names: map[string][]string{"alice": {"a1"}, "bob": {"b1"}, "carol": {"c1", "c2"}},
	}
	srv, addr, logs := reloadServer(t, old)
	alice := mustLogin(t, addr, "secret-a", "a1")
	bob := mustLogin(t, addr, "secret-b", "b1")
	carol := mustLogin(t, addr, "secret-c", "c1", "c2")
	carol2 := mustLogin(t, addr, "secret-c2", "c1")
	if _, err := rawLogin(t, addr, "secret-d"); err == nil {
		t.Fatal("unknown token let in")
	}

	next := &tableAuth{
		// bob's token is gone, carol may no longer publish c2, and dave
		// is new.
		ids:   map[string]string{"secret-a": "alice", "secret-c": "carol", "secret-c2": "carol", "secret-d": "dave"},
		names: map[string][]string{"alice": {"a1"}, "carol": {"c1"}, "dave": {"d1"}},
	}
	res, err := srv.SetAuthenticator(context.Background(), next)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Recheck{Kept: 2, Closed: 2}); res != want {
		t.Errorf("re-check %+v, want %+v", res, want)
	}
	bob.expectRevoked(t, protocol.CodeUnauthorized, "token revoked by the gateway's operator")
	// A session that loses one of its names is closed whole.
	carol.expectRevoked(t, protocol.CodeForbidden, `name "c2" is no longer allowed for this token`)
	alice.expectAlive(t)
	carol2.expectAlive(t)
	if n := members(srv, "a1"); n != 1 {
		t.Errorf("a1 has %d live sessions, want 1", n)
	}
	if n := members(srv, "c1"); n != 1 {
		t.Errorf("c1 has %d live sessions, want 1 (carol's other one)", n)
	}
	if n := members(srv, "b1"); n != 0 {
		t.Errorf("b1 still has %d live sessions", n)
	}
	// The new token works at once, the old one no longer.
	mustLogin(t, addr, "secret-d", "d1")
	if _, err := rawLogin(t, addr, "secret-b"); err == nil || !strings.Contains(err.Error(), "unauthorized") {
		t.Errorf("revoked token: %v, want refused", err)
	}
	// Carol's other session may no longer register c2.
	if _, err := rawLogin(t, addr, "secret-c2", "c2"); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("c2 after reload: %v, want forbidden", err)
	}
	for _, want := range []string{
		`identity=bob reason="token revoked by the gateway's operator"`,
		`identity=carol reason="name \"c2\" is no longer allowed for this token"`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %s:\n%s", want, logs)
		}
	}
	if strings.Contains(logs.String(), "secret-") {
		t.Errorf("a token was logged:\n%s", logs)
	}
	// A second call with the same rules changes nothing. (The session
	// refused c2 may not have ended yet on the gateway's side.)
	if res, _ := srv.SetAuthenticator(context.Background(), next); res.Kept < 3 || res.Closed != 0 || res.Failed != 0 {
		t.Errorf("second re-check %+v, want 3 kept or more, none closed", res)
	}
	alice.expectAlive(t)
}

// A token that now maps to another identity is revoked: its names belong
// to the identity it had.
func TestSetAuthenticatorIdentityChanged(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	srv, addr, _ := reloadServer(t, &tableAuth{ids: map[string]string{"t": "alice"}, names: map[string][]string{"alice": {"x"}}})
	a := mustLogin(t, addr, "t", "x")
	res, err := srv.SetAuthenticator(context.Background(), &tableAuth{ids: map[string]string{"t": "mallory"}, names: map[string][]string{"mallory": {"x"}}})
	if err != nil || res.Closed != 1 {
		t.Fatalf("re-check %+v %v, want 1 closed", res, err)
	}
	a.expectRevoked(t, protocol.CodeUnauthorized, "token revoked by the gateway's operator (it now belongs to another identity)")
}

// An authenticator that fails (rather than refuses) keeps the sessions.
func TestSetAuthenticatorFailingKeeps(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	srv, addr, logs := reloadServer(t, &tableAuth{ids: map[string]string{"t": "alice"}, names: map[string][]string{"alice": {"x"}}})
	a := mustLogin(t, addr, "t", "x")
	res, err := srv.SetAuthenticator(context.Background(), &tableAuth{fail: true})
	if err != nil || res != (Recheck{Failed: 1}) {
		t.Fatalf("re-check %+v %v, want 1 failed", res, err)
	}
	a.expectAlive(t)
	if !strings.Contains(logs.String(), "agent kept: the new authenticator failed on its token") {
		t.Errorf("no warning logged:\n%s", logs)
	}
	if _, err := srv.SetAuthenticator(context.Background(), nil); err == nil {
		t.Error("nil authenticator accepted")
	}
}

// Logins and registrations racing with reloads: once an authenticator
// that refuses their names is in force, no session serving them survives,
// whatever step of its login or registration it was at during the swaps.
func TestSetAuthenticatorRacesLogins(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	const workers = 4
	all := []string{"n0"}
	for i := range workers {
		all = append(all, fmt.Sprintf("n%d", i+1))
	}
	allow := &tableAuth{ids: map[string]string{"t": "alice"}, names: map[string][]string{"alice": all}}
	onlyN0 := &tableAuth{ids: map[string]string{"t": "alice"}, names: map[string][]string{"alice": {"n0"}}}
	deny := &tableAuth{ids: map[string]string{}, names: map[string][]string{}}
	srv, addr, _ := reloadServer(t, allow)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var logins atomic.Int64
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var held *rawAgent // the latest session, held until the test ends
			for {
				select {
				case <-stop:
					return
				default:
				}
				if a, err := rawLogin(t, addr, "t", fmt.Sprintf("n%d", i+1)); err == nil {
					logins.Add(1)
					if held != nil {
						held.sess.Close()
					}
					held = a
				}
			}
		}()
	}
	ctx := context.Background()
	swaps := 0
	deadline := time.Now().Add(10 * time.Second)
	for logins.Load() < 50 && time.Now().Before(deadline) {
		next := []Authenticator{allow, onlyN0, allow, deny}[swaps%4]
		if _, err := srv.SetAuthenticator(ctx, next); err != nil {
			t.Fatal(err)
		}
		swaps++
	}
	if _, err := srv.SetAuthenticator(ctx, onlyN0); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	t.Logf("%d swaps, %d logins", swaps, logins.Load())
	err := testutil.Poll(10*time.Second, func() error {
		for _, n := range all[1:] {
			if m := members(srv, n); m > 0 {
				return fmt.Errorf("%s still has %d live sessions", n, m)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// gatedAuth is tableAuth whose calls for one token or name wait at a gate:
// entered is closed when the first such call arrives, release lets it go.
type gatedAuth struct {
	tableAuth
	token, name      string
	entered, release chan struct{}
	once             sync.Once
}

func newGatedAuth(a tableAuth, token, name string) *gatedAuth {
	return &gatedAuth{tableAuth: a, token: token, name: name, entered: make(chan struct{}), release: make(chan struct{})}
}

func (g *gatedAuth) wait() {
	g.once.Do(func() { close(g.entered) })
	<-g.release
}

func (g *gatedAuth) Authenticate(ctx context.Context, c Credentials) (Identity, error) {
	if g.token != "" && c.Token == g.token {
		g.wait()
	}
	return g.tableAuth.Authenticate(ctx, c)
}

func (g *gatedAuth) Authorize(ctx context.Context, id Identity, name string) error {
	if g.name != "" && name == g.name {
		g.wait()
	}
	return g.tableAuth.Authorize(ctx, id, name)
}

// A name authorized by the old authenticator while the new one was put in
// force, and registered only after the sessions were re-checked, is asked
// for again of the new one.
func TestSetAuthenticatorDuringRegister(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	old := newGatedAuth(tableAuth{ids: map[string]string{"t": "alice"}, names: map[string][]string{"alice": {"x"}}}, "", "x")
	srv, addr, _ := reloadServer(t, old)
	errc := make(chan error, 1)
	go func() {
		_, err := rawLogin(t, addr, "t", "x")
		errc <- err
	}()
	<-old.entered
	res, err := srv.SetAuthenticator(context.Background(), &tableAuth{ids: map[string]string{"t": "alice"}, names: map[string][]string{"alice": {"y"}}})
	if err != nil || res.Closed != 0 {
		t.Fatalf("re-check %+v %v: want nothing closed yet", res, err)
	}
	close(old.release)
	err = <-errc
	if err == nil || err.Error() != `forbidden: name "x" is no longer allowed for this token` {
		t.Fatalf("register during the swap: %v, want refused", err)
	}
	if n := members(srv, "x"); n != 0 {
		t.Fatalf("x has %d live sessions", n)
	}
}

// A login that the old authenticator is deciding on while the new one is
// put in force is checked again by the new one.
func TestSetAuthenticatorDuringLogin(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	old := newGatedAuth(tableAuth{ids: map[string]string{"t": "alice"}, names: map[string][]string{"alice": {"x"}}}, "t", "")
	srv, addr, _ := reloadServer(t, old)
	type result struct {
		a   *rawAgent
		err error
	}
	login := make(chan result, 1)
	go func() {
		a, err := rawLogin(t, addr, "t", "x")
		login <- result{a, err}
	}()
	<-old.entered
	swapped := make(chan Recheck, 1)
	go func() {
		res, _ := srv.SetAuthenticator(context.Background(), &tableAuth{ids: map[string]string{}, names: map[string][]string{}})
		swapped <- res
	}()
	close(old.release)
	if res := <-swapped; res.Closed != 1 {
		t.Errorf("re-check %+v, want the login in progress closed", res)
	}
	r := <-login
	switch {
	case r.err != nil:
		// Refused during its login or registration: revoked by the
		// re-check, or its name refused by the new authenticator when
		// the registration came after the swap and before the re-check.
		if !strings.Contains(r.err.Error(), "unauthorized: token revoked by the gateway's operator") &&
			!strings.Contains(r.err.Error(), `forbidden: name "x" is not allowed for this identity`) {
			t.Fatalf("login: %v", r.err)
		}
	default:
		r.a.expectRevoked(t, protocol.CodeUnauthorized, "token revoked by the gateway's operator")
	}
}

// A session whose agent leaves while the new authenticator decides on it
// is not counted as kept: it has no names left to judge, and it is gone.
func TestSetAuthenticatorSessionLeaves(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	srv, addr, _ := reloadServer(t, &tableAuth{ids: map[string]string{"t": "alice"}, names: map[string][]string{"alice": {"x"}}})
	a := mustLogin(t, addr, "t", "x")
	next := newGatedAuth(tableAuth{ids: map[string]string{"t": "alice"}, names: map[string][]string{"alice": {}}}, "t", "")
	type result struct {
		res Recheck
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := srv.SetAuthenticator(context.Background(), next)
		done <- result{res, err}
	}()
	<-next.entered
	// The agent leaves while its token is judged: the session leaves
	// its tunnels.
	a.sess.Close()
	if err := testutil.Poll(5*time.Second, func() error {
		if n := members(srv, "x"); n != 0 {
			return fmt.Errorf("x has %d live sessions", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	close(next.release)
	r := <-done
	if r.err != nil || r.res != (Recheck{}) {
		t.Fatalf("re-check %+v %v, want nothing kept, closed or failed", r.res, r.err)
	}
}
