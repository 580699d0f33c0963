package etcdregistry

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/diglett/diglett/auth/jwt"
	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/testutil/etcdtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

// identity is a key and its text form and id.
type identity struct {
	text, id string
	pub      ed25519.PublicKey
}

func newIdentity(t *testing.T) identity {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return identity{text: jwt.EncodePublicKey(pub), id: jwt.IdentityID(pub), pub: pub}
}

func put(t *testing.T, cli *clientv3.Client, kv ...string) {
	t.Helper()
	for i := 0; i < len(kv); i += 2 {
		if _, err := cli.Put(ctx(t), kv[i], kv[i+1]); err != nil {
			t.Fatal(err)
		}
	}
}

func del(t *testing.T, cli *clientv3.Client, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if _, err := cli.Delete(ctx(t), k); err != nil {
			t.Fatal(err)
		}
	}
}

// want checks what r answers for an identity's key and for a name's owner.
type checker struct {
	t *testing.T
	r *Registry
}

func (c checker) key(id identity, known bool) error {
	k, err := c.r.Key(context.Background(), id.id)
	if !known {
		if !errors.Is(err, jwt.ErrUnknownIdentity) {
			return fmt.Errorf("Key(%s) = %v, %v; want ErrUnknownIdentity", id.id, k, err)
		}
		return nil
	}
	if err != nil {
		return err
	}
	if !id.pub.Equal(k) {
		return fmt.Errorf("Key(%s) is another key", id.id)
	}
	return nil
}

func (c checker) owner(name, want string) error {
	got, err := c.r.Owner(context.Background(), name)
	if want == "" {
		if !errors.Is(err, jwt.ErrNoOwner) {
			return fmt.Errorf("Owner(%s) = %q, %v; want ErrNoOwner", name, got, err)
		}
		return nil
	}
	if err != nil || got != want {
		return fmt.Errorf("Owner(%s) = %q, %v; want %q", name, got, err, want)
	}
	return nil
}

func (c checker) eventually(f func() error) {
	c.t.Helper()
	if err := testutil.Poll(10*time.Second, f); err != nil {
		c.t.Fatal(err)
	}
}

func (c checker) now(f func() error) {
	c.t.Helper()
	if err := f(); err != nil {
		c.t.Fatal(err)
	}
}

func TestRegistry(t *testing.T) {
	srv := etcdtest.Start(t)
	alice, bob, carol := newIdentity(t), newIdentity(t), newIdentity(t)
	put(t, srv.Client,
		"/dg/identities/alice", alice.text,
		"/dg/identities/bob", " "+bob.text+"\n",
		"/dg/identities/broken", "ed25519:nope",
		"/dg/identities/a/b", alice.text,
		"/dg/names/example", "alice",
		"/dg/names/by-id", bob.id,
		"/dg/names/Bad_Name", "alice",
		"/dg/names/no-owner", " ",
		"/dg/other/key", "ignored",
		"/dgx/names/elsewhere", "alice",
	)
	var changes atomic.Int64
	logs := &testutil.Buffer{}
	r, err := New(ctx(t), Config{
		Endpoints: []string{srv.Endpoint},
		Prefix:    "/dg",
		OnChange:  func() { changes.Add(1) },
		Logger:    slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c := checker{t, r}

	// What was there is loaded.
	c.now(func() error { return c.key(alice, true) })
	c.now(func() error { return c.key(bob, true) })
	c.now(func() error { return c.key(carol, false) })
	for _, tt := range []struct{ name, owner string }{
		{"example", alice.id},
		{"by-id", bob.id},
		{"Bad_Name", ""},
		{"no-owner", ""},
		{"elsewhere", ""},
		{"unknown", ""},
	} {
		c.now(func() error { return c.owner(tt.name, tt.owner) })
	}
	for _, want := range []string{"/dg/identities/broken", "/dg/identities/a/b", "/dg/names/Bad_Name", "/dg/names/no-owner"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("no warning about %s in the logs:\n%s", want, logs)
		}
	}
	if n := changes.Load(); n != 0 {
		t.Fatalf("OnChange called %d times by the load", n)
	}

	// A new identity and a new name are seen, and OnChange is called.
	put(t, srv.Client, "/dg/identities/carol", carol.text, "/dg/names/new", "carol")
	c.eventually(func() error { return c.owner("new", carol.id) })
	c.now(func() error { return c.key(carol, true) })
	c.eventually(func() error {
		if changes.Load() == 0 {
			return errors.New("OnChange not called")
		}
		return nil
	})

	// The name is given to another identity.
	before := changes.Load()
	put(t, srv.Client, "/dg/names/example", "bob")
	c.eventually(func() error { return c.owner("example", bob.id) })
	c.eventually(func() error {
		if changes.Load() == before {
			return errors.New("OnChange not called for the new owner")
		}
		return nil
	})

	// A name's owner removed, an identity removed.
	del(t, srv.Client, "/dg/names/by-id", "/dg/identities/alice")
	c.eventually(func() error { return c.owner("by-id", "") })
	c.eventually(func() error { return c.key(alice, false) })

	// A botched edit of a key revokes it rather than keeping the old one.
	put(t, srv.Client, "/dg/identities/bob", "ed25519:garbage")
	c.eventually(func() error { return c.key(bob, false) })
	// An owner given by label follows the label's key.
	put(t, srv.Client, "/dg/identities/bob", carol.text)
	c.eventually(func() error { return c.owner("example", carol.id) })

	// Two labels for one key: the key stays while either is there.
	put(t, srv.Client, "/dg/identities/carol2", carol.text)
	del(t, srv.Client, "/dg/identities/carol")
	put(t, srv.Client, "/dg/names/sync", "carol2")
	c.eventually(func() error { return c.owner("sync", carol.id) })
	c.now(func() error { return c.key(carol, true) })
	del(t, srv.Client, "/dg/identities/carol2")
	put(t, srv.Client, "/dg/names/sync2", "x")
	c.eventually(func() error { return c.owner("sync2", "x") })
	c.now(func() error { return c.key(carol, true) }) // label bob still holds it
	del(t, srv.Client, "/dg/identities/bob")
	c.eventually(func() error { return c.key(carol, false) })

	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestWatchRecovers(t *testing.T) {
	srv := etcdtest.Start(t)
	alice, bob := newIdentity(t), newIdentity(t)
	put(t, srv.Client, "/diglett/identities/alice", alice.text, "/diglett/names/example", "alice")
	resp, err := srv.Client.Get(ctx(t), "/diglett")
	if err != nil {
		t.Fatal(err)
	}
	old := resp.Header.Revision
	put(t, srv.Client, "/diglett/identities/bob", bob.text, "/unrelated", "1")
	resp, err = srv.Client.Get(ctx(t), "/diglett")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Client.Compact(ctx(t), resp.Header.Revision); err != nil {
		t.Fatal(err)
	}

	// The watch starts from a compacted revision: it fails, and the
	// registry loads everything again and watches from there.
	var changes atomic.Int64
	logs := &testutil.Buffer{}
	r, err := start(ctx(t), Config{
		Endpoints: []string{srv.Endpoint},
		OnChange:  func() { changes.Add(1) },
		Logger:    slog.New(slog.NewTextHandler(logs, nil)),
	}, old-1)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c := checker{t, r}
	c.eventually(func() error {
		if !strings.Contains(logs.String(), "compacted") {
			return fmt.Errorf("no compaction in the logs:\n%s", logs)
		}
		return nil
	})
	c.eventually(func() error {
		if changes.Load() == 0 {
			return errors.New("OnChange not called after the reload")
		}
		return nil
	})
	c.now(func() error { return c.key(bob, true) })
	put(t, srv.Client, "/diglett/names/example", "bob")
	c.eventually(func() error { return c.owner("example", bob.id) })
}

func TestMaxKeys(t *testing.T) {
	srv := etcdtest.Start(t)
	alice := newIdentity(t)
	put(t, srv.Client, "/diglett/identities/alice", alice.text, "/diglett/names/a", "alice", "/diglett/names/b", "alice")
	cfg := Config{Endpoints: []string{srv.Endpoint}, MaxKeys: 2, Logger: slog.New(slog.DiscardHandler)}
	if _, err := New(ctx(t), cfg); err == nil || !strings.Contains(err.Error(), "more than 2 keys") {
		t.Fatalf("New with 3 keys and MaxKeys 2: %v", err)
	}
	cfg.MaxKeys = 3
	r, err := New(ctx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c := checker{t, r}
	// Past the bound, new keys are ignored; changes to held ones are not.
	put(t, srv.Client, "/diglett/names/c", "alice", "/diglett/names/a", "other")
	c.eventually(func() error { return c.owner("a", "other") })
	c.now(func() error { return c.owner("c", "") })
}

func TestUnreachable(t *testing.T) {
	start := time.Now()
	_, err := New(context.Background(), Config{Endpoints: []string{"http://127.0.0.1:1"}, DialTimeout: 500 * time.Millisecond})
	if err == nil {
		t.Fatal("New succeeded with no etcd")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("New took %v", d)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		c    Config
		want string
	}{
		{"no endpoints", Config{}, "no etcd endpoints"},
		{"empty endpoint", Config{Endpoints: []string{" "}}, "empty etcd endpoint"},
		{"relative prefix", Config{Endpoints: []string{"http://x"}, Prefix: "diglett"}, "leading slash"},
		{"trailing slash", Config{Endpoints: []string{"http://x"}, Prefix: "/diglett/"}, "trailing"},
		{"dial timeout", Config{Endpoints: []string{"http://x"}, DialTimeout: -1}, "negative dial timeout"},
		{"max keys", Config{Endpoints: []string{"http://x"}, MaxKeys: -1}, "negative max keys"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(context.Background(), tt.c)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want an error with %q", err, tt.want)
			}
		})
	}
}
