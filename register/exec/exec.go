// Package exec is the registerer that runs a command of the operator's
// (a hook) for each event of a route: when a tunnel's route is
// published (DIGLETT_EVENT=register), when it is taken down
// (DIGLETT_EVENT=unregister) and once when the gateway starts
// (DIGLETT_EVENT=sweep: forget every route you made before). The route
// is in the command's environment; a non-zero exit is a failure, which
// the gateway retries with backoff. The command runs without a shell,
// without stdin, and is killed with every process it started at its
// timeout.
package exec

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	osexec "os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/printable"
	"github.com/diglett/diglett/register/event"
)

// Events, the values of DIGLETT_EVENT.
const (
	EventRegister   = event.Register
	EventUnregister = event.Unregister
	EventSweep      = event.Sweep
)

// The environment variables a hook gets, besides the gateway's own
// environment. On sweep only DIGLETT_EVENT is set.
const (
	EnvEvent    = "DIGLETT_EVENT"    // register, unregister or sweep
	EnvName     = "DIGLETT_NAME"     // the tunnel's name
	EnvHosts    = "DIGLETT_HOSTS"    // its host names, separated by spaces
	EnvHost     = "DIGLETT_HOST"     // its first host name, or empty
	EnvPort     = "DIGLETT_PORT"     // its public TCP port on the gateway
	EnvIdentity = "DIGLETT_IDENTITY" // the owner of the name
)

// envNames are the variables the hook gets from the route: any the
// gateway's own environment has are dropped, so that a hook never sees a
// stale one.
var envNames = []string{EnvEvent, EnvName, EnvHosts, EnvHost, EnvPort, EnvIdentity}

// DefaultTimeout bounds a run of the hook when Config.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// Bounds of a run.
const (
	// MaxOutput is how much of the hook's output (stdout and stderr
	// together) is kept: its last bytes.
	MaxOutput = 4 << 10
	// maxReason bounds, in runes, the line of output an error quotes.
	maxReason = 200
	// maxRunning bounds the hooks running at once (many tunnels restored
	// at start); more wait for one to end, within their context.
	maxRunning = 16
	// pipeWait is how long the output of a hook that exited is read
	// further, while something it left running holds its output open.
	pipeWait = time.Second
)

// Config configures a Hook. Zero fields take the defaults documented on
// them.
type Config struct {
	// Command is the program and its arguments; the program is looked
	// up in PATH at each run. Required. No shell is involved: write
	// []string{"sh", "-c", "..."} for one.
	Command []string
	// Timeout bounds each run: the hook and every process it started
	// (its process group) are killed then. Default: DefaultTimeout.
	Timeout time.Duration
	// Dir is the working directory of the hook. Default: the gateway's.
	Dir string
	// Logger is where each run's output is logged, at Debug. Default:
	// slog.Default().
	Logger *slog.Logger
}

// Hook is a registerer that runs a command for each event.
type Hook struct {
	// Registerer calls run for each event.
	event.Registerer

	command []string
	timeout time.Duration
	dir     string
	log     *slog.Logger
	slots   chan struct{} // one per hook running
}

var (
	_ gateway.Registerer = (*Hook)(nil)
	_ gateway.Sweeper    = (*Hook)(nil)
)

// New checks c and builds its Hook. It runs nothing.
func New(c Config) (*Hook, error) {
	if len(c.Command) == 0 || c.Command[0] == "" {
		return nil, errors.New("command: give the program and its arguments, such as [/etc/diglett/hook, --verbose]")
	}
	if c.Timeout < 0 {
		return nil, errors.New("timeout cannot be negative")
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Dir != "" {
		fi, err := os.Stat(c.Dir)
		if err != nil {
			return nil, fmt.Errorf("dir: %w", err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("dir %s: not a directory", c.Dir)
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	h := &Hook{
		command: c.Command,
		timeout: c.Timeout,
		dir:     c.Dir,
		log:     c.Logger,
		slots:   make(chan struct{}, maxRunning),
	}
	h.Registerer = event.Registerer{Notify: h.run}
	return h, nil
}

// String names the hook in the gateway's logs.
func (h *Hook) String() string { return "exec " + filepath.Base(h.command[0]) }

// errTimedOut is the cause of a run's context at the hook's timeout.
var errTimedOut = errors.New("timed out")

// run runs the hook once for event and r (nil on sweep), and returns an
// error unless it exited with status 0.
func (h *Hook) run(ctx context.Context, event string, r *gateway.Route) error {
	if ctx.Err() != nil {
		return fmt.Errorf("hook %s: not started: %w", event, context.Cause(ctx))
	}
	select {
	case h.slots <- struct{}{}:
		defer func() { <-h.slots }()
	case <-ctx.Done():
		return fmt.Errorf("hook %s: not started: %w", event, context.Cause(ctx))
	}
	ctx, cancel := context.WithTimeoutCause(ctx, h.timeout, errTimedOut)
	defer cancel()
	cmd := osexec.CommandContext(ctx, h.command[0], h.command[1:]...)
	cmd.Dir = h.dir
	cmd.Env = environ(os.Environ(), event, r)
	var out tail
	cmd.Stdout, cmd.Stderr = &out, &out // stdin: the null device
	inGroup(cmd)
	cmd.WaitDelay = pipeWait
	start := time.Now()
	err := cmd.Run()
	log := h.log.With("hook", h.command[0], "event", event)
	if r != nil {
		log = log.With("tunnel", r.Name)
	}
	if err == nil || errors.Is(err, osexec.ErrWaitDelay) && ctx.Err() == nil {
		// ErrWaitDelay alone: the hook exited with status 0, but left
		// something running that holds its output.
		log.Debug("hook ran", "took", time.Since(start).Round(time.Millisecond), "output", out.String())
		return nil
	}
	if ctx.Err() != nil {
		why := context.Cause(ctx)
		if errors.Is(why, errTimedOut) {
			return fmt.Errorf("hook %s: timed out after %v%s", event, h.timeout, out.reason())
		}
		return fmt.Errorf("hook %s: stopped: %v%s", event, why, out.reason())
	}
	return fmt.Errorf("hook %s: %w%s", event, err, out.reason())
}

// environ is the hook's environment: the gateway's, less any variable
// of envNames, plus the event's.
func environ(base []string, event string, r *gateway.Route) []string {
	env := make([]string, 0, len(base)+len(envNames))
	for _, kv := range base {
		if name, _, _ := strings.Cut(kv, "="); !slices.Contains(envNames, name) {
			env = append(env, kv)
		}
	}
	env = append(env, EnvEvent+"="+event)
	if r == nil {
		return env
	}
	host := ""
	if len(r.Hosts) > 0 {
		host = r.Hosts[0]
	}
	return append(env,
		EnvName+"="+r.Name,
		EnvHosts+"="+strings.Join(r.Hosts, " "),
		EnvHost+"="+host,
		EnvPort+"="+strconv.Itoa(r.Port),
		EnvIdentity+"="+r.Identity,
	)
}

// tail keeps the last MaxOutput bytes written to it. The command's
// stdout and stderr both write to it, from one goroutine each.
type tail struct {
	mu  sync.Mutex
	buf []byte
	cut bool // bytes were dropped from the front
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	if len(p) > MaxOutput {
		p = p[len(p)-MaxOutput:]
		t.cut = true
	}
	if over := len(t.buf) + len(p) - MaxOutput; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
		t.cut = true
	}
	t.buf = append(t.buf, p...)
	return n, nil
}

// String is the output kept, with "…" in front when its start was
// dropped. The log's handler quotes it.
func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cut {
		return "…" + string(t.buf)
	}
	return string(t.buf)
}

// reason is ": " and the first non-empty line of the output kept, made
// safe to print and bounded, or "" when there is none.
func (t *tail) reason() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, line := range strings.Split(string(t.buf), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			return ": " + printable.String(line, maxReason)
		}
	}
	return ""
}
