package faults

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The programs under test, built once by TestMain.
var bin struct {
	dir, server, agent string
}

func TestMain(m *testing.M) {
	flag.Parse()
	// Cases mostly wait on sockets and timers: run three at a time even
	// on two cores (the semaphore below caps it there too).
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if !explicit {
		flag.Set("test.parallel", "3")
	}
	dir, err := os.MkdirTemp("", "diglett-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		os.Exit(1)
	}
	if prebuilt := os.Getenv("FAULTS_BIN"); prebuilt != "" {
		// Programs built elsewhere: the release binaries of `make
		// build` (bin/), or an older commit's to see the cases fail.
		bin.dir = dir
		bin.server = filepath.Join(prebuilt, "diglett-server")
		bin.agent = filepath.Join(prebuilt, "diglett")
	} else if err := build(dir); err != nil {
		fmt.Fprintln(os.Stderr, "faults: build the programs under test:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	printReport(os.Stdout)
	// `go test` shows a passing package's output only with -v: `make
	// test` has the table written to a file too, and prints it.
	if path := os.Getenv("FAULTS_REPORT"); path != "" {
		if f, err := os.Create(path); err == nil {
			printReport(f)
			f.Close()
		} else {
			fmt.Fprintln(os.Stderr, "faults: report:", err)
		}
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// build compiles the programs under test into dir.
func build(dir string) error {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return fmt.Errorf("module root: %w", err)
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		if goTool, err = exec.LookPath(filepath.Join(os.Getenv("GOROOT"), "bin", "go")); err != nil {
			return fmt.Errorf("the go command is not on PATH: %w", err)
		}
	}
	// A plain build shares the build cache with `go build ./...`.
	cmd := exec.Command(goTool, "build", "-o", dir+string(filepath.Separator), "./cmd/diglett", "./cmd/diglett-server")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v\n%s", err, out)
	}
	bin.dir = dir
	bin.server = filepath.Join(dir, "diglett-server")
	bin.agent = filepath.Join(dir, "diglett")
	return nil
}

// faultCase is one row of the suite.
type faultCase struct {
	name  string
	tried string // what the case does, for the report
	// gateway configures the case's own gateway, with its control tunnel
	// and the three common checks; nil for cases that start their own
	// programs (a gateway that must not start, say).
	gateway *gatewayConfig
	// exclusive cases run alone: they measure time or load the machine.
	exclusive bool
	// timeout bounds the case (default 90s); settle bounds how long the
	// gateway may take to return to its baseline afterwards (default 15s).
	timeout, settle time.Duration
	// run attacks, checks the case's own assertion and returns what held.
	run func(c *tc, e *env) string
}

// tc is a case's test, remembering its first failure for the report.
type tc struct {
	*testing.T
	ctx context.Context // ends when the case's time is up

	mu    sync.Mutex
	first string
}

func (c *tc) note(msg string) {
	c.mu.Lock()
	if c.first == "" {
		c.first = oneLine(msg)
	}
	c.mu.Unlock()
}

func (c *tc) Fatalf(format string, args ...any) {
	c.Helper()
	msg := fmt.Sprintf(format, args...)
	c.note(msg)
	c.T.Fatal(msg)
}

func (c *tc) Errorf(format string, args ...any) {
	c.Helper()
	msg := fmt.Sprintf(format, args...)
	c.note(msg)
	c.T.Error(msg)
}

func (c *tc) Fatal(args ...any) {
	c.Helper()
	c.Fatalf("%s", fmt.Sprint(args...))
}

func (c *tc) Error(args ...any) {
	c.Helper()
	c.Errorf("%s", fmt.Sprint(args...))
}

// The report: one row per case that ran.
type row struct {
	name, tried, held string
	failed            bool
	took              time.Duration
}

var report struct {
	sync.Mutex
	rows []row
}

func printReport(w io.Writer) {
	report.Lock()
	defer report.Unlock()
	if len(report.rows) == 0 {
		return
	}
	rows := slices.Clone(report.rows)
	slices.SortFunc(rows, func(a, b row) int { return strings.Compare(a.name, b.name) })
	failed := 0
	for _, r := range rows {
		if r.failed {
			failed++
		}
	}
	fmt.Fprintf(w, "\nfault-and-attack suite: %d cases, %d held, %d failed\n\n", len(rows), len(rows)-failed, failed)
	fmt.Fprintln(w, "| case | tried | held |")
	fmt.Fprintln(w, "| --- | --- | --- |")
	for _, r := range rows {
		held := r.held
		if r.failed {
			held = "FAILED: " + held
		}
		fmt.Fprintf(w, "| %s (%.1fs) | %s | %s |\n", r.name, r.took.Seconds(), cell(r.tried), cell(held))
	}
	fmt.Fprintln(w)
}

func cell(s string) string { return strings.ReplaceAll(oneLine(s), "|", "/") }

// At most three cases run at once; an exclusive case runs alone.
var (
	slots     = make(chan struct{}, 3)
	exclusive sync.RWMutex
)

func TestFaults(t *testing.T) {
	for _, fc := range slices.Concat(defectCases, heldCases) {
		t.Run(fc.name, func(t *testing.T) {
			t.Parallel()
			// Released by the first clean-up registered, so the last
			// to run: after the case's programs have been stopped.
			if fc.exclusive {
				exclusive.Lock()
				t.Cleanup(exclusive.Unlock)
			} else {
				exclusive.RLock()
				slots <- struct{}{}
				t.Cleanup(func() {
					<-slots
					exclusive.RUnlock()
				})
			}
			runCase(t, fc)
		})
	}
}

func runCase(t *testing.T, fc faultCase) {
	timeout := orDefault(fc.timeout, 90*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c := &tc{T: t, ctx: ctx}
	start := time.Now()
	var held string
	// Registered first, so it runs last: after the programs are stopped
	// and checked.
	t.Cleanup(func() {
		took := time.Since(start)
		if took > timeout+30*time.Second {
			c.Errorf("the case took %v, over its bound of %v", took.Round(time.Second), timeout)
		}
		r := row{name: fc.name, tried: fc.tried, held: held, failed: t.Failed(), took: took}
		if r.failed {
			r.held = c.first
			if r.held == "" {
				r.held = "failed (see the test log)"
			}
		}
		report.Lock()
		report.rows = append(report.rows, r)
		report.Unlock()
	})
	var e *env
	if fc.gateway != nil {
		e = startEnv(c, *fc.gateway)
	}
	held = fc.run(c, e)
	if e != nil {
		held += "; " + e.finish(c, orDefault(fc.settle, 15*time.Second))
	}
}

// orDefault is d, or def when d is zero.
func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}
