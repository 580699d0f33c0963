package watch

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// within bounds every wait of these tests: generous for a loaded machine,
// far beyond the debounce.
const within = 10 * time.Second

// start watches files for the test, with the goroutine check run last.
func start(t *testing.T, files ...string) *Watcher {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t) })
	w, err := New(t.Context(), files, Options{Debounce: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// expectChange waits for the next report and checks it names want.
func expectChange(t *testing.T, w *Watcher, want ...string) {
	t.Helper()
	select {
	case got := <-w.Changes():
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("changed %q, want %q", got, want)
		}
	case <-time.After(within):
		t.Fatalf("no change reported for %q", want)
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestWriteInPlace(t *testing.T) {
	f := filepath.Join(t.TempDir(), "tokens.yaml")
	write(t, f, "a")
	w := start(t, f)
	write(t, f, "b")
	expectChange(t, w, f)
	// Appending is a change too.
	fh, err := os.OpenFile(f, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fh.WriteString("c")
	fh.Close()
	expectChange(t, w, f)
}

// An editor saves to a new file and renames it over the old one.
func TestRenameOver(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "tokens.yaml")
	write(t, f, "a")
	w := start(t, f)
	tmp := filepath.Join(dir, ".tokens.yaml.swp")
	write(t, tmp, "b")
	if err := os.Rename(tmp, f); err != nil {
		t.Fatal(err)
	}
	expectChange(t, w, f)
	// And again: the watch survives the file's replacement.
	write(t, tmp, "c")
	if err := os.Rename(tmp, f); err != nil {
		t.Fatal(err)
	}
	expectChange(t, w, f)
}

// configMap lays dir out as a Kubernetes ConfigMap volume does: each
// version of the files in a directory of its own, "..data" a symlink to
// the current one, and each file a symlink through "..data".
type configMap struct {
	t       *testing.T
	dir     string
	version int
}

func newConfigMap(t *testing.T, files map[string]string) *configMap {
	c := &configMap{t: t, dir: t.TempDir()}
	c.update(files)
	for name := range files {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(c.dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// update writes a new version and swaps "..data" to it atomically (a new
// symlink renamed over the old one), then removes the old version.
func (c *configMap) update(files map[string]string) {
	t := c.t
	old := filepath.Join(c.dir, "..2026_01_01_00_00_0"+string(rune('0'+c.version)))
	c.version++
	ver := "..2026_01_01_00_00_0" + string(rune('0'+c.version))
	if err := os.Mkdir(filepath.Join(c.dir, ver), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		write(t, filepath.Join(c.dir, ver, name), content)
	}
	tmp := filepath.Join(c.dir, "..data_tmp")
	if err := os.Symlink(ver, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(c.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if c.version > 1 {
		if err := os.RemoveAll(old); err != nil {
			t.Fatal(err)
		}
	}
}

func TestConfigMapSwap(t *testing.T) {
	cm := newConfigMap(t, map[string]string{"tokens.yaml": "a", "config.yaml": "x"})
	tokens := filepath.Join(cm.dir, "tokens.yaml")
	config := filepath.Join(cm.dir, "config.yaml")
	w := start(t, tokens, config)
	cm.update(map[string]string{"tokens.yaml": "b", "config.yaml": "x"})
	expectChange(t, w, tokens)
	// Every later swap is seen too, both files at once.
	cm.update(map[string]string{"tokens.yaml": "c", "config.yaml": "y"})
	expectChange(t, w, tokens, config)
}

func TestDeleteAndRecreate(t *testing.T) {
	f := filepath.Join(t.TempDir(), "tokens.yaml")
	write(t, f, "a")
	w := start(t, f)
	if err := os.Remove(f); err != nil {
		t.Fatal(err)
	}
	expectChange(t, w, f)
	write(t, f, "a")
	expectChange(t, w, f)
}

// A file that does not exist yet is reported when it appears.
func TestCreatedLater(t *testing.T) {
	f := filepath.Join(t.TempDir(), "tokens.yaml")
	w := start(t, f)
	write(t, f, "a")
	expectChange(t, w, f)
}

// Events that leave the content as it was report nothing: a rewrite of
// the same bytes, a touch, another file of the directory.
func TestNoOpEventsReportNothing(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "tokens.yaml")
	write(t, f, "a")
	checks := make(chan []string, 256)
	t.Cleanup(func() { goleak.VerifyNone(t) })
	w, err := newWatcher(t.Context(), []string{f}, Options{Debounce: 20 * time.Millisecond}, func(changed []string) {
		select {
		case checks <- changed:
		default: // never blocks the watcher
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })

	noop := []func(){
		func() { write(t, f, "a") },
		func() {
			now := time.Now()
			os.Chtimes(f, now, now)
		},
		func() { write(t, filepath.Join(dir, "other"), "z") },
	}
	for i, do := range noop {
		do()
		select {
		case changed := <-checks:
			if len(changed) != 0 {
				t.Fatalf("no-op %d reported %q", i, changed)
			}
		case <-time.After(within):
			t.Fatalf("no-op %d: the files were never compared", i)
		}
	}
	select {
	case got := <-w.Changes():
		t.Fatalf("reported %q after no-op events", got)
	default:
	}
	write(t, f, "b")
	expectChange(t, w, f)
}

// Changes not received are merged: the watcher holds one list at most.
func TestChangesMerged(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	write(t, a, "1")
	write(t, b, "1")
	checks := make(chan []string, 256)
	t.Cleanup(func() { goleak.VerifyNone(t) })
	w, err := newWatcher(t.Context(), []string{a, b}, Options{Debounce: 20 * time.Millisecond}, func(changed []string) {
		select {
		case checks <- changed:
		default: // never blocks the watcher
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	waitCheck := func(want string) {
		t.Helper()
		for {
			select {
			case changed := <-checks:
				if slices.Contains(changed, want) {
					return
				}
			case <-time.After(within):
				t.Fatalf("change of %s never seen", want)
			}
		}
	}
	write(t, a, "2")
	waitCheck(a)
	write(t, b, "2")
	waitCheck(b)
	write(t, a, "3")
	waitCheck(a)
	expectChange(t, w, a, b)
}

func TestStopsOnContext(t *testing.T) {
	defer goleak.VerifyNone(t)
	f := filepath.Join(t.TempDir(), "tokens.yaml")
	ctx, cancel := context.WithCancel(context.Background())
	w, err := New(ctx, []string{f}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-w.done:
	case <-time.After(within):
		t.Fatal("watcher still running after its context ended")
	}
	w.Close() // still fine
	w.Close()
}

func TestMissingDirectory(t *testing.T) {
	defer goleak.VerifyNone(t)
	_, err := New(t.Context(), []string{filepath.Join(t.TempDir(), "nope", "tokens.yaml")}, Options{})
	if err == nil {
		t.Fatal("watching a file in a missing directory: no error")
	}
	if _, err := New(t.Context(), nil, Options{}); err == nil {
		t.Fatal("watching no files: no error")
	}
}
