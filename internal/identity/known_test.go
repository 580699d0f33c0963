package identity

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// fp is a well-formed fingerprint for tests, different for each n.
func fp(n int) string {
	return "SHA256:" + fmt.Sprintf("%043d", n)[:43]
}

// A malformed line is an error naming the file and the line, never skipped:
// skipping it would pin the gateway again next to the entry the user wrote.
func TestKnownGatewaysMalformed(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, content string }{
		{"one field", "gw:1\n"},
		{"three fields", "gw:1 " + fp(1) + " extra\n"},
		{"bad fingerprint", "gw:1 SHA256:abc\n"},
		{"md5", "gw:1 MD5:00:11\n"},
		{"no port", "gw " + fp(1) + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			k := KnownGateways{Path: filepath.Join(t.TempDir(), "known_gateways")}
			content := "# pinned gateways\n\nother:2 " + fp(2) + "\n" + tc.content
			must(t, os.WriteFile(k.Path, []byte(content), 0o600))
			_, ok, err := k.Lookup("gw:1")
			if err == nil {
				t.Fatalf("malformed line accepted (found=%v)", ok)
			}
			t.Log(err)
			for _, w := range []string{k.Path, "line 4"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// Sessions that pin the same new gateway at once write one line.
func TestKnownGatewaysConcurrentAdd(t *testing.T) {
	t.Parallel()
	k := KnownGateways{Path: filepath.Join(t.TempDir(), "known_gateways")}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, _, err := k.Add("gw:1", fp(1)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	data, err := os.ReadFile(k.Path)
	must(t, err)
	if n := strings.Count(string(data), "gw:1 "); n != 1 {
		t.Fatalf("%d lines for one gateway:\n%s", n, data)
	}
}

// A gateway pinned meanwhile to another key is not pinned again: Add
// returns the entry in force, which the caller refuses as a mismatch.
func TestKnownGatewaysAddFindsOtherKey(t *testing.T) {
	t.Parallel()
	k := KnownGateways{Path: filepath.Join(t.TempDir(), "known_gateways")}
	// A line written by hand, without a final newline.
	must(t, os.WriteFile(k.Path, []byte("other:2 "+fp(2)), 0o600))
	if _, added, err := k.Add("gw:1", fp(1)); err != nil || !added {
		t.Fatalf("first pin: %v %v", added, err)
	}
	e, added, err := k.Add("GW:1", fp(3))
	if err != nil || added || e.Fingerprint != fp(1) || e.Line != 2 {
		t.Fatalf("second pin with another key: %+v added=%v %v, want the first entry", e, added, err)
	}
	data, _ := os.ReadFile(k.Path)
	if want := "other:2 " + fp(2) + "\ngw:1 " + fp(1) + "\n"; string(data) != want {
		t.Errorf("file %q, want %q", data, want)
	}
}

// Agent processes pinning the same gateways at once write one line each: the
// file lock covers what the process-wide mutex cannot.
func TestKnownGatewaysAddAcrossProcesses(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "known_gateways")
	const procs = 6
	var wg sync.WaitGroup
	for range procs {
		wg.Go(func() {
			cmd := exec.Command(os.Args[0])
			cmd.Env = append(os.Environ(), knownGatewaysHelper+"="+path)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("helper: %v\n%s", err, out)
			}
		})
	}
	wg.Wait()
	data, err := os.ReadFile(path)
	must(t, err)
	if n := strings.Count(string(data), "\n"); n != helperGateways {
		t.Fatalf("%d lines for %d gateways:\n%s", n, helperGateways, data)
	}
}

// helperGateways is how many gateways each helper process pins, in the
// same order, so that the processes race for each one.
const helperGateways = 100

// TestMain runs as one agent process of TestKnownGatewaysAddAcrossProcesses
// when that test starts the test binary again with knownGatewaysHelper set.
func TestMain(m *testing.M) {
	if path := os.Getenv(knownGatewaysHelper); path != "" {
		k := KnownGateways{Path: path}
		for i := range helperGateways {
			if _, _, err := k.Add(fmt.Sprintf("gw:%d", i+1), fp(i)); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// knownGatewaysHelper names the file a helper process pins gateways in.
const knownGatewaysHelper = "KNOWN_GATEWAYS_HELPER"
