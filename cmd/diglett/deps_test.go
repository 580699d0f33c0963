package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// serverOnly are the packages (by import-path prefix) the agent must not
// link: the gateway's side, whose code and package initialisation would
// weigh on every laptop that runs diglett (docs/DECISIONS.md, "The agent
// binary without the gateway").
var serverOnly = []string{
	"github.com/diglett/diglett/gateway",
	"github.com/diglett/diglett/ingress",
	"github.com/diglett/diglett/cluster",
	"github.com/diglett/diglett/admin",
	"github.com/diglett/diglett/catalog",
	"github.com/diglett/diglett/portmap",
	"github.com/diglett/diglett/homenet",
	"github.com/diglett/diglett/firewall",
	"github.com/diglett/diglett/dnsupdate",
	"github.com/diglett/diglett/register/",
	"github.com/diglett/diglett/auth/allowall",
	"github.com/diglett/diglett/auth/basic",
	"github.com/diglett/diglett/auth/bearer",
	"github.com/diglett/diglett/auth/external",
	"github.com/diglett/diglett/auth/tokens",
	"github.com/diglett/diglett/auth/jwt/",
	"github.com/diglett/diglett/internal/autotls",
	"github.com/diglett/diglett/internal/metrics",
	"github.com/diglett/diglett/internal/cli/servercli",
	"github.com/diglett/diglett/config", // config/configfile is the agent's part
	"go.etcd.io/",
	"google.golang.org/grpc",
	"github.com/hashicorp/consul",
	"github.com/google/nftables",
	"github.com/coreos/go-iptables",
	"github.com/caddyserver/certmagic",
	"github.com/libdns/",
	"github.com/miekg/dns",
	"github.com/huin/goupnp",
}

// allowed are the packages of serverOnly the agent links all the same,
// each with the only packages allowed to import it and why.
var allowed = map[string]struct {
	importers []string
	why       string
}{
	"github.com/diglett/diglett/config/configfile": {
		why: "the agent's file reader: it links nothing of the gateway (checked here by the rest of the list)",
	},
	"github.com/diglett/diglett/gateway": {
		importers: []string{"github.com/diglett/diglett/auth/jwt"},
		why: "keygen, token sign and --identity-key sign with auth/jwt, whose Authenticator (jwt.go) is the gateway's; " +
			"its signing half (keys.go, sign.go) needs none of it and could be a package of its own",
	},
}

// TestAgentLinksNoGateway holds the boundary: cmd/diglett links none of
// the gateway's packages, and what it links of them anyway comes only
// through the importers allowed above. (prometheus/client_golang, and the
// protobuf packages it needs, are not on the list: the agent's inspector
// serves /metrics.)
func TestAgentLinksNoGateway(t *testing.T) {
	goTool := findGo(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, "list", "-deps", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", ".")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	importers := map[string][]string{} // package -> the agent's packages importing it
	var pkgs []string
	for line := range strings.Lines(string(out)) {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		pkgs = append(pkgs, fields[0])
		for _, imp := range fields[1:] {
			importers[imp] = append(importers[imp], fields[0])
		}
	}
	if len(pkgs) < 50 || !slices.Contains(pkgs, "github.com/diglett/diglett/internal/cli") {
		t.Fatalf("go list gave %d packages, without internal/cli: not the agent's", len(pkgs))
	}
	for _, p := range pkgs {
		if !isServerOnly(p) {
			continue
		}
		a, ok := allowed[p]
		if !ok {
			t.Errorf("the agent links %s (imported by %s): a package of the gateway's side", p, strings.Join(importers[p], ", "))
			continue
		}
		if a.importers == nil {
			continue
		}
		for _, by := range importers[p] {
			if !slices.Contains(a.importers, by) {
				t.Errorf("the agent links %s through %s; only through %s (%s)", p, by, strings.Join(a.importers, ", "), a.why)
			}
		}
	}
}

func isServerOnly(p string) bool {
	for _, prefix := range serverOnly {
		if p == prefix || strings.HasPrefix(p, prefix) && (strings.HasSuffix(prefix, "/") || p[len(prefix)] == '/') {
			return true
		}
	}
	return false
}

// findGo finds the go tool: on PATH, or in the GOROOT of the test's own
// build.
func findGo(t *testing.T) string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if root := runtime.GOROOT(); root != "" {
		p := filepath.Join(root, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no go tool on PATH or in GOROOT")
	}
	t.Skip("no go tool on PATH or in GOROOT: skipped outside CI")
	return ""
}
