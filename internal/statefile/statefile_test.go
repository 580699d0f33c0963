package statefile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/diglett/diglett/internal/testutil/privilege"
)

func TestRead(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		setup   func(t *testing.T, path string)
		absent  bool   // the error wraps fs.ErrNotExist
		problem string // else in the *Error's text
	}{
		{"absent", func(t *testing.T, path string) {}, true, ""},
		{"dangling symlink", func(t *testing.T, path string) {
			must(t, os.Symlink(path+".gone", path))
		}, false, "does not exist"},
		{"symlink loop", func(t *testing.T, path string) {
			must(t, os.Symlink(path+".b", path))
			must(t, os.Symlink(path, path+".b"))
		}, false, "symbolic link loop"},
		{"directory", func(t *testing.T, path string) {
			must(t, os.Mkdir(path, 0o700))
		}, false, "is a directory"},
		{"fifo", func(t *testing.T, path string) {
			must(t, syscall.Mkfifo(path, 0o600))
		}, false, "not a regular file"},
		{"no permission", func(t *testing.T, path string) {
			// Read without the privilege root has to read it anyway.
			must(t, os.WriteFile(path, []byte("x"), 0))
		}, false, "permission denied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "state")
			tc.setup(t, path)
			var err error
			privilege.WithoutFileAccess(func() error {
				_, err = Read(path)
				return nil
			})
			t.Log(err)
			if tc.absent {
				if !errors.Is(err, fs.ErrNotExist) {
					t.Fatalf("Read of an absent file: %v, want fs.ErrNotExist", err)
				}
				return
			}
			var se *Error
			if !errors.As(err, &se) || errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("Read: %v, want an *Error that is not ErrNotExist", err)
			}
			if !strings.HasPrefix(err.Error(), path+": ") || !strings.Contains(err.Error(), tc.problem) {
				t.Errorf("error %q: want %s: ... %s", err, path, tc.problem)
			}
		})
	}
}

func TestReadPrivate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	private, shared := filepath.Join(dir, "private"), filepath.Join(dir, "shared")
	must(t, os.WriteFile(private, []byte("k"), 0o600))
	must(t, os.WriteFile(shared, []byte("k"), 0o600))
	must(t, os.Chmod(shared, 0o644))
	if data, warn, err := ReadPrivate(private); err != nil || warn != "" || string(data) != "k" {
		t.Errorf("mode 0600: %q %q %v", data, warn, err)
	}
	data, warn, err := ReadPrivate(shared)
	if err != nil || string(data) != "k" {
		t.Fatal(data, err)
	}
	t.Log(warn)
	if !strings.Contains(warn, "chmod 600 "+shared) || !strings.Contains(warn, "0644") {
		t.Errorf("warning %q does not give the mode and the fix", warn)
	}
}

func TestWriteAtomic(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "state")
	must(t, WriteAtomic(path, []byte("one"), 0o600))
	must(t, WriteAtomic(path, []byte("two"), 0o600))
	if data, err := Read(path); err != nil || string(data) != "two" {
		t.Fatalf("after two writes: %q %v", data, err)
	}
	st, err := os.Stat(path)
	must(t, err)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", st.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
}

// Of processes creating one file at once, exactly one wins; the others get
// fs.ErrExist, and nobody ever reads a partial file.
func TestCreateExclusive(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	data := []byte(strings.Repeat("k", 64<<10))
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		wins int
	)
	for range 8 {
		wg.Go(func() {
			err := CreateExclusive(path, data, 0o600)
			if err != nil && !errors.Is(err, fs.ErrExist) {
				t.Error(err)
			}
			if got, rerr := Read(path); rerr == nil && len(got) != len(data) {
				t.Errorf("read a partial file: %d bytes", len(got))
			}
			if err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if wins != 1 {
		t.Errorf("%d creators won, want 1", wins)
	}
	// A dangling link is something: it is not replaced.
	link := filepath.Join(dir, "link")
	must(t, os.Symlink(filepath.Join(dir, "gone"), link))
	if err := CreateExclusive(link, data, 0o600); !errors.Is(err, fs.ErrExist) {
		t.Errorf("create over a dangling link: %v, want fs.ErrExist", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "gone")); !errors.Is(err, fs.ErrNotExist) {
		t.Error("create followed the dangling link")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("temporary files left: %v", entries)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
