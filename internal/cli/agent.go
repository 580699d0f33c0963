package cli

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/alecthomas/kong"
	"github.com/pires/go-proxyproto"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/config/configfile"
	"github.com/diglett/diglett/internal/inspect"
	"github.com/diglett/diglett/internal/transport"
)

type agentCmd struct {
	Gateway       []string         `short:"g" required:"" sep:"none" placeholder:"HOST[:PORT]" help:"Gateway to connect to, port 20000 when none is given (repeatable: the names are published on every gateway)."`
	Retry         bool             `help:"Keep trying at start while the gateway cannot be reached (or is busy), with the backoff of reconnects, instead of exiting: for services started at boot. Wrong credentials still stop the agent."`
	Name          []string         `short:"n" sep:"none" placeholder:"NAME" help:"Name to publish (repeatable; required unless --config gives tunnels)."`
	Token         string           `short:"t" placeholder:"TOKEN" help:"Token the gateway knows this agent by."`
	TokenFile     string           `name:"token-file" type:"existingfile" placeholder:"FILE" help:"Read the token from this file (white space around it trimmed) instead of -t, which other users of the machine can see."`
	User          string           `placeholder:"USER" help:"User to log in as, on gateways that take users and passwords; the password comes from --password-file or DIGLETT_PASSWORD."`
	PasswordFile  string           `name:"password-file" type:"existingfile" placeholder:"FILE" help:"Read the password of --user from this file: one line, its line ending trimmed."`
	IdentityKey   string           `name:"identity-key" type:"path" placeholder:"FILE" help:"Sign a fresh short-lived token for each login with this identity key (made by diglett keygen) instead of --token."`
	Port          int              `placeholder:"N" help:"Ask for this public TCP port, or UDP port with --udp (it must be free and in the gateway's range)."`
	Fingerprint   string           `placeholder:"SHA256:..." help:"Trust only the gateway whose key has this fingerprint (printed by diglett-server at start)."`
	CA            string           `name:"ca" type:"existingfile" placeholder:"FILE" help:"Verify the gateway's certificate against this CA bundle (PEM) instead of the system roots; disables pinning on first use."`
	DebugAddr     string           `name:"debug-addr" placeholder:"ADDR" help:"Serve the Go profiler (/debug/pprof/) on this loopback address, e.g. 127.0.0.1:6061."`
	Inspect       string           `placeholder:"ADDR" help:"Serve the request inspector (a live page of the HTTP requests, their JSON API with replay, /metrics and /readyz) on this loopback address, or off. Default: 127.0.0.1:4040 when the output is a terminal, off otherwise."`
	InspectSize   int              `name:"inspect-size" default:"100" placeholder:"N" help:"Requests the inspector keeps, the oldest dropped first (1 to 100000)."`
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
	ProxyProtocol string           `name:"proxy-protocol" default:"off" enum:"off,v1,v2" help:"Start each TCP connection to the backend with a PROXY protocol header (v1 text, v2 binary) carrying the visitor's address as its source and the backend's address as its destination, for backends that read it (nginx: listen ... proxy_protocol). A tunnel's proxy_protocol in --config overrides it."`
	BasicAuth     string           `name:"basic-auth" placeholder:"USER:PASS" help:"Make the gateway ask HTTP visitors for this user and password (the tunnel's raw TCP port then refuses visitors)."`
	AllowIPs      []string         `name:"allow-ips" sep:"," placeholder:"CIDR" help:"Let only visitors from these addresses or CIDR prefixes in, e.g. 10.0.0.0/8,192.0.2.7."`
	H2C           bool             `name:"h2c" help:"The backend speaks HTTP/2 without TLS (gRPC, say): the gateway speaks HTTP/2 to it."`
	UDP           bool             `name:"udp" help:"Publish a UDP service: the gateway opens a public UDP port for each name and relays datagrams to the backend (a UDP HOST:PORT), through a socket per visitor address. A tunnel's udp: true in --config does the same for that tunnel."`
	UDPIdle       time.Duration    `name:"udp-idle-timeout" default:"60s" help:"End a UDP visitor's flow (and its socket to the backend) after this long without a datagram either way; 0: never."`
	UDPMaxFlows   int              `name:"udp-max-flows" default:"1024" placeholder:"N" help:"UDP visitor flows each tunnel may have open at once; the gateway's next visitor address is refused."`
	Backend       string           `arg:"" optional:"" placeholder:"BACKEND" help:"Local service to publish, HOST:PORT (a bare PORT means localhost:PORT, http://HOST:PORT means HOST:PORT); required unless --config gives tunnels."`
	VersionFlag   kong.VersionFlag `name:"version" env:"-" help:"Print the version and exit."`
	Config        string           `type:"existingfile" placeholder:"FILE" help:"YAML configuration file (version: 1): a key per flag (known_gateways for --known-gateways), plus tunnels: [{name: web, backend: localhost:3000}, ...] to serve several tunnels, each with its own backend. Flags and DIGLETT_* variables override it."`

	LogFlags `embed:""`
}

// Agent runs diglett with args until ctx ends or a fatal error.
func Agent(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && keyCommands[args[0]] != nil {
		return keyCommands[args[0]](ctx, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "completion" {
		return Completion("diglett", args[1:], stdout, stderr)
	}
	var c agentCmd
	fr := &FileResolver{Load: configfile.LoadAgent}
	if err := Parse(&c, "diglett", "The diglett agent: publishes a local service through a diglett gateway.\n\nIdentity keys: \"diglett keygen\" makes one, \"diglett token sign\" signs a token with it (see their --help).", args, stdout, stderr, fr); err != nil {
		return err
	}
	if err := c.gatewayPorts(); err != nil {
		return err
	}
	log := c.Logger(stderr)
	groups, err := c.tunnelGroups(fr.file)
	if err != nil {
		return err
	}
	if err := CheckIdleTimeout(c.KeepAlive, c.MaxIdle, log); err != nil {
		return err
	}
	cfg := diglett.Config{
		Gateway:         c.Gateway[0],
		Gateways:        c.Gateway[1:],
		Transport:       c.Transport,
		Connections:     c.Connections,
		WebSocketAddr:   c.WSAddr,
		Token:           c.Token,
		Fingerprint:     c.Fingerprint,
		KnownGateways:   c.KnownGateways,
		KeepAlivePeriod: c.KeepAlive,
		MaxIdleTimeout:  c.MaxIdle,
		Logger:          log,
	}
	if err := c.credentials(&cfg); err != nil {
		return err
	}
	if err := useIdentityKey(&cfg, c.IdentityKey, stderr); err != nil {
		return err
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
		if err := ServeDebug(ctx, c.DebugAddr, log); err != nil {
			return err
		}
	}
	o := forwardOptions(c.DialTimeout, c.DrainTimeout, c.HalfClose, log)
	if err := c.udpOptions(&o); err != nil {
		return err
	}
	if c.InspectSize < 1 || c.InspectSize > inspect.MaxSize {
		return fmt.Errorf("--inspect-size %d: want 1 to %d", c.InspectSize, inspect.MaxSize)
	}
	ins, err := startInspector(ctx, c.Inspect, c.InspectSize, stdout, groups, c.DialTimeout, log)
	if err != nil {
		return err
	}
	defer ins.stop()
	ins.wire(&o)
	return serveTunnels(ctx, cfg, groups, o, stdout, ins.listeningFunc(), c.Retry)
}

// backendAddr accepts HOST:PORT, a bare PORT or http://HOST:PORT.
func backendAddr(s string) (string, error) {
	s, err := backendURL(s)
	if err != nil {
		return "", err
	}
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

// udpOptions sets the forwarder's bounds of UDP flows from the command
// line, where a zero idle timeout means "no bound".
func (c *agentCmd) udpOptions(o *diglett.ForwardOptions) error {
	if c.UDPMaxFlows < 1 {
		return fmt.Errorf("--udp-max-flows %d: want at least 1", c.UDPMaxFlows)
	}
	if c.UDPIdle < 0 {
		return fmt.Errorf("--udp-idle-timeout %v: want 0 (no bound) or more", c.UDPIdle)
	}
	o.MaxUDPFlows, o.UDPIdleTimeout = c.UDPMaxFlows, c.UDPIdle
	if o.UDPIdleTimeout == 0 {
		o.UDPIdleTimeout = -1
	}
	return nil
}

// udpConflict refuses the options a UDP tunnel cannot have; the names
// are the options' spellings where they were given (flags or file keys).
func udpConflict(udp, basicAuth, h2c, proxyProtocol string, t configfile.Tunnel) error {
	switch {
	case t.BasicAuth != "":
		return fmt.Errorf("%s with %s: a UDP tunnel has no HTTP address where the gateway could ask visitors for a password", udp, basicAuth)
	case t.H2C:
		return fmt.Errorf("%s with %s: a UDP tunnel carries datagrams, not HTTP/2", udp, h2c)
	case t.ProxyProtocol != "" && t.ProxyProtocol != "off":
		return fmt.Errorf("%s with %s: the PROXY protocol header starts a TCP connection; a UDP backend gets the visitors' datagrams alone", udp, proxyProtocol)
	}
	return nil
}

// proxyProtocolVersion is the version of a --proxy-protocol value (or a
// tunnel's proxy_protocol): 1 or 2, or 0 for off.
func proxyProtocolVersion(s string) int {
	switch s {
	case "v1":
		return diglett.ProxyProtocolV1
	case "v2":
		return diglett.ProxyProtocolV2
	}
	return 0
}

// localProxyHeader starts c, a replay's connection to a backend, with a
// PROXY protocol header of version v that carries no address (v1
// UNKNOWN, v2 LOCAL): the replay comes from the agent, not a visitor. It
// closes c when the header cannot be written; v 0 writes nothing.
func localProxyHeader(c net.Conn, v int) error {
	if v == 0 {
		return nil
	}
	hdr, err := proxyproto.HeaderProxyFromAddrs(byte(v), nil, nil).Format()
	if err == nil {
		_, err = c.Write(hdr)
	}
	if err != nil {
		c.Close()
		return fmt.Errorf("proxy protocol header: %w", err)
	}
	return nil
}

// forwardOptions turns the command line's bounds into diglett.Forward's
// options. On the command line zero means "no bound" (or "at once" for the
// drain), as it did before the forwarder moved into the library, where zero
// takes the default: zero becomes negative.
func forwardOptions(dial, drain, halfClose time.Duration, log *slog.Logger) diglett.ForwardOptions {
	noZero := func(d time.Duration) time.Duration {
		if d == 0 {
			return -1
		}
		return d
	}
	return diglett.ForwardOptions{
		DialTimeout:      noZero(dial),
		DrainTimeout:     noZero(drain),
		HalfCloseTimeout: noZero(halfClose),
		Logger:           log,
	}
}

// CheckIdleTimeout refuses a --max-idle-timeout below the floor, and says
// when it lowers the keep-alive period (the agent's flags as the gateway's).
func CheckIdleTimeout(keepAlive, maxIdle time.Duration, log *slog.Logger) error {
	if maxIdle < transport.MinMaxIdleTimeout {
		return fmt.Errorf("--max-idle-timeout %v: want at least %v (a busy network would pass for a dead peer)", maxIdle, transport.MinMaxIdleTimeout)
	}
	tc := transport.Config{KeepAlivePeriod: keepAlive, MaxIdleTimeout: maxIdle}
	if period, lowered := tc.KeepAliveLowered(); lowered {
		log.Warn("keep-alive period lowered to half the idle timeout",
			"keep_alive_period", period, "asked", keepAlive, "max_idle_timeout", maxIdle,
			"fix", "set --max-idle-timeout to at least twice --keep-alive-period")
	}
	return nil
}
