package identity

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil/privilege"
)

// A key file that exists but cannot be read gives one clear error at once:
// it names the file, and LoadOrCreateKey neither loops nor recurses.
func TestKeyFileUnreadable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, file string)
		want  string // in the error
	}{
		{"dangling symlink", func(t *testing.T, file string) {
			must(t, os.Symlink(filepath.Join(filepath.Dir(file), "missing"), file))
		}, "does not exist"},
		{"symlink loop", func(t *testing.T, file string) {
			must(t, os.Symlink(file+".b", file))
			must(t, os.Symlink(file, file+".b"))
		}, "loop"},
		{"directory", func(t *testing.T, file string) {
			must(t, os.Mkdir(file, 0o700))
		}, "directory"},
		{"no permission", func(t *testing.T, file string) {
			// Root would read it anyway: the key is loaded on a thread
			// without that privilege (privilege.WithoutFileAccess).
			must(t, os.WriteFile(file, nil, 0))
		}, "permission"},
		{"empty", func(t *testing.T, file string) {
			must(t, os.WriteFile(file, nil, 0o600))
		}, "empty"},
		{"garbage", func(t *testing.T, file string) {
			must(t, os.WriteFile(file, []byte("not a key\x00\xff"), 0o600))
		}, "not a PEM private key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			file := filepath.Join(dir, KeyFile)
			tc.setup(t, file)
			errc := make(chan error, 1)
			go func() {
				if tc.name == "no permission" {
					errc <- privilege.WithoutFileAccess(func() error {
						_, _, err := LoadOrCreateKey(dir)
						return err
					})
					return
				}
				_, _, err := LoadOrCreateKey(dir)
				errc <- err
			}()
			var err error
			select {
			case err = <-errc:
			case <-time.After(5 * time.Second):
				t.Fatal("LoadOrCreateKey did not return within 5s")
			}
			if err == nil {
				t.Fatal("unusable key file accepted")
			}
			t.Log(err)
			if !strings.Contains(err.Error(), file) {
				t.Errorf("error %q does not name the file", err)
			}
			// The test's directory names hold the case names: look for
			// the words in the rest.
			if rest := strings.ReplaceAll(err.Error(), dir, ""); !strings.Contains(rest, tc.want) {
				t.Errorf("error %q lacks %q", err, tc.want)
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// A key that other users may read is used, with a warning that gives the fix.
func TestKeyFileReadableByOthers(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	k, err := OpenKey(dir)
	if err != nil || !k.Created || k.Warning != "" {
		t.Fatalf("new key: %+v %v", k, err)
	}
	must(t, os.Chmod(k.File, 0o644))
	k, err = OpenKey(dir)
	if err != nil || k.Created {
		t.Fatalf("reload: %+v %v", k, err)
	}
	t.Log(k.Warning)
	if !strings.Contains(k.Warning, "chmod 600 "+k.File) {
		t.Errorf("warning %q lacks the fix", k.Warning)
	}
}

// Gateways starting at once on one data dir end up with the same key, made
// by one of them.
func TestKeyCreateRace(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data")
	keys := make([]Key, 8)
	errs := make([]error, len(keys))
	var wg sync.WaitGroup
	for i := range keys {
		wg.Go(func() { keys[i], errs[i] = OpenKey(dir) })
	}
	wg.Wait()
	created := 0
	want, _ := Fingerprint(keys[0].Signer.Public())
	for i, k := range keys {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if k.Created {
			created++
		}
		if got, _ := Fingerprint(k.Signer.Public()); got != want {
			t.Errorf("gateway %d has key %s, gateway 0 %s", i, got, want)
		}
	}
	if created != 1 {
		t.Errorf("%d gateways created the key, want 1", created)
	}
}
