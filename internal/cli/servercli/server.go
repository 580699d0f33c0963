// Package servercli holds the command line of diglett-server, the
// gateway: its flags, subcommands (check-config, hash-password, status,
// portmap, completion) and the run loop that ties the gateway, ingress,
// cluster, home-network and management packages together. What it shares
// with the agent's command line is package cli's.
package servercli

import (
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/kong"
	"github.com/caddyserver/certmagic"

	"github.com/diglett/diglett/config"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/ingress"
	"github.com/diglett/diglett/internal/cli"
	"github.com/diglett/diglett/internal/identity"
	"github.com/diglett/diglett/internal/metrics"
	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/quictransport"
)

type serverCmd struct {
	Listen      string           `short:"l" default:"0.0.0.0:20000" placeholder:"ADDR" help:"Address agents connect to (default 0.0.0.0:20000)."`
	DataDir     string           `placeholder:"DIR" help:"Where the gateway keeps its key (default: /var/lib/diglett as root, else ~/.local/share/diglett)."`
	Ports       string           `default:"30000-40000" placeholder:"MIN-MAX" help:"Range of public ports given to tunnels (TCP, or UDP for UDP tunnels)."`
	PublicBind  string           `placeholder:"HOST" help:"Address public ports (TCP and UDP) listen on (default: all interfaces)."`
	Tokens      string           `type:"existingfile" placeholder:"FILE" help:"YAML file of agent tokens and the names each may publish. Without it anyone can register any name."`
	Watch       bool             `help:"Reload the --tokens file, or the --config file and the tokens files it names, as soon as they change (SIGHUP always reloads them). Follows editors' renames and Kubernetes ConfigMap updates."`
	Lease       time.Duration    `default:"60s" help:"How long a disconnected agent's names and ports stay reserved for it."`
	Cert        string           `type:"existingfile" placeholder:"FILE" help:"TLS certificate (PEM) for agent connections, e.g. from a CA. Default: a self-signed certificate for the key in the data dir."`
	Key         string           `type:"existingfile" placeholder:"FILE" help:"Private key (PEM) of --cert."`
	KeepAlive   time.Duration    `name:"keep-alive-period" default:"5s" help:"Send a keepalive after this long without traffic (over TLS and WebSocket half as long again: agents keep their sessions alive, and the gateway pings only an agent that does not)."`
	MaxIdle     time.Duration    `name:"max-idle-timeout" aliases:"keepalive" default:"15s" help:"Detect a dead agent (no answer at all) within this time; at least 2s. A longer --keep-alive-period is lowered to half of it."`
	DebugAddr   string           `name:"debug-addr" hidden:"" placeholder:"ADDR" help:"Deprecated name of --admin-addr."`
	AdminAddr   string           `name:"admin-addr" placeholder:"ADDR" help:"Serve the management listener here: health and readiness probes, metrics, the profiler, the dashboard (a page at /) and the JSON API (docs/API.md) that diglett-server status reads; e.g. 127.0.0.1:20001 (default off). Anywhere but loopback it needs --admin-token-file."`
	AdminToken  string           `name:"admin-token-file" type:"existingfile" placeholder:"FILE" help:"File holding a bearer token the management listener asks of every request but /healthz and /readyz (Authorization: Bearer TOKEN). Required for a non-loopback --admin-addr."`
	QUIC        bool             `name:"quic" default:"true" negatable:"" help:"Also take agents over QUIC on the --listen port number over UDP (--no-quic to disable)."`
	VersionFlag kong.VersionFlag `name:"version" env:"-" help:"Print the version and exit."`
	Config      string           `type:"existingfile" placeholder:"FILE" help:"YAML configuration file (version: 1): a key per flag (max_visitors for --max-visitors), plus auth and register modules. Flags and DIGLETT_* variables override it. Check one with: diglett-server check-config FILE."`

	MaxNamesPerIdentity    int `name:"max-names-per-identity" default:"64" placeholder:"N" help:"Names one identity may hold, live or leased (0: no limit; a tokens file entry may set its own quota)."`
	MaxPortsPerIdentity    int `name:"max-ports-per-identity" default:"64" placeholder:"N" help:"Public TCP ports one identity's tunnels may hold (0: no limit)."`
	MaxSessionsPerIdentity int `name:"max-sessions-per-identity" default:"64" placeholder:"N" help:"Agent sessions one identity may have logged in at once (0: no limit)."`
	MaxCertOrdersPerHour   int `name:"max-cert-orders-per-hour" default:"20" placeholder:"N" help:"Hosts of one identity's tunnels that may have a certificate ordered over ACME in any hour (0: no limit)."`

	MaxHandshakes          int `name:"max-handshakes" default:"1024" placeholder:"N" help:"Agent connections in their handshake (TLS and login) at once; beyond it the sources holding the most are cut off, or newcomers told the gateway is busy."`
	MaxHandshakesPerSource int `name:"max-handshakes-per-source" default:"32" placeholder:"N" help:"Agent connections in their handshake from one address (IPv6: one /64) at once; more are told the gateway is busy."`

	HalfCloseTimeout     time.Duration `name:"half-close-timeout" default:"60s" help:"Reset a TCP visitor's connection that one side has half-closed when the other sends nothing for this long."`
	MaxVisitors          int           `name:"max-visitors" default:"65536" placeholder:"N" help:"Visitor connections open at once on the whole gateway (TCP ports and HTTP(S)); more are refused at once. Lowered to fit the open-file limit."`
	MaxVisitorsPerTunnel int           `name:"max-visitors-per-tunnel" default:"16384" placeholder:"N" help:"TCP visitors plus HTTP requests in flight at once per tunnel; more are refused at once (HTTP: 503)."`

	UDPIdleTimeout       time.Duration `name:"udp-idle-timeout" default:"60s" help:"End a UDP tunnel's flow (one visitor address) when no datagram went either way for this long."`
	UDPMaxFlows          int           `name:"udp-max-flows" default:"1024" placeholder:"N" help:"Flows (visitor addresses) of one UDP tunnel at once; datagrams from more are dropped and counted."`
	UDPMaxFlowsPerSource int           `name:"udp-max-flows-per-source" default:"64" placeholder:"N" help:"Flows of one UDP tunnel from one visitor IP address at once; datagrams from more of its ports are dropped and counted."`

	Domain              string        `placeholder:"DOMAIN" help:"Serve tunnel NAME over HTTP(S) as NAME.DOMAIN on shared ports (point a wildcard DNS record *.DOMAIN at this host)."`
	HTTPAddr            string        `name:"http-addr" placeholder:"ADDR" help:"Address of the shared HTTP port (default :80 with --domain; 'off' to disable)."`
	HTTPSAddr           string        `name:"https-addr" placeholder:"ADDR" help:"Address of the shared HTTPS port (default :443 with --domain and a certificate: --cert/--key or ACME; 'off' to disable)."`
	TrustedProxies      []string      `sep:"," placeholder:"CIDR" help:"Proxies in front of the gateway whose X-Forwarded-* and Forwarded headers are kept; from anyone else they are dropped."`
	HTTPResponseTimeout time.Duration `name:"http-response-timeout" default:"60s" help:"Answer 504 when a backend takes longer than this to start its response."`
	ACMEEmail           string        `name:"acme-email" placeholder:"EMAIL" help:"Obtain certificates for NAME.DOMAIN automatically over ACME, with this contact address."`
	ACMECA              string        `name:"acme-ca" placeholder:"URL" help:"ACME directory URL (default: Let's Encrypt production). Setting it enables ACME."`
	ACMEStaging         bool          `name:"acme-staging" help:"Use Let's Encrypt's staging directory (test certificates). Enables ACME."`
	VisitorAccess       string        `name:"visitor-access" default:"allow" enum:"allow,deny,require" help:"Whether agents may guard tunnels with basic auth and IP allow-lists: allow, deny (refuse such tunnels) or require (refuse tunnels without)."`
	ACMECARoot          string        `name:"acme-ca-root" type:"existingfile" placeholder:"FILE" help:"Trust this CA bundle (PEM) for the ACME directory's own HTTPS (a private ACME server)."`

	HTTPBodyTimeout          time.Duration `name:"http-body-timeout" default:"60s" help:"End a visitor's request whose body sends nothing for this long (408, or the connection closed once the response has started); a slow upload that keeps moving is not limited."`
	HTTPMaxRequestsPerSource int           `name:"http-max-requests-per-source" default:"512" placeholder:"N" help:"HTTP requests in flight at once from one visitor address (IPv6: per /64); more are answered 429 Too Many Requests at once."`

	cli.LogFlags `embed:""`
	AccessLog    string `name:"access-log" placeholder:"off|stdout|FILE" help:"Where the access log goes, a line per HTTP request and per TCP visitor connection: off, stdout, or a FILE appended to, reopened on SIGHUP for log rotation (default: the gateway's log)."`

	// extraRegs are registerers of the gateway's own (the home
	// network's) that the register list of a reload does not replace.
	extraRegs []gateway.Registerer `kong:"-"`
	// gate runs the registerers on the cluster's leader only; nil off a
	// cluster.
	gate *leaderGate `kong:"-"`
}

// Server runs diglett-server with args until ctx ends; with the
// check-config subcommand it checks a configuration file and returns, with
// hash-password it hashes a password read from stdin, with status it
// prints the tunnels of a running gateway from its management listener,
// with portmap it opens the ports a service catalog asks for (portmapcmd.go).
func Server(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "check-config" {
		return checkConfig(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "hash-password" {
		return hashPassword(args[1:], os.Stdin, stdout, stderr)
	}
	if len(args) > 0 && args[0] == "completion" {
		return cli.Completion("diglett-server", args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "portmap" {
		return portmap(ctx, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "status" {
		return status(ctx, args[1:], stdout, stderr)
	}
	var c serverCmd
	fr := serverResolver()
	if err := cli.Parse(&c, "diglett-server", serverDesc, args, stdout, stderr, fr); err != nil {
		return err
	}
	file := serverFile(fr)
	// Many lines a second (the access log under load) leave in few
	// writes, each line at most 5 ms late (see cli.BatchWriter).
	bw := cli.NewBatchWriters(stderr, stdout)
	defer bw[0].Flush()
	defer bw[1].Flush()
	stderr, stdout = bw[0], bw[1]
	// The dashboard's recent errors and series, kept only for a
	// management listener.
	dash := newDashboard(c.AdminAddr != "" || c.DebugAddr != "")
	log := dash.logger(c.Logger(stderr))
	accessLog, accessFile, err := openAccessLog(&c.LogFlags, c.AccessLog, log, stdout)
	if err != nil {
		return err
	}
	defer accessFile.Close()
	// Served by the management listener at /metrics.
	mtr := metrics.New()
	// What a burst of agent logins leaves behind goes back to the system
	// once they are over (memtrim.go).
	trim := newMemTrim(log)
	defer trim.close()
	lo, hi, err := parsePorts(c.Ports)
	if err != nil {
		return err
	}
	if (c.Cert == "") != (c.Key == "") {
		return errors.New("--cert and --key go together")
	}
	if err := cli.CheckIdleTimeout(c.KeepAlive, c.MaxIdle, log); err != nil {
		return err
	}
	ing, err := c.ingress()
	if err != nil {
		return err
	}
	dataDir := c.DataDir
	if dataDir == "" {
		if dataDir, err = defaultDataDir(); err != nil {
			return err
		}
	}

	var cert tls.Certificate
	if c.Cert != "" {
		if cert, err = tls.LoadX509KeyPair(c.Cert, c.Key); err != nil {
			return fmt.Errorf("load certificate: %w", err)
		}
	} else {
		key, err := identity.OpenKey(dataDir)
		if err != nil {
			return err
		}
		if key.Created {
			log.Info("created a new gateway key", "file", key.File)
		}
		if key.Warning != "" {
			log.Warn("the gateway key is readable by other users: "+key.Warning, "file", key.File)
		}
		if cert, err = identity.SelfSigned(key.Signer, "localhost"); err != nil {
			return err
		}
	}
	fp, err := identity.Fingerprint(cert.PrivateKey.(interface{ Public() crypto.PublicKey }).Public())
	if err != nil {
		return err
	}

	// A node of a cluster: names, ports and certificates in etcd, and a
	// link to the other nodes. Left after the gateway stops (deferred
	// first).
	var cs *config.ClusterSettings
	if file != nil {
		cs = file.Cluster
	}
	node, err := joinCluster(ctx, cs, log)
	if err != nil {
		return err
	}
	var member gateway.Cluster
	leaseFile := filepath.Join(dataDir, "leases.json")
	if node != nil {
		defer node.close()
		member = node.m.ForGateway()
		leaseFile = "" // the cluster keeps the names and ports
	}

	rc := newRechecker(log)
	authn, regs, err := c.modules(file, log, rc.changed)
	if err != nil {
		return err
	}
	// Closed after the gateway (deferred first): its sessions may ask
	// until then.
	held := &heldAuth{log: log, a: authn, regs: regs}
	defer held.close()

	// A gateway at home: the router's port mappings, the host firewall
	// and DNS records, kept for the gateway's own ports (set once they
	// are bound) and each tunnel's, through a registerer of its own that
	// no reload replaces. Closed after the gateway (deferred first), so
	// the tunnels' mappings go before the rest.
	home, homeCfg, err := c.startHome(ctx, file, ing.acme, log)
	if err != nil {
		return err
	}
	if home != nil {
		defer closeHome(home, log)
	}

	// On a node of a cluster the registerers that tell outside systems
	// run on the leader only (see leaderGate).
	startRegs := regs
	if node != nil {
		c.gate = &leaderGate{regs: regs}
		startRegs = localRegisterers(regs)
		c.gate.home = home
	}

	trusted, err := protocol.ParsePrefixes(c.TrustedProxies)
	if err != nil {
		return fmt.Errorf("--trusted-proxies: %w", err)
	}
	srv, err := gateway.New(gateway.Config{
		TLS:           &tls.Config{Certificates: []tls.Certificate{cert}},
		Auth:          authn,
		Registerers:   slices.Concat(startRegs, c.extraRegs),
		PortMin:       lo,
		PortMax:       hi,
		PublicHost:    c.PublicBind,
		Lease:         c.Lease,
		Transport:     transport.Config{KeepAlivePeriod: c.KeepAlive, MaxIdleTimeout: c.MaxIdle},
		Logger:        log,
		AccessLog:     accessLog,
		Observer:      trimObserver{dash.observer(mtr), trim},
		Domain:        c.Domain,
		Hosts:         file.Hosts(),
		VisitorAccess: gateway.VisitorAccess(c.VisitorAccess),
		Quota:         c.quota(),
		LeaseFile:     leaseFile,
		Cluster:       member,

		MaxHandshakes:          c.MaxHandshakes,
		MaxHandshakesPerSource: c.MaxHandshakesPerSource,
		ProxyProtocolFrom:      proxyProtocolFrom(file),

		HalfCloseTimeout:     c.HalfCloseTimeout,
		MaxVisitors:          fitOpenFiles(c.MaxVisitors, log),
		MaxVisitorsPerTunnel: c.MaxVisitorsPerTunnel,

		UDPIdleTimeout:       c.UDPIdleTimeout,
		UDPMaxFlows:          c.UDPMaxFlows,
		UDPMaxFlowsPerSource: c.UDPMaxFlowsPerSource,
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	if node != nil {
		node.start(srv)
		node.observe(mtr.Registry())
	}
	rcCtx, stopRechecks := context.WithCancel(ctx)
	rcDone := make(chan struct{})
	go func() { defer close(rcDone); rc.run(rcCtx, srv) }()
	defer func() { stopRechecks(); <-rcDone }()
	// The HTTP(S) ingress reaches the gateway's tunnels through its
	// narrow interface; the gateway does not know it.
	web := ingress.New(srv, ingress.Config{
		TrustedProxies:       trusted,
		ResponseTimeout:      c.HTTPResponseTimeout,
		BodyReadTimeout:      c.HTTPBodyTimeout,
		MaxRequestsPerSource: c.HTTPMaxRequestsPerSource,
		Logger:               log,
		AccessLog:            accessLog,
		Observer:             dash.observer(mtr),
	})
	defer web.Close()
	reloads := make(chan reloadRequest)
	stopReloads, err := c.startReloads(ctx, srv, args, file, regs, held, rc.changed, reloads, accessFile.reopener(log), log)
	if err != nil {
		return err
	}
	defer stopReloads()
	if node != nil {
		leadCtx, stopLeading := context.WithCancel(ctx)
		led := make(chan struct{})
		go func() {
			defer close(led)
			node.m.Lead(leadCtx, "registerers", func(ctx context.Context) { c.gate.lead(ctx, srv, log) })
		}()
		defer func() {
			stopLeading()
			// A campaign cut short while etcd is away may not end
			// until the member is closed, which comes after.
			select {
			case <-led:
			case <-time.After(5 * time.Second):
			}
		}()
	}

	// Every listener is opened before anything is served, so that a port
	// in use fails the start with a clear error.
	type serveFunc func() error
	var serves []serveFunc
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	listen := func(what, addr string) (net.Listener, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, listenError(what, addr, err)
		}
		closers = append(closers, ln)
		return ln, nil
	}
	adminAddr, err := c.adminAddr(log)
	if err != nil {
		return err
	}
	var adm *adminServer
	if adminAddr != "" {
		aln, token, err := listenAdmin(adminAddr, c.AdminToken)
		if err != nil {
			return err
		}
		extra := map[string]http.Handler{"GET /traefik": traefikProvider{held}}
		if node != nil {
			extra["GET /api/v1/cluster"] = node.apiHandler()
		}
		page := dash.mount(extra)
		if adm, err = startAdmin(aln, token, srv, reloads, mtr.Handler(), extra, page, log); err != nil {
			aln.Close()
			return err
		}
		// Closed after the shutdown below: /readyz answers 503 meanwhile.
		defer adm.close()
	}
	ln, err := listen("agents", c.Listen)
	if err != nil {
		return err
	}
	serves = append(serves, func() error { return srv.Serve(ln) })
	if c.QUIC {
		// The same port number, over UDP.
		pc, err := net.ListenPacket("udp", ln.Addr().String())
		if err != nil {
			return fmt.Errorf("listen for agents over QUIC (--no-quic to do without): %w", err)
		}
		closers = append(closers, pc)
		serves = append(serves, func() error { return srv.ServeQUIC(pc) })
		if w := quictransport.CheckUDPBuffers(); w != "" {
			log.Warn(w)
		}
	}
	var hl, tl net.Listener
	if ing.httpAddr != "" {
		if hl, err = listen("HTTP visitors", ing.httpAddr); err != nil {
			return err
		}
		hl = srv.AcceptProxyProtocol(hl)
		closers = append(closers, hl)
	}
	if ing.httpsAddr != "" {
		if tl, err = listen("HTTPS visitors", ing.httpsAddr); err != nil {
			return err
		}
		tl = srv.AcceptProxyProtocol(tl)
		closers = append(closers, tl)
	}
	logProxyProtocol(file, log)
	var challenge func(http.Handler) http.Handler
	var tc *tls.Config
	switch {
	case ing.acme:
		var storage certmagic.Storage
		if node != nil {
			if storage, err = node.certStorage(cs.Prefix); err != nil {
				return err
			}
		}
		mgr, err := c.acmeManager(dataDir, srv, hl, tl, homeACME(home, homeCfg), storage, mtr, log)
		if err != nil {
			return err
		}
		closers = append(closers, mgr)
		challenge = mgr.HTTPChallengeHandler
		tc = mgr.TLSConfig()
	case c.Cert != "":
		tc = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	var httpPort, httpsPort int
	if hl != nil {
		httpPort = ingress.Port(hl)
	}
	if tl != nil {
		httpsPort = ingress.Port(tl)
	}
	srv.SetIngressPorts(httpPort, httpsPort)
	if home != nil {
		home.Set(gatewayState(ln, c.QUIC, httpPort, httpsPort, homeCfg.Names))
	}
	if hl != nil {
		serves = append(serves, func() error { return web.Serve(hl, challenge) })
		log.Info("serving tunnels over HTTP", "addr", hl.Addr().String(), "domain", c.Domain)
	}
	if tl != nil {
		serves = append(serves, func() error { return web.ServeHTTPS(tl, tc) })
		log.Info("serving tunnels over HTTPS", "addr", tl.Addr().String(), "domain", c.Domain, "acme", ing.acme)
	}
	log.Info("gateway listening", "addr", ln.Addr().String(), "ports", c.Ports, "fingerprint", fp)
	fmt.Fprintf(stdout, "diglett-server listening on %s\ngateway key fingerprint: %s\n", ln.Addr(), fp)

	errc := make(chan error, len(serves))
	for _, serve := range serves {
		go func() { errc <- serve() }()
	}
	adm.setState(adminReady)
	select {
	case err := <-errc:
		adm.setState(adminStopping)
		web.Close()
		srv.Close()
		for range len(serves) - 1 {
			<-errc
		}
		return err
	case <-ctx.Done():
	}
	adm.setState(adminStopping)
	log.Info("shutting down: waiting up to 10s for open connections")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := web.Shutdown(sctx); err != nil {
		log.Warn("shutdown: HTTP requests still in flight", "err", err)
	}
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("shutdown: closed connections still open", "err", err)
	}
	for range serves {
		<-errc
	}
	return nil
}

// quota is the default quota of an identity from the flags, where 0 means
// no limit.
func (c *serverCmd) quota() gateway.Quota {
	unlimited := func(n int) int {
		if n == 0 {
			return -1
		}
		return n
	}
	return gateway.Quota{
		Names:             unlimited(c.MaxNamesPerIdentity),
		Ports:             unlimited(c.MaxPortsPerIdentity),
		Sessions:          unlimited(c.MaxSessionsPerIdentity),
		CertOrdersPerHour: unlimited(c.MaxCertOrdersPerHour),
	}
}

// ingressPlan is what the HTTP ingress flags ask for.
type ingressPlan struct {
	httpAddr, httpsAddr string // "" when off
	acme                bool
}

func (c *serverCmd) ingress() (ingressPlan, error) {
	var p ingressPlan
	p.acme = c.ACMEEmail != "" || c.ACMECA != "" || c.ACMEStaging
	if c.Domain == "" {
		if c.HTTPAddr != "" || c.HTTPSAddr != "" || p.acme {
			return p, errors.New("--http-addr, --https-addr and --acme-* need --domain")
		}
		return p, nil
	}
	if p.acme && c.Cert != "" {
		return p, errors.New("--cert/--key and ACME (--acme-*) are exclusive: choose one source of certificates")
	}
	p.httpAddr = orDefault(c.HTTPAddr, ":80")
	p.httpsAddr = ""
	if p.acme || c.Cert != "" {
		p.httpsAddr = orDefault(c.HTTPSAddr, ":443")
	} else if c.HTTPSAddr != "" && c.HTTPSAddr != "off" {
		return p, errors.New("--https-addr needs a certificate: --cert/--key or ACME (--acme-email)")
	}
	if p.httpAddr == "off" {
		p.httpAddr = ""
	}
	if p.httpsAddr == "off" {
		p.httpsAddr = ""
	}
	return p, nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func parsePorts(s string) (lo, hi int, err error) {
	a, b, found := strings.Cut(s, "-")
	if !found {
		b = a
	}
	lo, err1 := strconv.Atoi(strings.TrimSpace(a))
	hi, err2 := strconv.Atoi(strings.TrimSpace(b))
	if err1 != nil || err2 != nil || lo < 1 || hi > 65535 || lo > hi {
		return 0, 0, fmt.Errorf("--ports %q: want MIN-MAX within 1-65535, e.g. 30000-40000", s)
	}
	return lo, hi, nil
}

func defaultDataDir() (string, error) {
	if os.Geteuid() == 0 {
		return "/var/lib/diglett", nil
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "diglett"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no --data-dir and no home directory: %w", err)
	}
	return filepath.Join(home, ".local", "share", "diglett"), nil
}
