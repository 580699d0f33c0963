// Package dnstest runs a real authoritative DNS server for a test: named
// (from the bind9 package, which scripts/test-deps.sh installs) on a free
// loopback port, primary for one zone that a TSIG key made for the test
// may update (RFC 2136), its files in the test's temporary directory,
// killed when the test ends. Dig queries it with the real dig program.
package dnstest

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/diglett/diglett/internal/testutil"
)

// Programs run by the package, looked up in PATH (named also in
// /usr/sbin, which some PATHs lack).
const (
	ServerProgram = "named"
	DigProgram    = "dig"
)

// startTimeout bounds how long the server may take to serve the zone.
const startTimeout = 20 * time.Second

// KeyName and KeyAlgorithm are those of the test's TSIG key.
const (
	KeyName      = "dnstest-key"
	KeyAlgorithm = "hmac-sha256"
)

// Server is a running authoritative server.
type Server struct {
	// Addr is its address, 127.0.0.1:PORT, for UDP and TCP.
	Addr string
	// Zone is the zone it serves, without the trailing dot.
	Zone string
	// KeyName, KeyAlgorithm and Secret (base64) are the TSIG key that may
	// update any name of the zone.
	KeyName, KeyAlgorithm, Secret string

	dig  string
	port string
}

// Start runs the server for t with zone loaded: its SOA, an NS record
// ns1.ZONE and ns1's A record 127.0.0.1, nothing else. When a program is
// missing, t fails under CI and is skipped elsewhere.
func Start(t testing.TB, zone string) *Server {
	t.Helper()
	bin := program(t, ServerProgram)
	dig := testutil.Program(t, DigProgram)
	zone = strings.ToLower(strings.TrimSuffix(zone, "."))
	if _, ok := dns.IsDomainName(zone); !ok || zone == "" {
		t.Fatalf("dnstest: bad zone %q", zone)
	}
	// A copy of the program runs, from the test's temporary directory:
	// some systems confine the installed program by its path to its own
	// system directories, which would deny it the test's files.
	bin = copyProgram(t, bin)
	secret := make([]byte, 32)
	rand.Read(secret)
	s := &Server{
		Zone:         zone,
		KeyName:      KeyName,
		KeyAlgorithm: KeyAlgorithm,
		Secret:       base64.StdEncoding.EncodeToString(secret),
		dig:          dig,
	}
	// A port picked free may be taken before the server binds it: try
	// again with another.
	return testutil.StartRetrying(t, "dnstest: named", func() (*Server, error) { return s.start(t, bin) })
}

// program finds name in PATH or in /usr/sbin.
func program(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	p := filepath.Join("/usr/sbin", name)
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		return p
	}
	return testutil.Program(t, name)
}

// copyProgram copies the program at path into a temporary directory of t
// and returns the copy's path.
func copyProgram(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("dnstest: %v", err)
	}
	dst := filepath.Join(t.TempDir(), filepath.Base(path))
	if err := os.WriteFile(dst, b, 0o700); err != nil {
		t.Fatalf("dnstest: %v", err)
	}
	return dst
}

func (s *Server) start(t testing.TB, bin string) (*Server, error) {
	ports, err := testutil.FreePorts(1)
	if err != nil {
		return nil, err
	}
	port := strconv.Itoa(ports[0])
	// A directory of its own per attempt: the zone's journal and the
	// server's other files are written there.
	dir, err := os.MkdirTemp(t.TempDir(), "named-")
	if err != nil {
		return nil, err
	}
	zoneFile := filepath.Join(dir, "zone.db")
	soa := fmt.Sprintf(`$TTL 300
@	IN SOA ns1.%[1]s. hostmaster.%[1]s. 1 3600 600 86400 60
@	IN NS ns1.%[1]s.
ns1	IN A 127.0.0.1
`, s.Zone)
	if err := os.WriteFile(zoneFile, []byte(soa), 0o600); err != nil {
		return nil, err
	}
	// No control channel (it would take the one shared port 953), no
	// recursion, no notifies, IPv4 loopback only; the key may change any
	// record of the zone. No interface scans: other tests add and remove
	// interfaces on this host while it runs, and its one address never
	// changes. A scan can close and reopen its listening sockets, and a
	// query in CI once found the port closed mid-test.
	conf := fmt.Sprintf(`options {
	directory %[1]q;
	pid-file %[2]q;
	session-keyfile %[3]q;
	managed-keys-directory %[1]q;
	listen-on port %[4]s { 127.0.0.1; };
	listen-on-v6 { none; };
	automatic-interface-scan no;
	interface-interval 0;
	recursion no;
	dnssec-validation no;
	notify no;
	allow-query { any; };
};
controls { };
key %[5]q {
	algorithm %[6]s;
	secret %[7]q;
};
zone %[8]q {
	type primary;
	file %[9]q;
	update-policy { grant %[5]s zonesub ANY; };
};
`, dir, filepath.Join(dir, "named.pid"), filepath.Join(dir, "session.key"), port,
		s.KeyName, s.KeyAlgorithm, s.Secret, s.Zone, zoneFile)
	confFile := filepath.Join(dir, "named.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		return nil, err
	}

	out := &testutil.Buffer{}
	// -g: foreground, logs on stderr; -4: IPv4 only; -n 1: one worker
	// thread. It runs as the user running the tests (root included): no
	// -u, so it keeps its rights over the temporary directory.
	cmd := exec.Command(bin, "-g", "-4", "-n", "1", "-c", confFile)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = out, out
	exited, stop, err := testutil.StartProcess(cmd)
	if err != nil {
		return nil, fmt.Errorf("start: %w", err)
	}

	addr := net.JoinHostPort("127.0.0.1", port)
	deadline := time.Now().Add(startTimeout)
	for {
		err = s.checkSOA(addr)
		if err == nil && strings.Contains(out.String(), "address in use") {
			err = errors.New("port taken")
		}
		if err == nil {
			break
		}
		select {
		case werr := <-exited:
			return nil, fmt.Errorf("exited (%v): %s", werr, out.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) || strings.Contains(out.String(), "address in use") {
			stop()
			return nil, fmt.Errorf("zone %s not served within %v: %v: %s", s.Zone, startTimeout, err, out.String())
		}
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("named output:\n%s", out.String())
		}
	})
	srv := *s
	srv.Addr, srv.port = addr, port
	return &srv, nil
}

// checkSOA asks addr for the zone's SOA record, with authority.
func (s *Server) checkSOA(addr string) error {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(s.Zone), dns.TypeSOA)
	m.RecursionDesired = false
	c := &dns.Client{Timeout: time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	r, _, err := c.ExchangeContext(ctx, m, addr)
	if err != nil {
		return err
	}
	if r.Rcode != dns.RcodeSuccess || !r.Authoritative || len(r.Answer) == 0 {
		return fmt.Errorf("SOA query answered %s (authoritative %v, %d answers)", dns.RcodeToString[r.Rcode], r.Authoritative, len(r.Answer))
	}
	return nil
}

// Dig runs dig against the server (dig @127.0.0.1 -p PORT ARGS...) and
// returns its output; a failing dig fails t.
func (s *Server) Dig(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	all := append([]string{"@127.0.0.1", "-p", s.port, "+time=2", "+tries=2"}, args...)
	out, err := exec.CommandContext(ctx, s.dig, all...).CombinedOutput()
	if err != nil {
		t.Fatalf("dig %s: %v: %s", strings.Join(all, " "), err, out)
	}
	return string(out)
}
