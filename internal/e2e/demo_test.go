package e2e

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// freeAddr returns a loopback address nothing listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestDemoScript runs what `make demo` runs, with the real binaries, and
// checks that a page came through the tunnel: the README's first command
// stays true.
func TestDemoScript(t *testing.T) {
	bin := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin+string(filepath.Separator),
		"./cmd/diglett", "./cmd/diglett-server", "./examples/hello")
	build.Dir = repoRoot
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	demo := exec.CommandContext(ctx, "bash", "scripts/demo.sh")
	demo.Dir = repoRoot
	demo.Env = append(os.Environ(), "DEMO_ONCE=1", "BIN="+bin,
		"GATEWAY_ADDR="+freeAddr(t), "BACKEND_ADDR="+freeAddr(t), "HTTP_ADDR="+freeAddr(t))
	out, err := demo.CombinedOutput()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	for _, want := range []string{"public URL: http://example.localhost:", "public TCP address: tcp://127.0.0.1:", "register domain 'example' -> '", "Hello from behind the NAT!"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}
