package catalog

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diglett/diglett/internal/testutil"
)

// writeFile writes data to path through a rename, as editors save.
func writeFile(t *testing.T, path, data string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestFileFollowsChanges(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "ports.yaml")
	writeFile(t, path, "ports:\n  - {service: mail, tcp: [25, 587]}\n  - {service: dns, udp: [53], tcp: [53]}\n")
	log, buf := testLogger()
	src, err := NewFile(FileOptions{Path: path, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	r := run(t, src, buf)
	r.wait(t, tcp(25, "mail"), tcp(53, "dns"), tcp(587, "mail"), udp(53, "dns"))

	// Rewritten in place.
	if err := os.WriteFile(path, []byte("ports:\n  - {service: web, tcp: [443]}\n  - {service: mail, tcp: [25]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r.wait(t, tcp(25, "mail"), tcp(443, "web"))

	// Broken: the last good set stays, and the error is logged.
	for i, broken := range []string{
		"ports:\n  - {service: web, tcp: [443]\n",
		"ports:\n  - {service: web, tcp: [70000]}\n",
		"ports:\n  - {tcp: [80]}\n",
		"", // deleted
	} {
		if broken == "" {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		} else {
			writeFile(t, path, broken)
		}
		waitLog(t, buf, "last good set stays in force", i+1)
	}
	for _, want := range []string{"did not find expected", "tcp port 70000", "no service", "no such file"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("the log does not say %q", want)
		}
	}
	n := r.wait(t, tcp(25, "mail"), tcp(443, "web"))

	// Fixed.
	writeFile(t, path, "ports:\n  - {service: web, tcp: [443, 80]}\n")
	if m := r.wait(t, tcp(80, "web"), tcp(443, "web")); m != n+1 {
		t.Errorf("%d sets yielded after the fix; want %d", m, n+1)
	}
	// Emptied on purpose.
	writeFile(t, path, "ports: []\n")
	r.wait(t)
	r.checkDistinct(t)
	t.Logf("checked: %d sets followed the file written, rewritten in place, broken (syntax, range, no service, deleted: the last good set kept and the error logged), fixed and emptied", len(r.updates()))
}

func TestFileSameContentNoUpdate(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "ports.yaml")
	writeFile(t, path, "ports: [{service: mail, tcp: [25]}]\n")
	log, buf := testLogger()
	src, err := NewFile(FileOptions{Path: path, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	r := run(t, src, buf)
	r.wait(t, tcp(25, "mail"))
	// The same set written differently, then a real change after it.
	writeFile(t, path, "# reordered\nports:\n  - service: mail\n    tcp: [25, 25]\n")
	waitLog(t, buf, "the set is unchanged", 1)
	writeFile(t, path, "ports: [{service: mail, tcp: [25]}, {service: mail, tcp: [25]}]\n")
	waitLog(t, buf, "the set is unchanged", 2)
	writeFile(t, path, "ports: [{service: mail, tcp: [26]}]\n")
	if n := r.wait(t, tcp(26, "mail")); n != 2 {
		t.Errorf("%d sets yielded; want 2: a file that yields the same set yields nothing", n)
	}
	t.Log("checked: a rewrite that yields the same set calls update no more")
}

func TestNewFileErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for name, content := range map[string]string{
		"syntax.yaml":  "ports: [",
		"unknown.yaml": "port: []\n",
		"service.yaml": "ports: [{tcp: [1]}]\n",
		"range.yaml":   "ports: [{service: a, udp: [0]}]\n",
		"empty.yaml":   "",
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := NewFile(FileOptions{Path: p}); err == nil {
			t.Errorf("NewFile(%s) = nil error", name)
		}
	}
	if _, err := NewFile(FileOptions{Path: filepath.Join(dir, "missing.yaml")}); err == nil {
		t.Error("NewFile(missing) = nil error")
	}
	if _, err := NewFile(FileOptions{}); err == nil {
		t.Error("NewFile(no path) = nil error")
	}
	t.Log("checked: a missing, empty or broken file and no path are errors at start")
}

// waitLog waits until the log has at least n lines with s.
func waitLog(t *testing.T, buf *testutil.Buffer, s string, n int) {
	t.Helper()
	if err := testutil.Poll(waitFor, func() error {
		if got := strings.Count(buf.String(), s); got < n {
			return fmt.Errorf("%d log lines with %q; want %d", got, s, n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
