// Package proxytest runs a real HTTP forward proxy, tinyproxy, for tests of
// agents that reach the gateway through one with CONNECT. Each Start runs
// its own tinyproxy process, on a free loopback port with its own
// configuration and log in the test's temporary directory, independent of
// any tinyproxy system service.
package proxytest

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

// Options configures a proxy. The zero value allows every client on
// loopback to CONNECT to any port without credentials.
type Options struct {
	// ConnectPorts are the only ports CONNECT may reach; a CONNECT to
	// another port is refused with 403. Empty: every port. []int{0}
	// refuses every CONNECT.
	ConnectPorts []int
	// User and Password, when User is set, are the Basic credentials the
	// proxy requires: it answers CONNECT without credentials with 407,
	// with wrong ones with 401. Neither may contain white space or
	// quotes.
	User, Password string
}

// Proxy is a running tinyproxy. It is stopped when the test ends.
type Proxy struct {
	// URL is the proxy's URL, http://127.0.0.1:port, without credentials.
	URL *url.URL
	// LogFile is the path of tinyproxy's log.
	LogFile string

	opts Options
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
}

// startTimeout bounds how long tinyproxy may take to start listening.
const startTimeout = 10 * time.Second

// Start starts tinyproxy with opts for the rest of t. Without the
// tinyproxy binary on PATH it fails t under CI=true and skips it
// otherwise; scripts/test-deps.sh installs it.
func Start(t testing.TB, opts Options) *Proxy {
	t.Helper()
	bin := testutil.Program(t, "tinyproxy")
	for _, s := range []string{opts.User, opts.Password} {
		if strings.ContainsAny(s, " \t\r\n\"'") {
			t.Fatalf("proxytest: credential %q contains white space or quotes", s)
		}
	}
	// The free port may be taken between finding it and tinyproxy binding
	// it: try a few.
	var errs []error
	for range 3 {
		p, err := start(bin, t.TempDir(), opts)
		if err == nil {
			t.Cleanup(p.stop)
			return p
		}
		errs = append(errs, err)
	}
	t.Fatalf("start tinyproxy: %v", errors.Join(errs...))
	return nil
}

func start(bin, dir string, opts Options) (*Proxy, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	p := &Proxy{
		URL:     &url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))},
		LogFile: filepath.Join(dir, "tinyproxy.log"),
		opts:    opts,
		done:    make(chan struct{}),
	}
	conf := filepath.Join(dir, "tinyproxy.conf")
	if err := os.WriteFile(conf, []byte(p.config(port)), 0o600); err != nil {
		return nil, err
	}
	// Output before the log file is open (a bad configuration, say) goes
	// to stderr: keep it in a file, so no goroutine copies it.
	out, err := os.Create(filepath.Join(dir, "tinyproxy.out"))
	if err != nil {
		return nil, err
	}
	defer out.Close()
	p.cmd = exec.Command(bin, "-d", "-c", conf) // -d: stay in the foreground
	p.cmd.Stdout, p.cmd.Stderr = out, out
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()

	deadline := time.Now().Add(startTimeout)
	for !strings.Contains(p.Log(), "Accepting connections") {
		select {
		case <-p.done:
			b, _ := os.ReadFile(out.Name())
			return nil, fmt.Errorf("tinyproxy exited: %s\n%s", b, p.Log())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("tinyproxy did not start listening within %v:\n%s", startTimeout, p.Log())
		}
	}
	return p, nil
}

func (p *Proxy) config(port int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Port %d\n", port)
	b.WriteString("Listen 127.0.0.1\n")
	b.WriteString("Allow 127.0.0.1\n")
	b.WriteString("Timeout 600\n")
	fmt.Fprintf(&b, "LogFile \"%s\"\n", p.LogFile)
	b.WriteString("LogLevel Info\n")
	for _, port := range p.opts.ConnectPorts {
		fmt.Fprintf(&b, "ConnectPort %d\n", port)
	}
	if p.opts.User != "" {
		fmt.Fprintf(&b, "BasicAuth %s %s\n", p.opts.User, p.opts.Password)
	}
	return b.String()
}

// AuthURL is URL with the credentials of the Options.
func (p *Proxy) AuthURL() *url.URL {
	u := *p.URL
	u.User = url.UserPassword(p.opts.User, p.opts.Password)
	return &u
}

// Log returns tinyproxy's log so far.
func (p *Proxy) Log() string {
	b, _ := os.ReadFile(p.LogFile)
	return string(b)
}

var (
	connectRE     = regexp.MustCompile(`Request \(file descriptor \d+\): CONNECT (\S+) HTTP/`)
	establishedRE = regexp.MustCompile(`Established connection to host "[^"]*"`)
)

// Connects returns the targets (host:port) of the CONNECT requests the
// proxy has received so far, in order, whether it granted them or not.
func (p *Proxy) Connects() []string {
	var targets []string
	for _, m := range connectRE.FindAllStringSubmatch(p.Log(), -1) {
		targets = append(targets, m[1])
	}
	return targets
}

// Established reports how many connections the proxy has opened to a
// destination so far: the CONNECT tunnels (and plain requests) it relayed.
func (p *Proxy) Established() int {
	return len(establishedRE.FindAllStringIndex(p.Log(), -1))
}

// stop kills the proxy and waits for it to exit.
func (p *Proxy) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Kill()
	<-p.done
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
