package catalog

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/testutil/consultest"
)

func service(id, name string, tags ...string) *api.AgentService {
	return &api.AgentService{ID: id, Service: name, Tags: tags, Port: 1000}
}

func newTestConsul(t *testing.T, f *consultest.Server, o ConsulOptions) (*Consul, *testutil.Buffer) {
	t.Helper()
	log, buf := testLogger()
	o.Address, o.Logger = f.URL, log
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
	f := consultest.Start(t)
	f.Set("home",
		service("mail-1", "mail", "(diglett (tcp_port 25 587))", "smtp", "(diglett (tcp_port 25) oops", "(diglett (udp_port 0))"),
		service("dns-1", "dns", "(diglett (udp_port 53) (tcp_port 53))"),
		service("web-1", "web", "(othertool (tcp_port 8080))", "proxy.enable=true"),
	)
	f.Set("elsewhere", service("ssh", "ssh", "(diglett (tcp_port 22))"))
	const wait = time.Minute // far longer than waitFor: a change seen in time was not a wait that expired
	c, buf := newTestConsul(t, f, ConsulOptions{Token: "s3cret-token", Wait: wait, MinInterval: 50 * time.Millisecond})
	r := run(t, c, buf)
	r.wait(t, tcp(25, "mail"), tcp(53, "dns"), tcp(587, "mail"), udp(53, "dns"))

	// A change is delivered while the query waits on it, well before its
	// wait expires.
	f.WaitHeld(t, f.Index())
	f.Set("home",
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
	f.WaitHeld(t, f.Index())
	f.Set("home",
		service("mail-1", "mail", "(diglett (tcp_port 25 587))", "smtp", "(diglett (tcp_port 25) oops", "(diglett (udp_port 0))"),
		service("dns-1", "dns", "(diglett (udp_port 53))"),
		service("web-1", "web", "(diglett (tcp_port 443 80))", "v2"),
		service("web-2", "web", "(diglett (tcp_port 443))"),
		service("metrics", "metrics", "scrape"),
	)
	f.WaitHeld(t, f.Index())
	if got := len(r.updates()); got != n {
		t.Errorf("%d sets yielded after a change that asks for no other port; want %d", got, n)
	}
	r.checkDistinct(t)

	reqs := f.RequestsSince(time.Time{})
	if reqs[0].HasIndex {
		t.Errorf("first query with index %d; want a read that does not block", reqs[0].Index)
	}
	for i, q := range reqs[1:] {
		if !q.HasIndex || q.Index < 1 || q.Wait != "60000ms" || q.Node != "home" || q.Token != "s3cret-token" {
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
	f := consultest.Start(t)
	for range 20 {
		f.Set("home", service("mail", "mail", "(diglett (tcp_port 25))"))
	}
	c, buf := newTestConsul(t, f, ConsulOptions{Wait: time.Minute, MinInterval: 50 * time.Millisecond})
	r := run(t, c, buf)
	r.wait(t, tcp(25, "mail"))
	high := f.Index()
	f.WaitHeld(t, high)

	// A snapshot restored: the index goes back to 3 with other services.
	restart := time.Now()
	f.Restart(3, "home", service("dns", "dns", "(diglett (udp_port 53))"))
	r.wait(t, udp(53, "dns"))
	// The loop starts again: it never waits on the old index, which the
	// catalog would pass only after 20 more changes.
	f.WaitHeld(t, 3)
	f.Set("home", service("dns", "dns", "(diglett (udp_port 53))"), service("web", "web", "(diglett (tcp_port 443))"))
	r.wait(t, tcp(443, "web"), udp(53, "dns"))
	var after []uint64
	for _, q := range f.RequestsSince(restart) {
		after = append(after, q.Index)
		if q.Index > 3 && q.Index >= high {
			t.Errorf("a query after the index went back waited on %d", q.Index)
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
	f := consultest.Start(t)
	f.Set("home", service("mail", "mail", "(diglett (tcp_port 25))"))
	f.Fail(3)
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
	if n := len(f.RequestsSince(time.Time{})); n < 4 {
		t.Errorf("%d queries; want 3 failed and at least one more", n)
	}
	t.Log("checked: three 500 answers retried with backoff, logged once at Warn then at Debug, then the set and the recovery")
}

func TestConsulUnknownNode(t *testing.T) {
	t.Parallel()
	f := consultest.Start(t)
	f.Set("other", service("mail", "mail", "(diglett (tcp_port 25))"))
	c, buf := newTestConsul(t, f, ConsulOptions{Wait: time.Minute, MinInterval: 50 * time.Millisecond})
	r := run(t, c, buf)
	r.wait(t)
	if !strings.Contains(buf.String(), "node not in the consul catalog") {
		t.Error("an unknown node was not logged")
	}
	f.WaitHeld(t, f.Index())
	f.Set("home", service("dns", "dns", "(diglett (udp_port 53))"))
	r.wait(t, udp(53, "dns"))
	f.WaitHeld(t, f.Index())
	f.Set("home", nil...)
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
	f := consultest.Start(t)
	f.Set("home", service("mail", "mail", "(diglett (tcp_port 25))"))
	f.Misbehave(0)
	const every = 100 * time.Millisecond
	c, buf := newTestConsul(t, f, ConsulOptions{Wait: time.Minute, MinInterval: every})
	start := time.Now()
	r := run(t, c, buf)
	r.wait(t, tcp(25, "mail"))
	// Let it run a while: the rate limit, not the catalog, paces it.
	if err := testutil.Poll(waitFor, func() error {
		if n := len(f.RequestsSince(start)); n < 8 {
			return fmt.Errorf("%d queries", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	reqs := f.RequestsSince(start)
	limit := consulBurst + int(elapsed/every) + 2
	if len(reqs) > limit {
		t.Errorf("%d queries in %v against a catalog that answers at once; want at most %d (burst %d, one per %v)", len(reqs), elapsed, limit, consulBurst, every)
	}
	for i, q := range reqs[1:] {
		if q.Index != 1 {
			t.Errorf("query %d waited on index %d after answers with index 0; want 1", i+1, q.Index)
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
	f := consultest.Start(t)
	f.Set("home", service("mail", "mail", "(diglett (tcp_port 25))"))
	const wait = 200 * time.Millisecond
	c, buf := newTestConsul(t, f, ConsulOptions{Wait: wait, MinInterval: time.Millisecond})
	start := time.Now()
	r := run(t, c, buf)
	r.wait(t, tcp(25, "mail"))
	if err := testutil.Poll(waitFor, func() error {
		if n := len(f.RequestsSince(start)); n < 8 {
			return fmt.Errorf("%d queries", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	reqs := f.RequestsSince(start)
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
