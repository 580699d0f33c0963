package catalog

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/diglett/diglett/internal/testutil/etcdtest"
)

func etcdCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	t.Cleanup(cancel)
	return ctx
}

func etcdPut(t *testing.T, cli *clientv3.Client, kv ...string) int64 {
	t.Helper()
	var rev int64
	for i := 0; i < len(kv); i += 2 {
		resp, err := cli.Put(etcdCtx(t), kv[i], kv[i+1])
		if err != nil {
			t.Fatal(err)
		}
		rev = resp.Header.Revision
	}
	return rev
}

func etcdDel(t *testing.T, cli *clientv3.Client, key string) {
	t.Helper()
	if _, err := cli.Delete(etcdCtx(t), key); err != nil {
		t.Fatal(err)
	}
}

func TestEtcdFollowsKeys(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	const p = "/diglett/ports/home/"
	etcdPut(t, srv.Client,
		p+"mail", "{tcp: [25, 587]}",
		p+"dns", `{"udp": [53], "tcp": [53]}`,
		p+"broken", "{tcp: [99999]}",
		"/diglett/ports/other/ssh", "{tcp: [22]}", // another node's
		"/diglett/portsx/home/ssh", "{tcp: [2222]}", // outside the prefix
	)
	log, buf := testLogger()
	e, err := NewEtcd(EtcdOptions{Endpoints: []string{srv.Endpoint}, Node: "home", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	r := run(t, e, buf)
	r.wait(t, tcp(25, "mail"), tcp(53, "dns"), tcp(587, "mail"), udp(53, "dns"))
	if !strings.Contains(buf.String(), "etcd value skipped") || !strings.Contains(buf.String(), "service=broken") {
		t.Error("a malformed value was not logged")
	}

	etcdPut(t, srv.Client, p+"web", "tcp: [443, 80]\n")
	r.wait(t, tcp(25, "mail"), tcp(53, "dns"), tcp(80, "web"), tcp(443, "web"), tcp(587, "mail"), udp(53, "dns"))
	etcdPut(t, srv.Client, p+"mail", "{tcp: [25]}")
	r.wait(t, tcp(25, "mail"), tcp(53, "dns"), tcp(80, "web"), tcp(443, "web"), udp(53, "dns"))
	etcdDel(t, srv.Client, p+"dns")
	r.wait(t, tcp(25, "mail"), tcp(80, "web"), tcp(443, "web"))
	// A botched edit drops the service's ports; fixed, they are back.
	etcdPut(t, srv.Client, p+"web", "{tcp: [443, 80}")
	r.wait(t, tcp(25, "mail"))
	etcdPut(t, srv.Client, p+"broken", "{tcp: [8443]}", p+"web", "{tcp: [443]}")
	r.wait(t, tcp(25, "mail"), tcp(443, "web"), tcp(8443, "broken"))
	// Another node's key and a key that changes nothing yield nothing.
	n := len(r.updates())
	etcdPut(t, srv.Client, "/diglett/ports/other/ssh", "{tcp: [23]}", p+"mail", "tcp: [25]")
	etcdPut(t, srv.Client, p+"zz-last", "{tcp: [25]}") // the same port, a later service
	r.wait(t, tcp(25, "mail"), tcp(443, "web"), tcp(8443, "broken"))
	if got := len(r.updates()); got != n {
		t.Errorf("%d sets after changes that ask for no other port; want %d", got, n)
	}
	r.checkDistinct(t)
	t.Logf("checked: %d sets followed keys put, updated, deleted, broken (logged, dropped) and fixed under the node's prefix; other nodes' keys and unchanged sets yield nothing", len(r.updates()))
}

func TestEtcdNoNode(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	etcdPut(t, srv.Client, "/ports/mail", "{tcp: [25]}", "/ports/dns", "{udp: [53]}", "/portsx", "{udp: [1]}")
	log, buf := testLogger()
	e, err := NewEtcd(EtcdOptions{Endpoints: []string{srv.Endpoint}, Prefix: "/ports/", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	r := run(t, e, buf)
	r.wait(t, tcp(25, "mail"), udp(53, "dns"))
	etcdDel(t, srv.Client, "/ports/mail")
	r.wait(t, udp(53, "dns"))
	t.Log("checked: without a node the keys are PREFIX + SERVICE")
}

// TestEtcdCompaction compacts the keys' history between the read and the
// watch that follows it: the watch fails, and the source reads again.
func TestEtcdCompaction(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	const p = "/diglett/ports/"
	etcdPut(t, srv.Client, p+"mail", "{tcp: [25]}")
	log, buf := testLogger()
	e, err := NewEtcd(EtcdOptions{Endpoints: []string{srv.Endpoint}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	var loads atomic.Int32
	e.afterLoad = func(rev int64) {
		if loads.Add(1) != 1 {
			return
		}
		// Two changes after the read, then the history up to the last
		// one compacted: a watch from the read's next revision is
		// refused.
		etcdPut(t, srv.Client, p+"dns", "{udp: [53]}")
		last := etcdPut(t, srv.Client, p+"web", "{tcp: [443]}")
		if _, err := srv.Client.Compact(etcdCtx(t), last); err != nil {
			t.Error(err)
		}
	}
	r := run(t, e, buf)
	r.wait(t, tcp(25, "mail"), tcp(443, "web"), udp(53, "dns"))
	if loads.Load() < 2 {
		t.Errorf("%d reads; want a second one after the compaction", loads.Load())
	}
	if !strings.Contains(buf.String(), "past a compaction") {
		t.Error("the compaction was not logged")
	}
	// And the watch from the new read follows changes.
	etcdDel(t, srv.Client, p+"mail")
	r.wait(t, tcp(443, "web"), udp(53, "dns"))
	t.Logf("checked: a compaction between the read and the watch is survived: %d reads, the changes made meanwhile seen, later changes followed", loads.Load())
}

// TestEtcdUnreachable runs the source with no etcd to answer it: it
// retries, logging the streak of failures once, and returns when its
// context ends.
func TestEtcdUnreachable(t *testing.T) {
	t.Parallel()
	log, buf := testLogger()
	// An endpoint where nothing listens.
	e, err := NewEtcd(EtcdOptions{Endpoints: []string{"http://127.0.0.1:1"}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	e.cfg.DialTimeout, e.timeout = 200*time.Millisecond, 200*time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	err = e.Watch(ctx, func([]Port) { t.Error("a set yielded with no etcd") })
	if err != nil {
		t.Fatalf("Watch = %v; want nil when its context ends", err)
	}
	if took := time.Since(start); took > 3*time.Second+waitFor/2 {
		t.Errorf("Watch returned %v after its context ended", took)
	}
	logs := buf.String()
	if n := strings.Count(logs, "level=WARN msg=\"catalog: etcd failed"); n != 1 {
		t.Errorf("failures logged %d times at Warn; want once:\n%s", n, logs)
	}
	if !strings.Contains(logs, "level=DEBUG msg=\"catalog: etcd failed") {
		t.Errorf("later failures not logged at Debug:\n%s", logs)
	}
	t.Log("checked: an unreachable etcd is retried with backoff, logged once at Warn, and Watch returns nil when its context ends")
}

func TestNewEtcdErrors(t *testing.T) {
	t.Parallel()
	for name, o := range map[string]EtcdOptions{
		"no endpoints":   {},
		"empty endpoint": {Endpoints: []string{" "}},
		"node slash":     {Endpoints: []string{"http://127.0.0.1:2379"}, Node: "a/b"},
		"password":       {Endpoints: []string{"http://127.0.0.1:2379"}, Password: "x"},
	} {
		if _, err := NewEtcd(o); err == nil {
			t.Errorf("%s: NewEtcd = nil error", name)
		}
	}
	e, err := NewEtcd(EtcdOptions{Endpoints: []string{"http://127.0.0.1:2379"}, Node: "n"})
	if err != nil || e.prefix != DefaultEtcdPrefix+"n/" {
		t.Errorf("defaults: %+v, %v", e, err)
	}
	t.Log("checked: options refused (no or empty endpoint, a node with a slash, a password alone) and the default prefix")
}
