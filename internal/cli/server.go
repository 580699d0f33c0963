package cli

import (
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/kong"

	"github.com/diglett/diglett/internal/auth"
	"github.com/diglett/diglett/internal/expose"
	"github.com/diglett/diglett/internal/gateway"
	"github.com/diglett/diglett/internal/identity"
)

type serverCmd struct {
	Listen      string           `short:"l" default:"0.0.0.0:20000" placeholder:"ADDR" help:"Address agents connect to (default 0.0.0.0:20000)."`
	Debug       int              `short:"d" type:"counter" help:"Log more (repeatable)."`
	DataDir     string           `placeholder:"DIR" help:"Where the gateway keeps its key (default: /var/lib/diglett as root, else ~/.local/share/diglett)."`
	Ports       string           `default:"30000-40000" placeholder:"MIN-MAX" help:"Range of public TCP ports given to tunnels."`
	PublicBind  string           `placeholder:"HOST" help:"Address public TCP ports listen on (default: all interfaces)."`
	Tokens      string           `type:"existingfile" placeholder:"FILE" help:"YAML file of agent tokens and the names each may publish. Without it anyone can register any name."`
	Lease       time.Duration    `default:"60s" help:"How long a disconnected agent's names and ports stay reserved for it."`
	Cert        string           `type:"existingfile" placeholder:"FILE" help:"TLS certificate (PEM) for agent connections, e.g. from a CA. Default: a self-signed certificate for the key in the data dir."`
	Key         string           `type:"existingfile" placeholder:"FILE" help:"Private key (PEM) of --cert."`
	KeepAlive   time.Duration    `name:"keepalive" default:"15s" help:"Detect a dead agent within this time."`
	VersionFlag kong.VersionFlag `name:"version" env:"-" help:"Print the version and exit."`
}

// Server runs diglett-server with args until ctx ends.
func Server(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c serverCmd
	if err := parse(&c, "diglett-server", "The diglett gateway: publishes the services of agents that dial in.", args, stdout, stderr); err != nil {
		return err
	}
	log := newLogger(stderr, c.Debug)
	lo, hi, err := parsePorts(c.Ports)
	if err != nil {
		return err
	}
	if (c.Cert == "") != (c.Key == "") {
		return errors.New("--cert and --key go together")
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
		key, created, err := identity.LoadOrCreateKey(dataDir)
		if err != nil {
			return err
		}
		if created {
			log.Info("created a new gateway key", "file", filepath.Join(dataDir, identity.KeyFile))
		}
		if cert, err = identity.SelfSigned(key, "localhost"); err != nil {
			return err
		}
	}
	fp, err := identity.Fingerprint(cert.PrivateKey.(interface{ Public() crypto.PublicKey }).Public())
	if err != nil {
		return err
	}

	var authn auth.Authenticator = auth.AllowAll{}
	if c.Tokens != "" {
		t, err := auth.LoadTokens(c.Tokens)
		if err != nil {
			return err
		}
		authn = t
	} else {
		log.Warn("no --tokens file: ANYONE who can reach this gateway can register any name")
	}

	srv, err := gateway.New(gateway.Config{
		TLS:        &tls.Config{Certificates: []tls.Certificate{cert}},
		Auth:       authn,
		Registerer: &expose.Log{Logger: log},
		PortMin:    lo,
		PortMax:    hi,
		PublicHost: c.PublicBind,
		Lease:      c.Lease,
		KeepAlive:  c.KeepAlive,
		Logger:     log,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return fmt.Errorf("listen for agents: %w", err)
	}
	log.Info("gateway listening", "addr", ln.Addr().String(), "ports", c.Ports, "fingerprint", fp)
	fmt.Fprintf(stdout, "diglett-server listening on %s\ngateway key fingerprint: %s\n", ln.Addr(), fp)

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		srv.Close()
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: waiting up to 10s for open connections")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("shutdown: closed connections still open", "err", err)
	}
	<-errc
	return nil
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
