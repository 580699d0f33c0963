package certstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/diglett/diglett/internal/testutil/etcdtest"
)

// leakWait bounds the wait for goroutines to end after the tests: an etcd
// client's goroutines end shortly after its Close.
const leakWait = 10 * time.Second

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		deadline := time.Now().Add(leakWait)
		for {
			err := goleak.Find()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "goroutines left after the tests: %v\n", err)
				code = 1
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	os.Exit(code)
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// newClient returns another client of the etcd at endpoint (another
// node), closed when the test ends.
func newClient(t *testing.T, endpoint string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// newStorage returns a Storage on c with o, closed when the test ends.
func newStorage(t *testing.T, c *clientv3.Client, o Options) *Storage {
	t.Helper()
	if o.Logger == nil {
		o.Logger = testLogger(t)
	}
	s, err := New(c, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// step is one call made on both storages, and its outcome as outcome
// renders it.
type step struct {
	op    string // store, load, delete, exists, list, listr (recursive), stat
	key   string
	value string // for store
	want  string
}

// outcome runs st on s and renders what it returned: "ok", "notexist" for
// errors matching fs.ErrNotExist, "error" for other errors, a loaded
// value, a yes/no, a comma-separated sorted list, or "file SIZE"/"dir".
func outcome(ctx context.Context, t *testing.T, s certmagic.Storage, st step) string {
	t.Helper()
	errStr := func(err error) string {
		switch {
		case err == nil:
			return "ok"
		case errors.Is(err, fs.ErrNotExist):
			return "notexist"
		}
		return "error"
	}
	switch st.op {
	case "store":
		return errStr(s.Store(ctx, st.key, []byte(st.value)))
	case "load":
		v, err := s.Load(ctx, st.key)
		if err != nil {
			return errStr(err)
		}
		return "=" + string(v)
	case "delete":
		return errStr(s.Delete(ctx, st.key))
	case "exists":
		return strconv.FormatBool(s.Exists(ctx, st.key))
	case "list", "listr":
		keys, err := s.List(ctx, st.key, st.op == "listr")
		if err != nil {
			return errStr(err)
		}
		slices.Sort(keys)
		return "[" + strings.Join(keys, ",") + "]"
	case "stat":
		info, err := s.Stat(ctx, st.key)
		if err != nil {
			return errStr(err)
		}
		if info.Key != st.key {
			t.Errorf("%T: stat %s: key %q", s, st.key, info.Key)
		}
		if !info.IsTerminal {
			return "dir"
		}
		if age := time.Since(info.Modified); age < -time.Second || age > time.Minute {
			t.Errorf("%T: stat %s: modified %v, %v ago", s, st.key, info.Modified, age)
		}
		return "file " + strconv.FormatInt(info.Size, 10)
	}
	t.Fatalf("unknown op %q", st.op)
	return ""
}

// TestConformance runs one sequence of calls on the etcd storage and on
// certmagic's FileStorage in a temporary directory: both must give the
// outcomes the table expects.
func TestConformance(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	etcd := newStorage(t, srv.Client, Options{})
	file := &certmagic.FileStorage{Path: t.TempDir()}

	const (
		acct  = "acme/ca/users/me/me.key"
		meta  = "acme/ca/users/me/me.json"
		crtA  = "certificates/ca/a.test/a.test.crt"
		keyA  = "certificates/ca/a.test/a.test.key"
		crtB  = "certificates/ca/b.test/b.test.crt"
		ocspB = "ocsp/b.test-1234"
	)
	steps := []step{
		{op: "load", key: acct, want: "notexist"},
		{op: "exists", key: "acme", want: "false"},
		{op: "list", key: "acme", want: "notexist"},
		{op: "listr", key: "acme", want: "notexist"},
		{op: "stat", key: "acme", want: "notexist"},
		{op: "delete", key: "acme/ca", want: "ok"}, // missing: not an error

		{op: "store", key: acct, value: "account key", want: "ok"},
		{op: "store", key: meta, value: "{}", want: "ok"},
		{op: "store", key: crtA, value: "cert A", want: "ok"},
		{op: "store", key: keyA, value: "key A", want: "ok"},
		{op: "store", key: crtB, value: "cert B", want: "ok"},
		{op: "store", key: ocspB, value: "staple", want: "ok"},
		{op: "load", key: crtA, want: "=cert A"},
		{op: "store", key: crtA, value: "cert A renewed", want: "ok"},
		{op: "load", key: crtA, want: "=cert A renewed"},
		{op: "store", key: "empty", value: "", want: "ok"},
		{op: "load", key: "empty", want: "="},
		{op: "stat", key: "empty", want: "file 0"},

		{op: "exists", key: "certificates", want: "true"},
		{op: "exists", key: "certificates/ca", want: "true"},
		{op: "exists", key: crtA, want: "true"},
		{op: "exists", key: "certificates/c", want: "false"}, // a prefix, not a path element
		{op: "exists", key: "certificates/ca/a.tes", want: "false"},
		{op: "stat", key: crtA, want: "file 14"},
		{op: "stat", key: "certificates/ca", want: "dir"},
		{op: "stat", key: "acme/ca/users/me", want: "dir"},
		{op: "stat", key: "certificates/c", want: "notexist"},
		{op: "load", key: "certificates/ca", want: "error"}, // a directory
		{op: "load", key: "certificates/c", want: "notexist"},

		{op: "list", key: "certificates/ca", want: "[certificates/ca/a.test,certificates/ca/b.test]"},
		{op: "list", key: "certificates/ca/a.test", want: "[" + crtA + "," + keyA + "]"},
		{op: "list", key: "acme/ca/users", want: "[acme/ca/users/me]"},
		{op: "listr", key: "certificates", want: "[certificates/ca,certificates/ca/a.test," + crtA + "," + keyA + ",certificates/ca/b.test," + crtB + "]"},
		{op: "listr", key: "acme/ca", want: "[acme/ca/users,acme/ca/users/me," + meta + "," + acct + "]"},
		{op: "list", key: "ocsp", want: "[" + ocspB + "]"},
		{op: "list", key: crtA, want: "[]"}, // a file lists nothing
		{op: "list", key: "certificates/c", want: "notexist"},

		{op: "store", key: "certificates/ca", value: "x", want: "error"},      // a directory
		{op: "store", key: crtA + "/under", value: "x", want: "error"},        // a file in the path
		{op: "store", key: "ocsp/b.test-1234/a/b", value: "x", want: "error"}, // a file further up
		{op: "load", key: crtA, want: "=cert A renewed"},

		{op: "delete", key: keyA, want: "ok"},
		{op: "exists", key: keyA, want: "false"},
		{op: "load", key: keyA, want: "notexist"},
		{op: "list", key: "certificates/ca/a.test", want: "[" + crtA + "]"},
		{op: "delete", key: keyA, want: "ok"}, // again
		{op: "delete", key: "certificates/ca/b.test", want: "ok"},
		{op: "exists", key: "certificates/ca/b.test", want: "false"},
		{op: "load", key: crtB, want: "notexist"},
		{op: "list", key: "certificates/ca", want: "[certificates/ca/a.test]"},
		{op: "delete", key: "certificates/ca/b.test", want: "ok"}, // again
		{op: "delete", key: "nothing/here", want: "ok"},
		{op: "delete", key: "acme", want: "ok"},
		{op: "exists", key: "acme", want: "false"},
		{op: "load", key: acct, want: "notexist"},
		{op: "list", key: "acme", want: "notexist"},
		{op: "load", key: crtA, want: "=cert A renewed"},
	}
	for i, st := range steps {
		for _, s := range []certmagic.Storage{etcd, file} {
			if got := outcome(ctx, t, s, st); got != st.want {
				t.Errorf("step %d, %T: %s %q: %s, want %s", i, s, st.op, st.key, got, st.want)
			}
		}
	}
	t.Logf("checked %d calls on both storages: store, load, exists, stat, list (flat and recursive), delete of files and directories, missing keys", len(steps))

	// Only this storage: a directory exists while it holds a file, where
	// FileStorage keeps an emptied directory.
	if err := etcd.Store(ctx, "x/y/z", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := etcd.Delete(ctx, "x/y/z"); err != nil {
		t.Fatal(err)
	}
	if etcd.Exists(ctx, "x/y") || etcd.Exists(ctx, "x") {
		t.Error("an emptied directory still exists")
	}
	t.Log("checked: an emptied directory is gone")
}

func TestStatModified(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := newStorage(t, srv.Client, Options{})

	before := time.Now()
	if err := s.Store(ctx, "users/old/old.json", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	// A later store must have a later time: wait for the clock to move.
	for time.Now().Equal(before) {
		time.Sleep(time.Millisecond)
	}
	if err := s.Store(ctx, "users/new/new.json", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if err := s.Store(ctx, "users/new/new.key", []byte("k")); err != nil {
		t.Fatal(err)
	}
	old, err := s.Stat(ctx, "users/old")
	if err != nil {
		t.Fatal(err)
	}
	newer, err := s.Stat(ctx, "users/new")
	if err != nil {
		t.Fatal(err)
	}
	key, err := s.Stat(ctx, "users/new/new.key")
	if err != nil {
		t.Fatal(err)
	}
	if old.Modified.Before(before) || !newer.Modified.After(old.Modified) || !key.Modified.Equal(newer.Modified) {
		t.Errorf("modified: old dir %v, new dir %v, its newest file %v (stores began at %v)", old.Modified, newer.Modified, key.Modified, before)
	}
	t.Log("checked: a directory's modified time is that of its newest file, which orders accounts by age")
}

func TestBadInput(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := newStorage(t, srv.Client, Options{Prefix: "/test/certs"})

	bad := []string{"", "/a", "a/", "a//b", "a/../b", "..", "a/..", "a..b", "./a", "a/./b", "a\x00b"}
	for _, key := range bad {
		if err := s.Store(ctx, key, []byte("v")); !errors.Is(err, ErrBadKey) {
			t.Errorf("store %q: %v, want ErrBadKey", key, err)
		}
		if _, err := s.Load(ctx, key); !errors.Is(err, ErrBadKey) {
			t.Errorf("load %q: %v, want ErrBadKey", key, err)
		}
		if err := s.Delete(ctx, key); !errors.Is(err, ErrBadKey) {
			t.Errorf("delete %q: %v, want ErrBadKey", key, err)
		}
		if _, err := s.Stat(ctx, key); !errors.Is(err, ErrBadKey) {
			t.Errorf("stat %q: %v, want ErrBadKey", key, err)
		}
		if s.Exists(ctx, key) {
			t.Errorf("exists %q: true", key)
		}
		if key != "" {
			if _, err := s.List(ctx, key, true); !errors.Is(err, ErrBadKey) {
				t.Errorf("list %q: %v, want ErrBadKey", key, err)
			}
		}
	}
	resp, err := srv.Client.Get(ctx, "", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != 0 {
		t.Errorf("%d keys in etcd after bad keys only", resp.Count)
	}

	big := bytes.Repeat([]byte("x"), MaxValueSize+1)
	if err := s.Store(ctx, "big", big); !errors.Is(err, ErrTooLarge) {
		t.Errorf("store of %d bytes: %v, want ErrTooLarge", len(big), err)
	} else {
		t.Logf("store of %d bytes: %v", len(big), err)
	}
	if err := s.Store(ctx, "big", big[:MaxValueSize]); err != nil {
		t.Errorf("store of %d bytes: %v", MaxValueSize, err)
	}
	if v, err := s.Load(ctx, "big"); err != nil || !bytes.Equal(v, big[:MaxValueSize]) {
		t.Errorf("load of the largest value: %d bytes, %v", len(v), err)
	}
	resp, err = srv.Client.Get(ctx, "/test/certs/big", clientv3.WithCountOnly())
	if err != nil || resp.Count != 1 {
		t.Errorf("the key is not under the prefix: %v, %v", resp, err)
	}

	// A value written there by something else is refused, not misread.
	if _, err := srv.Client.Put(ctx, "/test/certs/foreign", "plain"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(ctx, "foreign"); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("load of a foreign value: %v", err)
	}

	// Every call is under the caller's context.
	done, cancelDone := context.WithCancel(ctx)
	cancelDone()
	if err := s.Store(done, "k", []byte("v")); !errors.Is(err, context.Canceled) {
		t.Errorf("store with an ended context: %v", err)
	}
	if _, err := s.Load(done, "big"); !errors.Is(err, context.Canceled) {
		t.Errorf("load with an ended context: %v", err)
	}

	for _, o := range []Options{{Prefix: "/"}, {LockTTL: 500 * time.Millisecond}, {LockTTL: -time.Second}} {
		if _, err := New(srv.Client, o); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
	if _, err := New(nil, Options{}); err == nil {
		t.Error("New without a client accepted")
	}
	t.Logf("checked: %d bad keys refused by every call, values over %d bytes refused, foreign values, ended contexts, bad options", len(bad), MaxValueSize)
}
