package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/term"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/internal/inspect"
)

// defaultInspectAddr is where the request inspector listens when
// --inspect is not given and standard output is a terminal.
const defaultInspectAddr = "127.0.0.1:4040"

// agentInspector is the agent's request inspector, serving on its own
// listener. A nil *agentInspector is an inspector turned off.
type agentInspector struct {
	*inspect.Inspector
	listeners atomic.Pointer[[]*diglett.Listener] // once every tunnel is registered
	cancel    context.CancelFunc
	done      sync.WaitGroup
}

// startInspector starts the inspector --inspect asks for (flag: an
// address, "off", or empty for the default) and prints its address to
// stdout; nil when it is off. The default address being taken only turns
// it off, with a warning; an address given that cannot be served is an
// error.
func startInspector(ctx context.Context, flag string, size int, stdout io.Writer, groups []tunnelGroup, dialTimeout time.Duration, log *slog.Logger) (*agentInspector, error) {
	addr, explicit := flag, flag != ""
	switch {
	case flag == "off":
		return nil, nil
	case !explicit && !isTerminal(stdout):
		return nil, nil
	case !explicit:
		addr = defaultInspectAddr
	}
	backends := make(map[string]string)
	proxyProto := make(map[string]int)
	ai := &agentInspector{}
	for _, g := range groups {
		for name, b := range g.backends {
			backends[name] = b
			proxyProto[name] = g.proxyProto[name]
		}
	}
	d := net.Dialer{Timeout: dialTimeout}
	ins, err := inspect.New(inspect.Config{
		Size: size,
		Dial: func(ctx context.Context, tunnel string) (net.Conn, error) {
			c, err := d.DialContext(ctx, "tcp", backends[tunnel])
			if err != nil {
				return nil, err
			}
			if err := localProxyHeader(c, proxyProto[tunnel]); err != nil {
				return nil, err
			}
			return c, nil
		},
		Ready:  ai.ready,
		Logger: log.With("component", "inspector"),
	})
	if err != nil {
		return nil, fmt.Errorf("request inspector: %w", err)
	}
	ai.Inspector = ins
	errNotLoopback := fmt.Errorf("--inspect %s: the inspector shows the requests and replays them, so it listens on loopback addresses only (127.0.0.1:PORT)", addr)
	if host, _, err := net.SplitHostPort(addr); err == nil {
		if ip := net.ParseIP(host); host == "" || (ip != nil && !ip.IsLoopback()) {
			return nil, errNotLoopback // refused before anything listens there
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		if !explicit {
			log.Warn("request inspector off: its address is taken, by another agent perhaps; --inspect ADDR picks another", "addr", addr, "err", err)
			return nil, nil
		}
		return nil, fmt.Errorf("--inspect %s: %w (give another address, or --inspect off)", addr, err)
	}
	if ip := ln.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() {
		ln.Close()
		return nil, errNotLoopback
	}
	fmt.Fprintf(stdout, "inspect: http://%s\n", ln.Addr())
	ctx, ai.cancel = context.WithCancel(ctx)
	ai.done.Add(1)
	go func() {
		defer ai.done.Done()
		if err := ins.Serve(ctx, ln); err != nil {
			log.Warn("request inspector stopped", "err", err)
		}
	}()
	return ai, nil
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// wire makes o's relays report to the inspector.
func (ai *agentInspector) wire(o *diglett.ForwardOptions) {
	if ai == nil {
		return
	}
	o.Inspect = func(c *diglett.Conn) (fromVisitor, fromBackend io.WriteCloser) {
		return ai.Observe(c.Name(), c.RemoteAddr())
	}
}

// listening is serveTunnels' listening: every tunnel is registered, and
// /readyz follows lns's sessions from now on.
func (ai *agentInspector) listening(lns []*diglett.Listener) {
	ai.listeners.Store(&lns)
}

// ready is /readyz's answer: every tunnel is registered and each of its
// listeners has a live session to a gateway, so visitors can reach every
// tunnel; not while one is reconnecting to all its gateways.
func (ai *agentInspector) ready() bool {
	lns := ai.listeners.Load()
	if lns == nil {
		return false
	}
	for _, ln := range *lns {
		if ln.Sessions() == 0 {
			return false
		}
	}
	return true
}

// stop stops serving and waits until done.
func (ai *agentInspector) stop() {
	if ai == nil {
		return
	}
	ai.cancel()
	ai.done.Wait()
}

// listeningFunc is ai.listening, or nil when ai is off.
func (ai *agentInspector) listeningFunc() func([]*diglett.Listener) {
	if ai == nil {
		return nil
	}
	return ai.listening
}
