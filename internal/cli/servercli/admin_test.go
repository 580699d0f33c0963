package servercli

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett/admin"
	"github.com/diglett/diglett/gateway"
)

func TestListenAdmin(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", "\n  s3cret-token \n")
	tests := []struct {
		addr, file string
		want       string // in the error; "" for none
		token      string
	}{
		{"127.0.0.1:0", "", "", ""},
		{"[::1]:0", "", "", ""},
		{"localhost:0", "", "", ""},
		{"127.0.0.1:0", good, "", "s3cret-token"},
		{"0.0.0.0:0", good, "", "s3cret-token"},
		{"0.0.0.0:0", "", "--admin-addr 0.0.0.0:0 is not a loopback address", ""},
		{":0", "", "--admin-addr :0 is not a loopback address", ""},
		{"example.org:0", "", "is not a loopback address", ""},
		{"127.0.0.1", "", `--admin-addr "127.0.0.1": want HOST:PORT`, ""},
		{"127.0.0.1:0", write("empty", " \n"), "empty: write a long random token", ""},
		{"127.0.0.1:0", write("two", "a b\n"), "want one token on one line", ""},
		{"127.0.0.1:0", write("big", strings.Repeat("x", maxAdminTokenBytes+1)), "longer than 4096 bytes", ""},
		{"127.0.0.1:0", filepath.Join(dir, "missing"), "--admin-token-file: open", ""},
	}
	for _, tc := range tests {
		t.Run(tc.addr+" "+filepath.Base(tc.file), func(t *testing.T) {
			ln, token, err := listenAdmin(tc.addr, tc.file)
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want %q", err, tc.want)
				}
				if ln != nil {
					t.Fatal("a listener with an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			ln.Close()
			if token != tc.token {
				t.Fatalf("token %q, want %q", token, tc.token)
			}
		})
	}
}

func TestAdminAddrAlias(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.DiscardHandler)
	tests := []struct {
		admin, debug, want, err string
	}{
		{"", "", "", ""},
		{"127.0.0.1:1", "", "127.0.0.1:1", ""},
		{"", "127.0.0.1:2", "127.0.0.1:2", ""},
		{"127.0.0.1:2", "127.0.0.1:2", "127.0.0.1:2", ""},
		{"127.0.0.1:1", "127.0.0.1:2", "", "give only --admin-addr"},
	}
	for _, tc := range tests {
		c := serverCmd{AdminAddr: tc.admin, DebugAddr: tc.debug}
		got, err := c.adminAddr(log)
		if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("admin %q debug %q: %q, %v", tc.admin, tc.debug, got, err)
		}
	}
}

func TestReloadVia(t *testing.T) {
	t.Parallel()
	requests := make(chan reloadRequest)
	reload := reloadVia(requests)
	go func() {
		req := <-requests
		req.done <- reloadResult{changes: []any{"added", []string{"bob"}, "sessions_kept", 2}}
		req = <-requests
		req.done <- reloadResult{err: errNoReloadSource}
	}()
	got, err := reload(context.Background())
	if err != nil || len(got) != 2 || got["sessions_kept"] != 2 {
		t.Fatalf("reload: %v, %v", got, err)
	}
	if _, err := reload(context.Background()); !errors.Is(err, admin.ErrNothingToReload) {
		t.Fatalf("nothing to reload: %v", err)
	}
	// Nobody serving the requests: the context bounds the wait.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := reload(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("unserved reload: %v", err)
	}
}

func TestPrintTunnels(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC)
	var b bytes.Buffer
	err := printTunnels(&b, []gateway.TunnelInfo{
		{Name: "blog", Port: 31876, State: gateway.StateLeased, LeaseEnds: now.Add(41 * time.Second), Identity: "alice", Hosts: []string{"blog.example.com"}},
		{Name: "dns", Port: 30053, Protocol: "udp", State: gateway.StateLive, Identity: "dave", Hosts: []string{},
			Members: []gateway.MemberInfo{{Address: "203.0.113.9:40001", Transport: "quic"}}},
		{Name: "old", State: gateway.StateLeased, LeaseEnds: now.Add(time.Minute), Identity: "carol", Hosts: []string{}},
		{Name: "web", Port: 30512, State: gateway.StateLive, Identity: "bob", Visitors: 3, Hosts: []string{"web.example.com", "www.example.org"},
			Members: []gateway.MemberInfo{{Address: "203.0.113.7:50122", Transport: "quic"}, {Address: "203.0.113.7:50130", Transport: "tcp"}}},
	}, now)
	if err != nil {
		t.Fatal(err)
	}
	want := `NAME  PORT       STATE               MEMBERS                                       VISITORS  IDENTITY  HOSTS
blog  31876      leased (41s left)   -                                             0         alice     blog.example.com
dns   udp/30053  live                203.0.113.9:40001/quic                        0         dave      -
old   -          leased (1m0s left)  -                                             0         carol     -
web   30512      live                203.0.113.7:50122/quic,203.0.113.7:50130/tcp  3         bob       web.example.com,www.example.org
`
	if got := b.String(); got != want {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}
	b.Reset()
	printTunnels(&b, nil, now)
	if b.String() != "no tunnels\n" {
		t.Fatalf("no tunnels: %q", b.String())
	}
}

func TestStatusArguments(t *testing.T) {
	t.Parallel()
	err := Server(context.Background(), []string{"status", "--admin-addr", "127.0.0.1:1"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "cannot reach the management listener at 127.0.0.1:1") {
		t.Fatalf("status of nothing: %v", err)
	}
	err = Server(context.Background(), []string{"status", "--admin-token-file", filepath.Join(t.TempDir(), "none")}, io.Discard, io.Discard)
	if err == nil {
		t.Fatal("missing token file: no error")
	}
}
