//go:build unix

package servercli

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/diglett/diglett/internal/cli"
)

// check-config reads the proxy_protocol section and names a bad source
// with its line.
func TestCheckConfigProxyProtocol(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	writeFile(t, good, "version: 1\nproxy_protocol:\n  from: [10.0.0.0/24, 192.0.2.7, \"2001:db8::/32\"]\n")
	var out bytes.Buffer
	if err := Server(context.Background(), []string{"check-config", good}, &out, io.Discard); err != nil || out.String() != good+": ok\n" {
		t.Fatalf("good file: %v, stdout %q", err, &out)
	}
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, "version: 1\nproxy_protocol:\n  from:\n    - 10.0.0.0/24\n    - 10.0.0.300\n")
	err := Server(context.Background(), []string{"check-config", bad}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), `bad.yaml:5: proxy_protocol.from: address "10.0.0.300"`) {
		t.Fatalf("bad source: err = %v", err)
	}
}

// A reload names a changed proxy_protocol section as needing a restart.
func TestConfigReloadProxyProtocol(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "gateway.yaml")
	writeFile(t, cfg, "version: 1\nlisten: 127.0.0.1:0\nauth:\n  - allow_all: {}\nproxy_protocol: {from: [10.0.0.1]}\n")
	args := []string{"--config", cfg}
	var c serverCmd
	fr := serverResolver()
	if err := cli.Parse(&c, "diglett-server", serverDesc, args, io.Discard, io.Discard, fr); err != nil {
		t.Fatal(err)
	}
	if got := proxyProtocolFrom(serverFile(fr)); len(got) != 1 || got[0].String() != "10.0.0.1/32" {
		t.Fatalf("sources %v, want [10.0.0.1/32]", got)
	}
	log := slog.New(slog.DiscardHandler)
	_, started, err := c.modules(serverFile(fr), log, nil)
	if err != nil {
		t.Fatal(err)
	}
	src := c.configSource(args, serverFile(fr), &fakeRegs{}, started, nil, nil, log)
	for _, tc := range []struct {
		from    string
		restart []string
	}{
		{"[10.0.0.1]", nil},
		{"[10.0.0.1/32]", nil}, // the same source
		{"[10.0.0.1, 10.0.0.2]", []string{"proxy_protocol"}},
	} {
		writeFile(t, cfg, "version: 1\nlisten: 127.0.0.1:0\nauth:\n  - allow_all: {}\nproxy_protocol: {from: "+tc.from+"}\n")
		snap, err := src.Build()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(snap.Restart, tc.restart) {
			t.Errorf("from %s: restart %v, want %v", tc.from, snap.Restart, tc.restart)
		}
	}
}
