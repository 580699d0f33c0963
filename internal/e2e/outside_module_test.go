package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

// A program in a module of its own (testdata/outside) implements an
// Authenticator and a Registerer, embeds the gateway with them and
// publishes an app through it with diglett.Listen: it builds against the
// public packages alone, and its modules are called, the Registerer on
// register and on leave. Under CI=true a failure to build fails the test;
// elsewhere (no module cache, say) it skips with the build's output.
func TestOutsideModule(t *testing.T) {
	parallel(t)
	goCmd, err := exec.LookPath("go")
	if err != nil {
		goCmd = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(mod)
	if m == nil {
		t.Fatal("go.mod has no go line")
	}

	// The module: the program, a go.mod that takes diglett from this
	// tree, and this tree's go.sum, which already vouches for every
	// module diglett needs (so no checksum database is asked).
	dir := t.TempDir()
	src, err := os.ReadFile(filepath.Join("testdata", "outside", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	gomod := "module example.com/outside\n\ngo " + string(m[1]) + "\n\n" +
		"require github.com/diglett/diglett v0.0.0\n\n" +
		"replace github.com/diglett/diglett => " + strconv.Quote(root) + "\n"
	for name, data := range map[string][]byte{"main.go": src, "go.sum": sum, "go.mod": []byte(gomod)} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := filepath.Join(dir, "outside")
	build := exec.CommandContext(ctx, goCmd, "build", "-o", bin, ".")
	build.Dir = dir
	// -mod=mod adds diglett's own requirements to the new go.mod; the
	// module cache and the environment's proxy supply them.
	build.Env = append(os.Environ(), "GOFLAGS=-mod=mod -buildvcs=false", "GOWORK=off")
	if out, err := build.CombinedOutput(); err != nil {
		testutil.Unavailable(t, "go build of the outside module: %v\n%s", err, out)
	}

	runCtx, cancelRun := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancelRun()
	var stdout, stderr bytes.Buffer
	run := exec.CommandContext(runCtx, bin)
	run.Stdout, run.Stderr = &stdout, &stderr
	if err := run.Run(); err != nil {
		t.Fatalf("outside program: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	want := strings.Join([]string{
		"wrong token: refused",
		"other team's name: refused",
		"register blue-app identity=blue port=<public port>",
		"response: 200 hello visitor from outside the module",
		"unregister blue-app",
	}, "\n") + "\n"
	if got := stdout.String(); got != want {
		t.Fatalf("outside program printed:\n%s\nwant:\n%s\nstderr:\n%s", got, want, stderr.String())
	}
}
