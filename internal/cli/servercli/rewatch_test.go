package servercli

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestChangedSinceBuild: of the files the last build read, the reload that
// follows a new watch names only those changed since; a file the build did
// not read is not named (it is new to the watch, not changed).
func TestChangedSinceBuild(t *testing.T) {
	dir := t.TempDir()
	cfg, tokens, fresh := filepath.Join(dir, "gateway.yaml"), filepath.Join(dir, "tokens.yaml"), filepath.Join(dir, "new.yaml")
	for _, f := range []string{cfg, tokens, fresh} {
		if err := os.WriteFile(f, []byte("one\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	r := &reloader{read: map[string]fileStamp{cfg: stampOf(cfg), tokens: stampOf(tokens)}}
	files := []string{cfg, tokens, fresh}
	if got := r.changedSinceBuild(files); len(got) != 0 {
		t.Fatalf("nothing written: %v changed, want none", got)
	}
	// A later time as well as another size, whatever the clock's grain.
	if err := os.WriteFile(cfg, []byte("two lines\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(cfg, later, later); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fresh, []byte("changed too\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := r.changedSinceBuild(files); !slices.Equal(got, []string{cfg}) {
		t.Fatalf("changed since the build: %v, want [%s]", got, cfg)
	}
	if err := os.Remove(tokens); err != nil {
		t.Fatal(err)
	}
	if got := r.changedSinceBuild(files); !slices.Equal(got, []string{cfg, tokens}) {
		t.Fatalf("after removing %s: %v, want both read files", tokens, got)
	}
}
