package ingress

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/testutil"
)

// fakeGateway is a Gateway of in-memory tunnels whose members answer
// over pipes: the contract of the interface, without a gateway.
type fakeGateway struct {
	tunnels map[string]*fakeTunnel
}

func (g *fakeGateway) Domain() string { return "gw.test" }
func (g *fakeGateway) Route(host string) (string, string, error) {
	return gateway.SplitHost(g.Domain(), host)
}
func (g *fakeGateway) Tunnel(name string) (gateway.HTTPTunnel, bool) {
	t, ok := g.tunnels[name]
	if !ok {
		return nil, false
	}
	return t, true
}
func (g *fakeGateway) LimitVisitors(ln net.Listener) net.Listener { return ln }
func (g *fakeGateway) AgentTLS(tc *tls.Config) *tls.Config        { return tc }
func (g *fakeGateway) ServeAgentTLS(c *tls.Conn)                  { c.Close() }

var _ Gateway = (*fakeGateway)(nil)

type fakeTunnel struct {
	name    string
	members []gateway.Member
	held    atomic.Int64
}

func (t *fakeTunnel) Name() string                   { return t.name }
func (t *fakeTunnel) Visitors() gateway.VisitorRules { return openRules{} }
func (t *fakeTunnel) Members() []gateway.Member      { return t.members }
func (t *fakeTunnel) Admit(net.Addr) (func(), bool) {
	t.held.Add(1)
	return func() { t.held.Add(-1) }, true
}

type openRules struct{}

func (openRules) Allows(netip.Addr) bool            { return true }
func (openRules) BasicAuth() bool                   { return false }
func (openRules) CheckPassword(string, string) bool { return false }
func (openRules) H2C() bool                         { return false }

// fakeMember answers each stream with status, then (when StatusOK) serves
// HTTP/1.1 requests on it, answering with its id, until the stream
// closes. openErr, if set, fails every open.
type fakeMember struct {
	id      uint64
	status  protocol.Status
	openErr error
	ctx     context.Context
	leave   context.CancelFunc

	opened, closed atomic.Int64 // streams
	wg             sync.WaitGroup
}

func newFakeMember(id uint64, status protocol.Status, openErr error) *fakeMember {
	ctx, cancel := context.WithCancel(context.Background())
	return &fakeMember{id: id, status: status, openErr: openErr, ctx: ctx, leave: cancel}
}

func (m *fakeMember) ID() uint64               { return m.id }
func (m *fakeMember) Serves(string) bool       { return m.ctx.Err() == nil }
func (m *fakeMember) Context() context.Context { return m.ctx }
func (m *fakeMember) OpenStream(ctx context.Context, name, visitor string) (net.Conn, error) {
	if m.openErr != nil {
		return nil, m.openErr
	}
	ours, agent := net.Pipe()
	m.opened.Add(1)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer m.closed.Add(1)
		defer agent.Close()
		if _, err := agent.Write([]byte{byte(m.status)}); err != nil || m.status != protocol.StatusOK {
			return
		}
		br := bufio.NewReader(agent)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			body := strconv.FormatUint(m.id, 10)
			if _, err := fmt.Fprintf(agent, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body); err != nil {
				return
			}
		}
	}()
	return ours, nil
}

func newFakeIngress(t *testing.T, members ...gateway.Member) *Server {
	t.Helper()
	gw := &fakeGateway{tunnels: map[string]*fakeTunnel{"app": {name: "app", members: members}}}
	in := New(gw, Config{Logger: slog.New(slog.DiscardHandler), StatusTimeout: 5 * time.Second})
	t.Cleanup(func() { in.Close() })
	return in
}

func visit(in *Server, host string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Host = host
	r.RemoteAddr = "192.0.2.1:1234"
	w := httptest.NewRecorder()
	in.ServeHTTP(w, r)
	return w
}

// TestStatuses: the answers a visitor gets for each failure the gateway
// interface can report.
func TestStatuses(t *testing.T) {
	t.Parallel()
	ok := newFakeMember(1, protocol.StatusOK, nil)
	defer ok.leave()
	for _, tc := range []struct {
		name    string
		host    string
		members []gateway.Member
		want    int
	}{
		{"unknown host", "nope.gw.test", nil, http.StatusNotFound},
		{"malformed host", "app.gw.test:x", nil, http.StatusBadRequest},
		{"no agent", "app.gw.test", nil, http.StatusServiceUnavailable},
		{"backend refused", "app.gw.test", []gateway.Member{newFakeMember(2, protocol.StatusRefused, nil)}, http.StatusBadGateway},
		{"backend timeout", "app.gw.test", []gateway.Member{newFakeMember(3, protocol.StatusTimeout, nil)}, http.StatusGatewayTimeout},
		{"stream refused", "app.gw.test", []gateway.Member{newFakeMember(4, 0, errors.New("no stream"))}, http.StatusBadGateway},
		{"served", "app.gw.test", []gateway.Member{ok}, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := newFakeIngress(t, tc.members...)
			if w := visit(in, tc.host); w.Code != tc.want {
				t.Errorf("status %d, want %d (%q)", w.Code, tc.want, w.Body.String())
			}
		})
	}
}

// TestRetryOnAnotherMember: a member that cannot open a stream, or whose
// agent cannot reach the backend, is skipped for the next one.
func TestRetryOnAnotherMember(t *testing.T) {
	t.Parallel()
	broken := newFakeMember(1, 0, errors.New("session gone"))
	refusing := newFakeMember(2, protocol.StatusRefused, nil)
	good := newFakeMember(3, protocol.StatusOK, nil)
	defer good.leave()
	in := newFakeIngress(t, broken, refusing, good)
	for i := range 6 {
		if w := visit(in, "app.gw.test"); w.Code != http.StatusOK || w.Body.String() != "3" {
			t.Fatalf("request %d: %d %q, want 200 from member 3", i, w.Code, w.Body.String())
		}
	}
}

// TestMemberLeavingClosesIdleStreams: the streams a member keeps idle
// between requests are closed when its context ends (it drains or its
// session ends), and it is forgotten.
func TestMemberLeavingClosesIdleStreams(t *testing.T) {
	t.Parallel()
	m := newFakeMember(7, protocol.StatusOK, nil)
	in := newFakeIngress(t, m)
	for range 3 {
		if w := visit(in, "app.gw.test"); w.Code != http.StatusOK {
			t.Fatalf("status %d", w.Code)
		}
	}
	if n := m.opened.Load(); n != 1 {
		t.Errorf("%d streams opened for 3 requests one after the other, want 1 kept idle", n)
	}
	if m.closed.Load() != 0 {
		t.Fatal("the idle stream closed before the member left")
	}
	m.leave()
	err := testutil.Poll(10*time.Second, func() error {
		if n := m.closed.Load(); n != m.opened.Load() {
			return fmt.Errorf("%d of %d streams closed", n, m.opened.Load())
		}
		if _, ok := in.members.Load(m.id); ok {
			return errors.New("member still known")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	m.wg.Wait()
}
