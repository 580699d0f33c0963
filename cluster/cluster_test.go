package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/testutil/etcdtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	testTTL     = 2 * time.Second
	testTimeout = 2 * time.Second
	// margin is what a test allows past the TTL for the lease to be
	// found expired and the watch to tell.
	margin = 3 * time.Second
)

// join makes a member of the cluster at endpoints for t, closed when t
// ends, logging into log.
func join(t *testing.T, endpoints []string, id string, log *testutil.Buffer, tune ...func(*Options)) *Member {
	t.Helper()
	m, err := tryJoin(endpoints, id, log, tune...)
	if err != nil {
		t.Fatalf("join %s: %v", id, err)
	}
	t.Cleanup(func() { m.Close(context.Background()) })
	return m
}

func tryJoin(endpoints []string, id string, log *testutil.Buffer, tune ...func(*Options)) (*Member, error) {
	o := Options{
		Endpoints: endpoints,
		Prefix:    "/test/",
		Node:      id,
		Advertise: "127.0.0.1:2" + fmt.Sprint(len(id)),
		Cert:      []byte("cert of " + id),
		TTL:       testTTL,
		Timeout:   testTimeout,
		Logger:    slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, f := range tune {
		f(&o)
	}
	return Join(context.Background(), o)
}

// logs returns a buffer the members log into, shown when t fails.
func logs(t *testing.T) *testutil.Buffer {
	b := &testutil.Buffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("member logs:\n%s", b.String())
		}
	})
	return b
}

// abandon stops m as a killed process would: the client gone first (no
// revoke, no resign), so its lease expires on its own.
func (m *Member) abandon() {
	m.closed.Store(true)
	m.cli.Close()
	m.cancel()
	m.wg.Wait()
}

func ids(nodes []Node) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.ID)
	}
	return out
}

// waitNodes waits until every member in ms sees exactly want.
func waitNodes(t *testing.T, timeout time.Duration, want []string, ms ...*Member) time.Duration {
	t.Helper()
	start := time.Now()
	err := testutil.Poll(timeout, func() error {
		for _, m := range ms {
			if got := ids(m.Nodes()); !slices.Equal(got, want) {
				return fmt.Errorf("%s sees %v, want %v", m.ID(), got, want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

func TestMembership(t *testing.T) {
	etcd := etcdtest.Start(t)
	eps := []string{etcd.Endpoint}
	log := logs(t)
	a := join(t, eps, "a", log)
	b := join(t, eps, "b", log)
	c := join(t, eps, "c", log)
	waitNodes(t, 5*time.Second, []string{"a", "b", "c"}, a, b, c)
	n := a.Nodes()
	if n[1].Advertise != "127.0.0.1:21" || string(n[1].Cert) != "cert of b" || n[1].Joined.IsZero() {
		t.Fatalf("a sees b as %+v", n[1])
	}
	t.Logf("a, b and c see each other: %v", ids(n))

	_, err := tryJoin(eps, "b", log)
	if err == nil || !strings.Contains(err.Error(), "cluster: node id b is in use by a live node at 127.0.0.1:21") {
		t.Fatalf("second join of b: %v", err)
	}
	t.Logf("a second join of the live id b is refused: %v", err)
	if _, err := tryJoin(eps, "B!", log); err == nil {
		t.Fatal("join with a bad id: no error")
	}

	// Drain, then expect a signal for c's leave.
	select {
	case <-a.Changes():
	default:
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatalf("close c: %v", err)
	}
	took := waitNodes(t, time.Second, []string{"a", "b"}, a, b)
	select {
	case <-a.Changes():
	default:
		t.Fatal("no change signalled for c's leave")
	}
	t.Logf("c closed: a and b saw it leave after %v", took.Round(time.Millisecond))

	b.abandon()
	killed := time.Now()
	waitNodes(t, testTTL+margin, []string{"a"}, a)
	t.Logf("b killed without goodbye: a saw it leave after %v (ttl %v)", time.Since(killed).Round(time.Millisecond), testTTL)
	if !strings.Contains(log.String(), "cluster: node left") {
		t.Fatal("no log of a node leaving")
	}

	b2 := join(t, eps, "b", log)
	waitNodes(t, 5*time.Second, []string{"a", "b"}, a, b2)
	t.Log("b joins again once its lease has expired")
}

func TestHoldRace(t *testing.T) {
	etcd := etcdtest.Start(t)
	eps := []string{etcd.Endpoint}
	log := logs(t)
	a := join(t, eps, "a", log)
	b := join(t, eps, "b", log)
	ctx := context.Background()
	wins := map[string]int{}
	for round := range 100 {
		name := fmt.Sprintf("race-%d", round)
		start := make(chan struct{})
		var wg sync.WaitGroup
		claims := make([]Claim, 2)
		errs := make([]error, 2)
		for i, m := range []*Member{a, b} {
			wg.Go(func() {
				<-start
				claims[i], errs[i] = m.Hold(ctx, name, "identity-"+m.ID(), 0, 20000, 29999)
			})
		}
		close(start)
		wg.Wait()
		won := -1
		for i, err := range errs {
			switch {
			case err == nil && won == -1:
				won = i
			case err == nil:
				t.Fatalf("round %d: both identities hold %s: %+v", round, name, claims)
			case !errors.Is(err, ErrNameTaken):
				t.Fatalf("round %d: %v", round, err)
			case strings.Contains(err.Error(), "identity-"):
				t.Fatalf("round %d: the refusal names the owner: %v", round, err)
			}
		}
		if won == -1 {
			t.Fatalf("round %d: nobody won: %v", round, errs)
		}
		winner := []string{"identity-a", "identity-b"}[won]
		wins[winner]++
		for _, m := range []*Member{a, b} {
			c, ok, err := m.Lookup(ctx, name)
			if err != nil || !ok || c.Identity != winner || c.Port != claims[won].Port {
				t.Fatalf("round %d: %s looks up %+v %v %v, want %s on port %d", round, m.ID(), c, ok, err, winner, claims[won].Port)
			}
		}
	}
	t.Logf("100 rounds of two identities holding one name at once: exactly one won each (%v), the other got ErrNameTaken, both members look up the winner's port", wins)
}

func TestPorts(t *testing.T) {
	etcd := etcdtest.Start(t)
	eps := []string{etcd.Endpoint}
	log := logs(t)
	a := join(t, eps, "a", log)
	b := join(t, eps, "b", log)
	ctx := context.Background()

	c, err := a.Hold(ctx, "one", "x", 30001, 30000, 30100)
	if err != nil || c.Port != 30001 || !slices.Equal(c.Holders, []string{"a"}) {
		t.Fatalf("hold one: %+v %v", c, err)
	}
	if _, err = b.Hold(ctx, "two", "y", 30001, 30000, 30100); !errors.Is(err, ErrPortTaken) {
		t.Fatalf("port of one asked for two: %v", err)
	}
	t.Logf("a port another name holds is refused: %v", err)
	if _, err := b.Hold(ctx, "one", "x", 30002, 30000, 30100); !errors.Is(err, ErrPortTaken) {
		t.Fatalf("another port asked for one: %v", err)
	}
	c, err = b.Hold(ctx, "one", "x", 0, 30000, 30100)
	if err != nil || c.Port != 30001 || !slices.Equal(c.Holders, []string{"a", "b"}) {
		t.Fatalf("hold one through b: %+v %v", c, err)
	}
	t.Log("the same identity gets the name's port through another node; another port is refused")

	var wg sync.WaitGroup
	claims := make([]Claim, 50)
	errs := make([]error, 50)
	start := make(chan struct{})
	for i := range 50 {
		m := []*Member{a, b}[i%2]
		wg.Go(func() {
			<-start
			claims[i], errs[i] = m.Hold(ctx, fmt.Sprintf("many-%d", i), "z", 0, 31000, 31059)
		})
	}
	close(start)
	wg.Wait()
	seen := map[int]bool{}
	for i, err := range errs {
		p := claims[i].Port
		if err != nil || p < 31000 || p > 31059 || seen[p] {
			t.Fatalf("name %d: port %d, %v", i, p, err)
		}
		seen[p] = true
	}
	t.Log("50 names held at once in a 60-port range got 50 distinct ports")
	for i := range 10 {
		if _, err := a.Hold(ctx, fmt.Sprintf("more-%d", i), "z", 0, 31000, 31059); err != nil {
			t.Fatalf("more-%d: %v", i, err)
		}
	}
	if _, err := a.Hold(ctx, "full", "z", 0, 31000, 31059); !errors.Is(err, ErrPortTaken) {
		t.Fatalf("hold in a full range: %v", err)
	} else {
		t.Logf("a full range is refused: %v", err)
	}
	if c, err := a.Hold(ctx, "web", "z", 0, 0, 0); err != nil || c.Port != 0 {
		t.Fatalf("hold with no port: %+v %v", c, err)
	}
}

func TestRelease(t *testing.T) {
	etcd := etcdtest.Start(t)
	eps := []string{etcd.Endpoint}
	log := logs(t)
	a := join(t, eps, "a", log)
	b := join(t, eps, "b", log)
	c := join(t, eps, "c", log)
	ctx := context.Background()

	lookup := func(m *Member, name string) (Claim, bool) {
		t.Helper()
		cl, ok, err := m.Lookup(ctx, name)
		if err != nil {
			t.Fatalf("lookup %s: %v", name, err)
		}
		return cl, ok
	}
	held, err := a.Hold(ctx, "shared", "x", 0, 32000, 32010)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Hold(ctx, "shared", "x", 0, 32000, 32010); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(ctx, "shared"); err != nil {
		t.Fatal(err)
	}
	if cl, ok := lookup(c, "shared"); !ok || !slices.Equal(cl.Holders, []string{"b"}) {
		t.Fatalf("after a's release: %+v %v", cl, ok)
	}
	t.Log("a's release keeps a name b still holds")
	if err := b.Release(ctx, "shared"); err != nil {
		t.Fatal(err)
	}
	if cl, ok := lookup(c, "shared"); ok {
		t.Fatalf("after the last release: %+v", cl)
	}
	if cl, err := c.Hold(ctx, "other", "y", held.Port, 32000, 32010); err != nil || cl.Port != held.Port {
		t.Fatalf("the released port %d: %+v %v", held.Port, cl, err)
	}
	t.Logf("the last release frees the name and its port %d", held.Port)

	// A hold that lands between Release's read and its transaction keeps
	// the name: "no other holder" is a comparison in the transaction.
	if _, err := a.Hold(ctx, "late", "x", 0, 32000, 32010); err != nil {
		t.Fatal(err)
	}
	a.testHookRelease = func(name string) {
		if _, err := b.Hold(ctx, name, "x", 0, 32000, 32010); err != nil {
			t.Errorf("hold in between: %v", err)
		}
	}
	err = a.Release(ctx, "late")
	a.testHookRelease = nil
	if err != nil {
		t.Fatal(err)
	}
	if cl, ok := lookup(c, "late"); !ok || !slices.Equal(cl.Holders, []string{"b"}) {
		t.Fatalf("a hold put between release's read and its transaction: %+v %v", cl, ok)
	}
	t.Log("a hold by b put after a's release read the name, before its transaction, keeps the name")

	if _, err := c.Hold(ctx, "idle", "x", 0, 32000, 32010); err != nil {
		t.Fatal(err)
	}
	// A node's death drops its holds.
	if _, err := a.Hold(ctx, "orphan", "x", 0, 32000, 32010); err != nil {
		t.Fatal(err)
	}
	a.abandon()
	killed := time.Now()
	if err := testutil.Poll(testTTL+margin, func() error {
		if cl, _ := lookup(c, "orphan"); len(cl.Holders) != 0 {
			return fmt.Errorf("holders %v", cl.Holders)
		}
		return nil
	}); err != nil {
		t.Fatalf("a killed: %v", err)
	}
	t.Logf("a killed: its hold went after %v; the name stays claimed", time.Since(killed).Round(time.Millisecond))

	// Unhold keeps the name, with no holder.
	if err := c.Unhold(ctx, "idle"); err != nil {
		t.Fatal(err)
	}
	if cl, ok := lookup(b, "idle"); !ok || len(cl.Holders) != 0 {
		t.Fatalf("after unhold: %+v %v", cl, ok)
	}
	t.Log("c's unhold keeps the name, with no holder")

	const olderThan = time.Second
	released, err := c.Sweep(ctx, olderThan)
	if err != nil || len(released) != 0 {
		t.Fatalf("first sweep: %v %v", released, err)
	}
	first := time.Now()
	var all []string
	if err := testutil.Poll(olderThan+margin, func() error {
		r, err := c.Sweep(ctx, olderThan)
		if err != nil {
			return err
		}
		all = append(all, r...)
		if !slices.Contains(all, "orphan") || !slices.Contains(all, "idle") {
			return fmt.Errorf("released %v", all)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(first); took < olderThan-100*time.Millisecond {
		t.Fatalf("released after %v, before %v", took, olderThan)
	}
	slices.Sort(all)
	if !slices.Equal(all, []string{"idle", "orphan"}) {
		t.Fatalf("sweep released %v, want idle and orphan", all)
	}
	for _, name := range []string{"orphan", "idle"} {
		if _, ok := lookup(c, name); ok {
			t.Fatalf("%s is still claimed", name)
		}
	}
	if _, ok := lookup(c, "late"); !ok {
		t.Fatal("the sweep released a held name")
	}
	t.Logf("sweep released the unheld names after %v (older than %v), kept the held one", time.Since(first).Round(time.Millisecond), olderThan)

	// The sweeper as the leader runs it.
	if err := b.Unhold(ctx, "late"); err != nil {
		t.Fatal(err)
	}
	unheld := time.Now()
	lctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { c.Lead(lctx, "sweeper", c.Sweeper(500*time.Millisecond)) })
	defer func() {
		cancel()
		wg.Wait()
	}()
	if err := testutil.Poll(500*time.Millisecond+margin, func() error {
		if _, ok := lookup(b, "late"); ok {
			return errors.New("late is still claimed")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("the leader's sweeper released a name unheld for 500ms after %v", time.Since(unheld).Round(time.Millisecond))
}

func TestOptionsValidate(t *testing.T) {
	good := Options{Endpoints: []string{"http://127.0.0.1:2379"}, Node: "gw-1", Advertise: "10.0.0.11:20001"}
	for _, tc := range []struct {
		name string
		edit func(*Options)
		want string
	}{
		{"good", func(*Options) {}, ""},
		{"no endpoints", func(o *Options) { o.Endpoints = nil }, "no etcd endpoints"},
		{"no node", func(o *Options) { o.Node = "" }, "node id"},
		{"bad node", func(o *Options) { o.Node = "GW_1" }, "node id"},
		{"long node", func(o *Options) { o.Node = strings.Repeat("a", 64) }, "node id"},
		{"no advertise", func(o *Options) { o.Advertise = "" }, "advertise"},
		{"advertise without port", func(o *Options) { o.Advertise = "10.0.0.11" }, "advertise"},
		{"short ttl", func(o *Options) { o.TTL = time.Second }, "shorter than 2s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := good
			tc.edit(&o)
			err := o.Validate()
			if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestLead(t *testing.T) {
	etcd := etcdtest.Start(t)
	eps := []string{etcd.Endpoint}
	log := logs(t)
	ms := []*Member{join(t, eps, "a", log), join(t, eps, "b", log), join(t, eps, "c", log)}
	ctx, cancel := context.WithCancel(context.Background())

	var mu sync.Mutex
	running := map[string]bool{}
	most := 0
	ended := map[string]int{}
	var wg sync.WaitGroup
	for _, m := range ms {
		wg.Go(func() {
			m.Lead(ctx, "registerers", func(rctx context.Context) {
				mu.Lock()
				running[m.ID()] = true
				most = max(most, len(running))
				mu.Unlock()
				<-rctx.Done()
				mu.Lock()
				delete(running, m.ID())
				ended[m.ID()]++
				mu.Unlock()
			})
		})
	}
	defer func() {
		cancel()
		wg.Wait()
	}()
	leader := func(not ...string) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		if len(running) != 1 {
			return "", fmt.Errorf("%d running", len(running))
		}
		for id := range running {
			if slices.Contains(not, id) {
				return "", fmt.Errorf("still %s", id)
			}
			return id, nil
		}
		return "", nil
	}
	byID := func(id string) *Member { return ms[id[0]-'a'] }

	var first string
	if err := testutil.Poll(5*time.Second, func() (err error) { first, err = leader(); return err }); err != nil {
		t.Fatal(err)
	}
	if got, err := ms[0].Leader(ctx, "registerers"); err != nil || got != first {
		t.Fatalf("Leader = %q %v, want %q", got, err, first)
	}
	t.Logf("%s leads", first)

	byID(first).Close(context.Background())
	closed := time.Now()
	var second string
	if err := testutil.Poll(testTTL+margin, func() (err error) { second, err = leader(first); return err }); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s closed: %s took over after %v", first, second, time.Since(closed).Round(time.Millisecond))

	byID(second).abandon()
	killed := time.Now()
	var third string
	if err := testutil.Poll(testTTL+margin, func() (err error) { third, err = leader(first, second); return err }); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s killed: %s took over after %v (ttl %v)", second, third, time.Since(killed).Round(time.Millisecond), testTTL)

	mu.Lock()
	if most != 1 || ended[first] != 1 || ended[second] != 1 {
		t.Fatalf("at most %d ran at once; runs ended %v", most, ended)
	}
	mu.Unlock()
	t.Log("never more than one run at a time; each lost leader's run saw its ctx end")
}

// TestEtcdDown stops etcd under three members and starts it again on the
// same data and port.
func TestEtcdDown(t *testing.T) {
	etcd := etcdtest.StartCluster(t, 1)
	log := logs(t)
	a := join(t, etcd.Endpoints, "a", log)
	b := join(t, etcd.Endpoints, "b", log)
	c := join(t, etcd.Endpoints, "c", log)
	all := []*Member{a, b, c}
	waitNodes(t, 5*time.Second, []string{"a", "b", "c"}, all...)
	ctx, cancel := context.WithCancel(context.Background())
	if _, err := a.Hold(ctx, "before", "x", 0, 33000, 33010); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	runs, ends := 0, 0
	var wg sync.WaitGroup
	wg.Go(func() {
		a.Lead(ctx, "work", func(rctx context.Context) {
			mu.Lock()
			runs++
			mu.Unlock()
			<-rctx.Done()
			mu.Lock()
			ends++
			mu.Unlock()
		})
	})
	defer func() {
		cancel()
		wg.Wait()
	}()
	counts := func() (int, int) { mu.Lock(); defer mu.Unlock(); return runs, ends }
	if err := testutil.Poll(5*time.Second, func() error {
		if r, _ := counts(); r != 1 {
			return errors.New("a does not lead")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	etcd.Stop(0)
	start := time.Now()
	_, err := b.Hold(context.Background(), "during", "x", 0, 33000, 33010)
	took := time.Since(start)
	if !errors.Is(err, ErrUnavailable) || took > testTimeout+time.Second {
		t.Fatalf("hold with etcd down: %v after %v", err, took)
	}
	t.Logf("etcd down: hold refused after %v: %v", took.Round(time.Millisecond), err)
	if err := testutil.Poll(testTTL+margin, func() error {
		for _, m := range all {
			if m.Healthy() {
				return fmt.Errorf("%s healthy", m.ID())
			}
			if m.session() != nil {
				return fmt.Errorf("%s has a session", m.ID())
			}
		}
		if _, e := counts(); e != 1 {
			return errors.New("the leader's run goes on")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if _, err := a.Hold(context.Background(), "during", "x", 0, 33000, 33010); !errors.Is(err, ErrUnavailable) || time.Since(start) > time.Second {
		t.Fatalf("hold without a session: %v after %v", err, time.Since(start))
	}
	if _, _, err := a.Lookup(context.Background(), "before"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("lookup with etcd down: %v", err)
	}
	t.Log("every member unhealthy, its session lost; the leader's run ended; a hold without a session is refused at once")

	etcd.Restart(t, 0)
	back := time.Now()
	if err := testutil.Poll(testTTL+margin, func() error {
		_, err := b.Hold(context.Background(), "during", "x", 0, 33000, 33010)
		return err
	}); err != nil {
		t.Fatalf("hold after etcd is back: %v", err)
	}
	t.Logf("etcd back: a hold works again after %v", time.Since(back).Round(time.Millisecond))
	waitNodes(t, testTTL+margin, []string{"a", "b", "c"}, all...)
	if err := testutil.Poll(testTTL+margin, func() error {
		for _, m := range all {
			if !m.Healthy() {
				return fmt.Errorf("%s unhealthy", m.ID())
			}
		}
		cl, _, err := c.Lookup(context.Background(), "before")
		if err != nil || !slices.Equal(cl.Holders, []string{"a"}) {
			return fmt.Errorf("before: %+v %v", cl, err)
		}
		if r, _ := counts(); r != 2 {
			return errors.New("a does not lead again")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "cluster: etcd session re-established") {
		t.Fatal("no log of the session's return")
	}
	t.Log("every member lists a, b and c again, is healthy, a holds its name again and leads again, none restarted")
}

// TestEtcdMemberKilled kills one member of a three-member etcd under
// the gateways' members.
func TestEtcdMemberKilled(t *testing.T) {
	etcd := etcdtest.StartCluster(t, 3)
	log := logs(t)
	long := func(o *Options) { o.Timeout = 5 * time.Second }
	a := join(t, etcd.Endpoints, "a", log, long)
	b := join(t, etcd.Endpoints, "b", log, long)
	waitNodes(t, 5*time.Second, []string{"a", "b"}, a, b)
	ctx := context.Background()
	if _, err := a.Hold(ctx, "before", "x", 0, 34000, 34010); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if i > 0 {
			etcd.Restart(t, i-1)
		}
		etcd.Stop(i)
		for j, m := range []*Member{a, b} {
			name := fmt.Sprintf("after-%d-%d", i, j)
			if _, err := m.Hold(ctx, name, "x", 0, 34000, 34010); err != nil {
				t.Fatalf("etcd member %d killed: hold %s through %s: %v", i, name, m.ID(), err)
			}
			if cl, ok, err := m.Lookup(ctx, "before"); err != nil || !ok || cl.Port == 0 {
				t.Fatalf("etcd member %d killed: lookup through %s: %+v %v", i, m.ID(), cl, err)
			}
		}
		id := fmt.Sprintf("late-%d", i)
		late := join(t, etcd.Endpoints, id, log, long)
		waitNodes(t, 5*time.Second, []string{"a", "b", id}, a, b, late)
		late.Close(ctx)
		waitNodes(t, 5*time.Second, []string{"a", "b"}, a, b)
		t.Logf("etcd member %d of 3 killed: holds, lookups, joins and leaves work through both members", i)
	}
	if !a.Healthy() || !b.Healthy() {
		t.Fatal("a member is unhealthy")
	}
}
