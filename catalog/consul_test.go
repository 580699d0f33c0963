package catalog

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/diglett/diglett/internal/testutil"
)

// fakeConsul serves the catalog's node endpoint, GET /v1/catalog/node/NODE,
// with the contract of its blocking queries: a query with index=N (N > 0)
// is held until the catalog's index passes N or its wait (default 5m, at
// most 10m) expires, and every answer carries the index in X-Consul-Index.
// An unknown node is answered null. A restart (a snapshot restored) sets
// the index lower and wakes every held query, as the catalog abandons its
// old state.
type fakeConsul struct {
	srv *httptest.Server

	mu       sync.Mutex
	index    uint64
	epoch    int           // restarts
	changed  chan struct{} // closed and replaced at each change
	nodes    map[string]map[string]*api.AgentService
	fail     int     // the next requests answered 500
	busy     bool    // misbehaves: answers at once, whatever the index
	badIndex *uint64 // answers this index instead of the catalog's
	requests []consulRequest
}

type consulRequest struct {
	at       time.Time
	node     string
	index    uint64 // 0 when not given
	hasIndex bool
	wait     string
	token    string
}

func newFakeConsul(t *testing.T) *fakeConsul {
	f := &fakeConsul{index: 1, changed: make(chan struct{}), nodes: make(map[string]map[string]*api.AgentService)}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

// set replaces the services of node (nil removes the node) and moves the
// index on.
func (f *fakeConsul) set(node string, services ...*api.AgentService) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if services == nil {
		delete(f.nodes, node)
	} else {
		m := make(map[string]*api.AgentService)
		for _, s := range services {
			m[s.ID] = s
		}
		f.nodes[node] = m
	}
	f.index++
	close(f.changed)
	f.changed = make(chan struct{})
}

// restart sets the catalog to index with node's services, and wakes the
// held queries.
func (f *fakeConsul) restart(index uint64, node string, services ...*api.AgentService) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := make(map[string]*api.AgentService)
	for _, s := range services {
		m[s.ID] = s
	}
	f.nodes = map[string]map[string]*api.AgentService{node: m}
	f.index = index
	f.epoch++
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeConsul) serve(w http.ResponseWriter, r *http.Request) {
	node, ok := strings.CutPrefix(r.URL.Path, "/v1/catalog/node/")
	if r.Method != http.MethodGet || !ok || node == "" {
		http.NotFound(w, r)
		return
	}
	q := r.URL.Query()
	req := consulRequest{at: time.Now(), node: node, wait: q.Get("wait"), token: r.Header.Get("X-Consul-Token")}
	if s := q.Get("index"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			http.Error(w, "bad index", http.StatusBadRequest)
			return
		}
		req.index, req.hasIndex = n, true
	}
	wait := 5 * time.Minute
	if req.wait != "" {
		d, err := time.ParseDuration(req.wait)
		if err != nil {
			http.Error(w, "bad wait", http.StatusBadRequest)
			return
		}
		wait = min(d, 10*time.Minute)
	}
	f.mu.Lock()
	f.requests = append(f.requests, req)
	if f.fail > 0 {
		f.fail--
		f.mu.Unlock()
		http.Error(w, "rpc error: no cluster leader", http.StatusInternalServerError)
		return
	}
	epoch := f.epoch
	f.mu.Unlock()

	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		f.mu.Lock()
		if f.busy || req.index == 0 || f.index > req.index || f.epoch != epoch {
			break // still locked
		}
		ch := f.changed
		f.mu.Unlock()
		select {
		case <-ch:
		case <-timer.C:
			f.mu.Lock()
			goto answer
		case <-r.Context().Done():
			return
		}
	}
answer:
	index := f.index
	if f.badIndex != nil {
		index = *f.badIndex
	}
	var body any // null for an unknown node
	if services, ok := f.nodes[node]; ok {
		body = &api.CatalogNode{Node: &api.Node{Node: node, Address: "10.0.0.2"}, Services: services}
	}
	data, err := json.Marshal(body)
	f.mu.Unlock()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Consul-Index", strconv.FormatUint(index, 10))
	w.Header().Set("X-Consul-KnownLeader", "true")
	w.Header().Set("X-Consul-LastContact", "0")
	w.Write(data)
}

// requestsSince is a copy of the requests received since start.
func (f *fakeConsul) requestsSince(start time.Time) []consulRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []consulRequest
	for _, r := range f.requests {
		if !r.at.Before(start) {
			out = append(out, r)
		}
	}
	return out
}

// waitHeld waits until a query with index (> 0) is held: received, and
// not yet answered because the index did not pass it.
func (f *fakeConsul) waitHeld(t *testing.T, index uint64) {
	t.Helper()
	err := testutil.Poll(waitFor, func() error {
		reqs := f.requestsSince(time.Time{})
		if len(reqs) > 0 && reqs[len(reqs)-1].index == index {
			return nil
		}
		return fmt.Errorf("no query waiting on index %d: %+v", index, reqs)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func (f *fakeConsul) currentIndex() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.index
}

func service(id, name string, tags ...string) *api.AgentService {
	return &api.AgentService{ID: id, Service: name, Tags: tags, Port: 1000}
}

func newTestConsul(t *testing.T, f *fakeConsul, o ConsulOptions) (*Consul, *testutil.Buffer) {
	t.Helper()
	log, buf := testLogger()
	o.Address, o.Logger = f.srv.URL, log
	if o.Node == "" {
		o.Node = "home"
	}
	c, err := NewConsul(o)
	if err != nil {
		t.Fatal(err)
	}
	return c, buf
}

func TestConsulFollowsCatalog(t *testing.T) {
	t.Parallel()
	f := newFakeConsul(t)
	f.set("home",
		service("mail-1", "mail", "(diglett (tcp_port 25 587))", "smtp", "(diglett (tcp_port 25) oops", "(diglett (udp_port 0))"),
		service("dns-1", "dns", "(diglett (udp_port 53) (tcp_port 53))"),
		service("web-1", "web", "(othertool (tcp_port 8080))", "proxy.enable=true"),
	)
	f.set("elsewhere", service("ssh", "ssh", "(diglett (tcp_port 22))"))
	const wait = time.Minute // far longer than waitFor: a change seen in time was not a wait that expired
	c, buf := newTestConsul(t, f, ConsulOptions{Token: "s3cret-token", Wait: wait, MinInterval: 50 * time.Millisecond})
	r := run(t, c, buf)
	r.wait(t, tcp(25, "mail"), tcp(53, "dns"), tcp(587, "mail"), udp(53, "dns"))

	// A change is delivered while the query waits on it, well before its
	// wait expires.
	f.waitHeld(t, f.currentIndex())
	f.set("home",
		service("mail-1", "mail", "(diglett (tcp_port 25 587))", "smtp", "(diglett (tcp_port 25) oops", "(diglett (udp_port 0))"),
		service("dns-1", "dns", "(diglett (udp_port 53))"),
		service("web-1", "web", "(diglett (tcp_port 443 80))"),
		service("web-2", "web", "(diglett (tcp_port 443))"),
	)
	start := time.Now()
	n := r.wait(t, tcp(25, "mail"), tcp(80, "web"), tcp(443, "web"), tcp(587, "mail"), udp(53, "dns"))
	took := time.Since(start)

	// A change that asks for no other port answers the query but
	// yields nothing.
	f.waitHeld(t, f.currentIndex())
	f.set("home",
		service("mail-1", "mail", "(diglett (tcp_port 25 587))", "smtp", "(diglett (tcp_port 25) oops", "(diglett (udp_port 0))"),
		service("dns-1", "dns", "(diglett (udp_port 53))"),
		service("web-1", "web", "(diglett (tcp_port 443 80))", "v2"),
		service("web-2", "web", "(diglett (tcp_port 443))"),
		service("metrics", "metrics", "scrape"),
	)
	f.waitHeld(t, f.currentIndex())
	if got := len(r.updates()); got != n {
		t.Errorf("%d sets yielded after a change that asks for no other port; want %d", got, n)
	}
	r.checkDistinct(t)

	reqs := f.requestsSince(time.Time{})
	if reqs[0].hasIndex {
		t.Errorf("first query with index %d; want a read that does not block", reqs[0].index)
	}
	for i, q := range reqs[1:] {
		if !q.hasIndex || q.index < 1 || q.wait != "60000ms" || q.node != "home" || q.token != "s3cret-token" {
			t.Errorf("query %d: %+v; want index >= 1, wait 60000ms, node home, the token", i+1, q)
		}
	}
	logs := buf.String()
	if strings.Contains(logs, "s3cret-token") {
		t.Error("the token is in the log")
	}
	for _, tag := range []string{"oops", "udp_port 0"} {
		c := 0
		for _, l := range buf.Lines() {
			if strings.Contains(l, "tag skipped") && strings.Contains(l, tag) {
				c++
			}
		}
		if c != 1 {
			t.Errorf("malformed tag %q logged %d times over %d answers; want once", tag, c, len(reqs))
		}
	}
	if !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "service=mail") {
		t.Error("a malformed tag was not logged at Warn with its service")
	}
	t.Logf("checked: the node's set (tags of other tools and nodes ignored, malformed tags skipped and logged once at Warn, the service's other tags kept); a change delivered in %v while the query waited %v; a change asking for no other port yields nothing; %d queries with index and wait, the token sent and never logged", took.Round(time.Millisecond), wait, len(reqs))
}

func TestConsulIndexBackwards(t *testing.T) {
	t.Parallel()
	f := newFakeConsul(t)
	for range 20 {
		f.set("home", service("mail", "mail", "(diglett (tcp_port 25))"))
	}
	c, buf := newTestConsul(t, f, ConsulOptions{Wait: time.Minute, MinInterval: 50 * time.Millisecond})
	r := run(t, c, buf)
	r.wait(t, tcp(25, "mail"))
	high := f.currentIndex()
	f.waitHeld(t, high)

	// A snapshot restored: the index goes back to 3 with other services.
	restart := time.Now()
	f.restart(3, "home", service("dns", "dns", "(diglett (udp_port 53))"))
	r.wait(t, udp(53, "dns"))
	// The loop starts again: it never waits on the old index, which the
	// catalog would pass only after 20 more changes.
	f.waitHeld(t, 3)
	f.set("home", service("dns", "dns", "(diglett (udp_port 53))"), service("web", "web", "(diglett (tcp_port 443))"))
	r.wait(t, tcp(443, "web"), udp(53, "dns"))
	var after []uint64
	for _, q := range f.requestsSince(restart) {
		after = append(after, q.index)
		if q.index > 3 && q.index >= high {
			t.Errorf("a query after the index went back waited on %d", q.index)
		}
	}
	if len(after) == 0 || after[0] != 1 {
		t.Errorf("queries after the index went back waited on %v; want the loop started again (index reset to 0, used as 1)", after)
	}
	if !strings.Contains(buf.String(), "index went backwards") {
		t.Error("the index going backwards was not logged")
	}
	r.checkDistinct(t)
	t.Logf("checked: the index went back from %d to 3 (a restored catalog): the new set was read at once, the next queries waited on %v, and a later change was delivered", high, after)
}

func TestConsulRetriesErrors(t *testing.T) {
	t.Parallel()
	f := newFakeConsul(t)
	f.set("home", service("mail", "mail", "(diglett (tcp_port 25))"))
	f.fail = 3
	c, buf := newTestConsul(t, f, ConsulOptions{Wait: time.Minute, MinInterval: 50 * time.Millisecond})
	r := run(t, c, buf)
	r.wait(t, tcp(25, "mail"))
	logs := buf.String()
	if n := strings.Count(logs, "level=WARN msg=\"catalog: consul query failed"); n != 1 {
		t.Errorf("a streak of 3 failures logged %d times at Warn; want once", n)
	}
	if n := strings.Count(logs, "level=DEBUG msg=\"catalog: consul query failed"); n != 2 {
		t.Errorf("the 2 failures after the first logged %d times at Debug; want 2", n)
	}
	if !strings.Contains(logs, "consul query works again") || !strings.Contains(logs, "500") {
		t.Errorf("the recovery or the status is not logged:\n%s", logs)
	}
	if n := len(f.requestsSince(time.Time{})); n < 4 {
		t.Errorf("%d queries; want 3 failed and at least one more", n)
	}
	t.Log("checked: three 500 answers retried with backoff, logged once at Warn then at Debug, then the set and the recovery")
}

func TestConsulUnknownNode(t *testing.T) {
	t.Parallel()
	f := newFakeConsul(t)
	f.set("other", service("mail", "mail", "(diglett (tcp_port 25))"))
	c, buf := newTestConsul(t, f, ConsulOptions{Wait: time.Minute, MinInterval: 50 * time.Millisecond})
	r := run(t, c, buf)
	r.wait(t)
	if !strings.Contains(buf.String(), "node not in the consul catalog") {
		t.Error("an unknown node was not logged")
	}
	f.waitHeld(t, f.currentIndex())
	f.set("home", service("dns", "dns", "(diglett (udp_port 53))"))
	r.wait(t, udp(53, "dns"))
	f.waitHeld(t, f.currentIndex())
	f.set("home", nil...)
	r.wait(t)
	if n := len(r.updates()); n != 3 {
		t.Errorf("%d sets; want 3 (empty, one port, empty)", n)
	}
	t.Log("checked: an unknown node (a null answer) yields the empty set with a warning; the node registered, then removed, is followed")
}

// TestConsulRateLimit runs the source against a catalog that misbehaves:
// it answers every query at once, with an index of 0.
func TestConsulRateLimit(t *testing.T) {
	t.Parallel()
	f := newFakeConsul(t)
	f.set("home", service("mail", "mail", "(diglett (tcp_port 25))"))
	zero := uint64(0)
	f.busy, f.badIndex = true, &zero
	const every = 100 * time.Millisecond
	c, buf := newTestConsul(t, f, ConsulOptions{Wait: time.Minute, MinInterval: every})
	start := time.Now()
	r := run(t, c, buf)
	r.wait(t, tcp(25, "mail"))
	// Let it run a while: the rate limit, not the catalog, paces it.
	if err := testutil.Poll(waitFor, func() error {
		if n := len(f.requestsSince(start)); n < 8 {
			return fmt.Errorf("%d queries", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	reqs := f.requestsSince(start)
	limit := consulBurst + int(elapsed/every) + 2
	if len(reqs) > limit {
		t.Errorf("%d queries in %v against a catalog that answers at once; want at most %d (burst %d, one per %v)", len(reqs), elapsed, limit, consulBurst, every)
	}
	for i, q := range reqs[1:] {
		if q.index != 1 {
			t.Errorf("query %d waited on index %d after answers with index 0; want 1", i+1, q.index)
		}
	}
	if n := len(r.updates()); n != 1 {
		t.Errorf("%d sets yielded by unchanged answers; want 1", n)
	}
	t.Logf("checked: %d queries in %v against a catalog answering at once with index 0 (rate limit: burst %d, one per %v); every query after the first waited on index 1; one set yielded", len(reqs), elapsed.Round(time.Millisecond), consulBurst, every)
}

// TestConsulQuiet checks that while nothing changes the queries are held
// by the catalog, each for its wait: the client does not poll.
func TestConsulQuiet(t *testing.T) {
	t.Parallel()
	f := newFakeConsul(t)
	f.set("home", service("mail", "mail", "(diglett (tcp_port 25))"))
	const wait = 200 * time.Millisecond
	c, buf := newTestConsul(t, f, ConsulOptions{Wait: wait, MinInterval: time.Millisecond})
	start := time.Now()
	r := run(t, c, buf)
	r.wait(t, tcp(25, "mail"))
	if err := testutil.Poll(waitFor, func() error {
		if n := len(f.requestsSince(start)); n < 8 {
			return fmt.Errorf("%d queries", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	reqs := f.requestsSince(start)
	if limit := int(elapsed/wait) + 3; len(reqs) > limit {
		t.Errorf("%d queries in %v while nothing changed, each held %v; want at most %d", len(reqs), elapsed, wait, limit)
	}
	if n := len(r.updates()); n != 1 {
		t.Errorf("%d sets yielded while nothing changed; want 1", n)
	}
	t.Logf("checked: %d queries in %v while nothing changed (wait %v): each held for its wait, one set yielded", len(reqs), elapsed.Round(time.Millisecond), wait)
}

func TestNewConsulErrors(t *testing.T) {
	t.Parallel()
	for name, o := range map[string]ConsulOptions{
		"no node":    {},
		"keyword":    {Node: "n", TagKeyword: "two words"},
		"paren":      {Node: "n", TagKeyword: "a(b"},
		"wait":       {Node: "n", Wait: 11 * time.Minute},
		"negative":   {Node: "n", Wait: -time.Second},
		"interval":   {Node: "n", MinInterval: -time.Second},
		"bad scheme": {Node: "n", Address: "ftp://127.0.0.1:8500"},
		"node slash": {Node: "a/../b"},
	} {
		if _, err := NewConsul(o); err == nil {
			t.Errorf("%s: NewConsul(%+v) = nil error", name, o)
		}
	}
	c, err := NewConsul(ConsulOptions{Node: "n"})
	if err != nil || c.wait != DefaultConsulWait || c.every != DefaultConsulMinInterval || c.keyword != DefaultTagKeyword {
		t.Errorf("defaults: %+v, %v", c, err)
	}
	if got := redactAddress("http://user:pw@127.0.0.1:8500"); strings.Contains(got, "pw") {
		t.Errorf("redactAddress kept the password: %s", got)
	}
	t.Log("checked: options refused (no node, a node with a slash, bad keyword, wait over 10m or negative, bad scheme) and the defaults")
}
