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
	"sync/atomic"
	"time"

	"github.com/alecthomas/kong"

	"github.com/diglett/diglett"
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
	MaxIdle       time.Duration    `name:"max-idle-timeout" aliases:"keepalive" default:"15s" help:"Detect a dead gateway (no answer at all) within this time."`
	Transport     string           `default:"auto" enum:"auto,tcp,quic,ws" help:"How to reach the gateway: tcp (TLS), quic, ws (WebSocket over TLS, through HTTPS_PROXY if set), or auto: the first that works in that order, trying the faster ones again later."`
	Connections   int              `default:"2" help:"Sessions to keep to each gateway; visitors are spread over them and one dying loses only its own connections."`
	WSAddr        string           `name:"ws-addr" placeholder:"HOST:PORT" help:"Where WebSocket sessions go when the agent port is blocked (default: port 443 of the gateway's host)."`
	Proxy         string           `placeholder:"URL" help:"HTTP proxy for WebSocket sessions, http://[user:pass@]host:port (default: HTTPS_PROXY and NO_PROXY from the environment)."`
	DialTimeout   time.Duration    `default:"10s" help:"Give up on reaching the backend after this time."`
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
			fmt.Fprintf(stdout, "%s: %s -> %s\n", t.Name, u, backend)
		}
	}
	return forward(ctx, ln, backend, c.DialTimeout, log)
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

// forward serves visitors from ln by dialing backend, until ctx ends or
// the listener stops on a fatal error. When ctx ends it stops taking new
// visitors, gives those in flight up to drainTimeout, then disconnects.
func forward(ctx context.Context, ln *diglett.Listener, backend string, dialTimeout time.Duration, log *slog.Logger) error {
	var (
		mu       sync.Mutex
		active   = make(map[net.Conn]struct{})
		wg       sync.WaitGroup
		draining atomic.Bool
		drained  = make(chan struct{})
	)
	stop := context.AfterFunc(ctx, func() {
		defer close(drained)
		draining.Store(true)
		if err := ln.Drain(); err != nil {
			log.Debug("could not tell the gateway to send no more visitors", "err", err)
		}
		log.Info("shutting down: waiting for open connections", "timeout", drainTimeout)
		drain(&mu, active, drainTimeout)
		ln.Close()
	})
	defer stop()
	d := net.Dialer{Timeout: dialTimeout}
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				<-drained
				wg.Wait()
				return nil
			}
			ln.Close()
			drain(&mu, active, 0)
			wg.Wait()
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		vc := c.(*diglett.Conn)
		if draining.Load() {
			vc.Abort(nil)
			continue
		}
		mu.Lock()
		active[vc] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				mu.Lock()
				delete(active, vc)
				mu.Unlock()
			}()
			l := log.With("tunnel", vc.Name(), "visitor", vc.RemoteAddr().String())
			bc, err := d.Dial("tcp", backend)
			if err != nil {
				l.Warn("backend refused the connection", "backend", backend, "err", err)
				vc.Abort(err)
				return
			}
			l.Debug("visitor connected")
			up, down, err := relay.Pipe(vc, bc)
			l.Debug("visitor disconnected", "sent", up, "received", down, "err", err)
		}()
	}
}

// drainTimeout is how long a stopping agent waits for open connections.
const drainTimeout = 10 * time.Second

// drain waits until no connection is active, for at most grace, then
// closes those still open.
func drain(mu *sync.Mutex, active map[net.Conn]struct{}, grace time.Duration) {
	deadline := time.Now().Add(grace)
	for {
		mu.Lock()
		n := len(active)
		if n == 0 || !time.Now().Before(deadline) {
			for c := range active {
				c.Close()
			}
			mu.Unlock()
			return
		}
		mu.Unlock()
		time.Sleep(50 * time.Millisecond)
	}
}
