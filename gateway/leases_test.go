package gateway

import (
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

// listenPorts listens on n free loopback ports.
func listenPorts(t *testing.T, n int) ([]net.Listener, []int) {
	t.Helper()
	var lns []net.Listener
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return lns, ports
}

// leaseServer is a Server on the lease file path, not serving agents.
func leaseServer(t *testing.T, path string, lo, hi int, log io.Writer) (*Server, error) {
	t.Helper()
	return New(Config{
		TLS: testutil.ServerTLS(t), Auth: allowAll,
		PortMin: lo, PortMax: hi, PublicHost: "127.0.0.1", Lease: time.Minute,
		LeaseFile: path, Logger: slog.New(slog.NewTextHandler(log, nil)),
	})
}

func writeLeases(t *testing.T, path string, recs ...leaseRecord) {
	t.Helper()
	data, err := json.Marshal(leaseFile{Version: leaseFileVersion, Leases: recs})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestLeaseRestore: what a restarted gateway keeps from its lease file.
// Live tunnels get a whole lease from the restart, leased ones keep their
// end, expired and malformed records are dropped, a taken port leaves the
// name reserved without one; Close writes the state back.
func TestLeaseRestore(t *testing.T) {
	t.Parallel()
	// The first two ports are freed for the restored leases; another
	// program keeps holding the third.
	lns, ports := listenPorts(t, 3)
	lns[0].Close()
	lns[1].Close()
	lo, hi := ports[0], ports[0]
	for _, p := range ports {
		lo, hi = min(lo, p), max(hi, p)
	}

	path := filepath.Join(t.TempDir(), "leases.json")
	now := time.Now()
	later := now.Add(30 * time.Second).Round(time.Second)
	writeLeases(t, path,
		leaseRecord{Name: "live", Identity: "alice", Port: ports[0], Live: true},
		leaseRecord{Name: "leased", Identity: "bob", Port: ports[1], Expires: later},
		leaseRecord{Name: "expired", Identity: "carol", Port: 1, Expires: now.Add(-time.Second)},
		leaseRecord{Name: "Bad Name", Identity: "dave", Port: 2, Expires: later},
		leaseRecord{Name: "leased", Identity: "eve", Port: 3, Expires: later},
		leaseRecord{Name: "portless", Identity: "frank", Port: ports[2], Expires: later},
	)
	var logs strings.Builder
	s, err := leaseServer(t, path, lo, hi, &logs)
	if err != nil {
		t.Fatal(err)
	}

	s.reg.mu.Lock()
	got := map[string]*tunnel{}
	for name, tn := range s.reg.byName {
		got[name] = tn
	}
	owned := s.reg.owned["alice"]
	s.reg.mu.Unlock()
	if len(got) != 3 || got["live"] == nil || got["leased"] == nil || got["portless"] == nil {
		t.Fatalf("restored %v, want live, leased and portless", keys(got))
	}
	if got["leased"].identity != "bob" || got["leased"].ln == nil || !got["leased"].leaseEnd.Equal(later) {
		t.Errorf("leased: identity %q, listening %v, end %v; want bob, listening, %v", got["leased"].identity, got["leased"].ln != nil, got["leased"].leaseEnd, later)
	}
	if end := got["live"].leaseEnd; end.Before(now.Add(time.Minute - time.Second)) {
		t.Errorf("live tunnel's lease ends %v, want a whole lease from the restart", end)
	}
	if got["portless"].ln != nil {
		t.Error("portless: bound a port another program holds")
	}
	if owned != 1 {
		t.Errorf("alice owns %d tunnels, want 1 (quotas count restored leases)", owned)
	}
	for _, want := range []string{"skipping a malformed lease", "skipping a second lease of the same name", "leased port is not free after the restart", "leases restored"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
	// The port of a restored lease is held: nobody else can bind it.
	if ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))); err == nil {
		ln.Close()
		t.Error("the leased port was not held")
	}

	s.Close()
	recs, err := readLeases(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 3 {
		t.Fatalf("after Close the file holds %d leases, want 3: %+v", len(recs), recs)
	}
	for _, r := range recs {
		if r.Live || r.Expires.IsZero() {
			t.Errorf("%s: saved live=%v expires=%v, want a lease end", r.Name, r.Live, r.Expires)
		}
	}
}

// TestLeaseFileUnreadable: a file that is there but cannot be used stops
// New with an error naming it, and nothing is listening afterwards.
func TestLeaseFileUnreadable(t *testing.T) {
	t.Parallel()
	for name, content := range map[string]string{
		"garbage":       "{",
		"unknown field": `{"version": 1, "leases": [], "extra": true}`,
		"version":       `{"version": 2, "leases": []}`,
	} {
		path := filepath.Join(t.TempDir(), "leases.json")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := leaseServer(t, path, 30000, 30010, io.Discard); err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: err = %v, want an error naming %s", name, err, path)
		}
	}
}

func keys(m map[string]*tunnel) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}
