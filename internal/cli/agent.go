package cli

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/alecthomas/kong"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/internal/printable"
	"github.com/diglett/diglett/internal/relay"
)

type agentCmd struct {
	Gateway       []string         `short:"g" required:"" sep:"none" placeholder:"HOST:PORT" help:"Gateway to connect to (repeatable: the names are published on every gateway)."`
	Name          []string         `short:"n" required:"" sep:"none" placeholder:"NAME" help:"Name to publish (repeatable)."`
	Token         string           `short:"t" placeholder:"TOKEN" help:"Token the gateway knows this agent by."`
	Debug         int              `short:"d" type:"counter" help:"Log more (repeatable)."`
	Port          int              `placeholder:"N" help:"Ask for this public TCP port (it must be free and in the gateway's range)."`
	Fingerprint   string           `placeholder:"SHA256:..." help:"Trust only the gateway whose key has this fingerprint (printed by diglett-server at start)."`
	CA            string           `name:"ca" type:"existingfile" placeholder:"FILE" help:"Verify the gateway's certificate against this CA bundle (PEM) instead of the system roots; disables pinning on first use."`
	DebugAddr     string           `name:"debug-addr" placeholder:"ADDR" help:"Serve the Go profiler (/debug/pprof/) on this loopback address, e.g. 127.0.0.1:6061."`
	KnownGateways string           `type:"path" placeholder:"FILE" help:"File of pinned gateway keys (default: known_gateways in the user's config dir)."`
	KeepAlive     time.Duration    `name:"keep-alive-period" default:"5s" help:"Send a keepalive after this long without traffic."`
	MaxIdle       time.Duration    `name:"max-idle-timeout" aliases:"keepalive" default:"15s" help:"Detect a dead gateway (no answer at all) within this time; at least 2s. A longer --keep-alive-period is lowered to half of it."`
	Transport     string           `default:"auto" enum:"auto,tcp,quic,ws" help:"How to reach the gateway: tcp (TLS), quic, ws (WebSocket over TLS, through HTTPS_PROXY if set), or auto: the first that works in that order, trying the faster ones again later."`
	Connections   int              `default:"2" help:"Sessions to keep to each gateway; visitors are spread over them and one dying loses only its own connections."`
	WSAddr        string           `name:"ws-addr" placeholder:"HOST:PORT" help:"Where WebSocket sessions go when the agent port is blocked (default: port 443 of the gateway's host)."`
	Proxy         string           `placeholder:"URL" help:"HTTP proxy for WebSocket sessions, http://[user:pass@]host:port (default: HTTPS_PROXY and NO_PROXY from the environment)."`
	DialTimeout   time.Duration    `default:"10s" help:"Give up on reaching the backend after this time."`
	DrainTimeout  time.Duration    `name:"drain-timeout" default:"10s" help:"On SIGINT or SIGTERM, wait this long for open connections to end, then close them and exit (a second signal exits at once)."`
	HalfClose     time.Duration    `name:"half-close-timeout" default:"60s" help:"Close a connection that one side has half-closed when the other sends nothing for this long."`
	BasicAuth     string           `name:"basic-auth" placeholder:"USER:PASS" help:"Make the gateway ask HTTP visitors for this user and password (the tunnel's raw TCP port then refuses visitors)."`
	AllowIPs      []string         `name:"allow-ips" sep:"," placeholder:"CIDR,..." help:"Let only visitors from these addresses or CIDR prefixes in, e.g. 10.0.0.0/8,192.0.2.7."`
	H2C           bool             `name:"h2c" help:"The backend speaks HTTP/2 without TLS (gRPC, say): the gateway speaks HTTP/2 to it."`
	Backend       string           `arg:"" placeholder:"BACKEND" help:"Local service to publish, HOST:PORT (a bare PORT means localhost:PORT)."`
	VersionFlag   kong.VersionFlag `name:"version" env:"-" help:"Print the version and exit."`
}

// Agent runs diglett with args until ctx ends or a fatal error.
func Agent(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c agentCmd
	if err := parse(&c, "diglett", "The diglett agent: publishes a local service through a diglett gateway.", args, stdout, stderr); err != nil {
		return err
	}
	log := newLogger(stderr, c.Debug)
	backend, err := backendAddr(c.Backend)
	if err != nil {
		return err
	}
	if err := checkIdleTimeout(c.KeepAlive, c.MaxIdle, log); err != nil {
		return err
	}
	cfg := diglett.Config{
		Gateway:         c.Gateway[0],
		Gateways:        c.Gateway[1:],
		Transport:       c.Transport,
		Connections:     c.Connections,
		WebSocketAddr:   c.WSAddr,
		Name:            c.Name[0],
		Names:           c.Name[1:],
		Token:           c.Token,
		Port:            c.Port,
		Fingerprint:     c.Fingerprint,
		KnownGateways:   c.KnownGateways,
		KeepAlivePeriod: c.KeepAlive,
		MaxIdleTimeout:  c.MaxIdle,
		Logger:          log,
		BasicAuth:       c.BasicAuth,
		AllowIPs:        c.AllowIPs,
		H2C:             c.H2C,
	}
	if c.Proxy != "" {
		u, err := url.Parse(c.Proxy)
		if err != nil || u.Host == "" {
			return fmt.Errorf("--proxy %q: want http://[user:pass@]host:port", c.Proxy)
		}
		cfg.Proxy = u
	}
	if c.CA != "" {
		pem, err := os.ReadFile(c.CA)
		if err != nil {
			return fmt.Errorf("--ca: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return fmt.Errorf("--ca %s: no PEM certificates in the file", c.CA)
		}
	}
	if c.DebugAddr != "" {
		if err := serveDebug(ctx, c.DebugAddr, log); err != nil {
			return err
		}
	}
	ln, err := diglett.Listen(ctx, cfg)
	if err != nil {
		return err
	}
	for _, t := range ln.AllTunnels() {
		for _, u := range t.URLs() {
			// The URLs come from the gateway: printed safe.
			fmt.Fprintf(stdout, "%s: %s -> %s\n", t.Name, printable.String(u, 0), backend)
		}
	}
	return forward(ctx, ln, backend, forwardOptions{
		dialTimeout:      c.DialTimeout,
		drainTimeout:     c.DrainTimeout,
		halfCloseTimeout: c.HalfClose,
	}, log)
}

// backendAddr accepts HOST:PORT or a bare PORT.
func backendAddr(s string) (string, error) {
	if p, err := strconv.Atoi(s); err == nil {
		s = net.JoinHostPort("localhost", strconv.Itoa(p))
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", fmt.Errorf("backend %q: want HOST:PORT, e.g. localhost:9000", s)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return "", fmt.Errorf("backend %q: bad port", s)
	}
	if host == "" {
		s = net.JoinHostPort("localhost", port)
	}
	return s, nil
}

// forwardOptions tunes forward.
type forwardOptions struct {
	dialTimeout      time.Duration // bounds a backend dial
	drainTimeout     time.Duration // how long a stopping agent waits for open connections
	halfCloseTimeout time.Duration // bounds a half-closed relay (relay.Options)
}

// forward serves visitors from ln by dialing backend, until ctx ends or
// the listener stops on a fatal error. When ctx ends it stops taking new
// visitors, gives those in flight up to o.drainTimeout, then aborts both
// sides of every relay still open and disconnects. A relay whose session
// to the gateway ends is aborted at once.
func forward(ctx context.Context, ln *diglett.Listener, backend string, o forwardOptions, log *slog.Logger) error {
	var (
		rs      = newRelays()
		wg      sync.WaitGroup
		drained = make(chan struct{})
	)
	stop := context.AfterFunc(ctx, func() {
		defer close(drained)
		if err := ln.Drain(); err != nil {
			log.Debug("could not tell the gateway to send no more visitors", "err", err)
		}
		log.Info("shutting down: waiting for open connections", "connections", rs.len(), "timeout", o.drainTimeout)
		if !rs.wait(o.drainTimeout) {
			log.Warn("drain time is up: closing the connections still open", "connections", rs.len())
		}
		rs.abortAll()
		ln.Close()
	})
	defer stop()
	d := net.Dialer{Timeout: o.dialTimeout}
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				<-drained
				wg.Wait()
				return nil
			}
			ln.Close()
			rs.abortAll()
			wg.Wait()
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		vc := c.(*diglett.Conn)
		r := rs.add(vc)
		if r == nil { // draining
			vc.Abort(nil)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer rs.remove(r)
			r.run(&d, backend, o.halfCloseTimeout, log)
		}()
	}
}

// relayPair is a visitor's connection and, once dialed, its backend's.
type relayPair struct {
	vc        *diglett.Conn
	ctx       context.Context // ends when the pair is aborted: bounds the dial
	cancel    context.CancelFunc
	stopWatch func() bool // stops watching the visitor's session

	mu      sync.Mutex
	bc      net.Conn
	aborted bool
}

// run dials the backend and relays both ways until both sides are done or
// the pair is aborted.
func (p *relayPair) run(d *net.Dialer, backend string, halfClose time.Duration, log *slog.Logger) {
	vc := p.vc
	l := log.With("tunnel", vc.Name(), "visitor", vc.RemoteAddr().String())
	bc, err := d.DialContext(p.ctx, "tcp", backend)
	if err != nil {
		if p.ctx.Err() == nil {
			l.Warn("backend refused the connection", "backend", backend, "err", err)
		}
		vc.Abort(err)
		return
	}
	if !p.setBackend(bc) {
		bc.Close()
		return
	}
	l.Debug("visitor connected")
	up, down, err := relay.PipeWith(vc, bc, relay.Options{HalfCloseTimeout: halfClose})
	l.Debug("visitor disconnected", "sent", up, "received", down, "err", err)
}

// setBackend records the backend connection; false when the pair was
// aborted meanwhile.
func (p *relayPair) setBackend(bc net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.aborted {
		return false
	}
	p.bc = bc
	return true
}

// abort resets both sides, which ends the relay's goroutines at once.
func (p *relayPair) abort() {
	p.mu.Lock()
	p.aborted = true
	bc := p.bc
	p.mu.Unlock()
	p.cancel()
	p.vc.Reset()
	if bc != nil {
		if tc, ok := bc.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		bc.Close()
	}
}

// relays are the relays of a forwarder.
type relays struct {
	mu     sync.Mutex
	pairs  map[*relayPair]struct{}
	closed bool          // no more relays: the forwarder is stopping
	empty  chan struct{} // closed when pairs empties; made by wait
}

func newRelays() *relays { return &relays{pairs: make(map[*relayPair]struct{})} }

// add starts tracking vc's relay; nil once the relays are closed. The
// relay is aborted as soon as vc's session to the gateway ends.
func (rs *relays) add(vc *diglett.Conn) *relayPair {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.closed {
		return nil
	}
	p := &relayPair{vc: vc}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.stopWatch = context.AfterFunc(vc.SessionContext(), p.abort)
	rs.pairs[p] = struct{}{}
	return p
}

func (rs *relays) remove(p *relayPair) {
	p.stopWatch()
	p.cancel()
	rs.mu.Lock()
	defer rs.mu.Unlock()
	delete(rs.pairs, p)
	if len(rs.pairs) == 0 && rs.empty != nil {
		close(rs.empty)
		rs.empty = nil
	}
}

func (rs *relays) len() int {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return len(rs.pairs)
}

// wait waits until no relay is left, for at most d; it reports whether
// none is.
func (rs *relays) wait(d time.Duration) bool {
	rs.mu.Lock()
	if len(rs.pairs) == 0 {
		rs.mu.Unlock()
		return true
	}
	if rs.empty == nil {
		rs.empty = make(chan struct{})
	}
	empty := rs.empty
	rs.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-empty:
		return true
	case <-t.C:
		return false
	}
}

// abortAll takes no more relays and aborts those still open.
func (rs *relays) abortAll() {
	rs.mu.Lock()
	rs.closed = true
	pairs := make([]*relayPair, 0, len(rs.pairs))
	for p := range rs.pairs {
		pairs = append(pairs, p)
	}
	rs.mu.Unlock()
	for _, p := range pairs {
		p.abort()
	}
}
