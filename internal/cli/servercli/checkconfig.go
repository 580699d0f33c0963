package servercli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/diglett/diglett/auth/allowall"
	"github.com/diglett/diglett/auth/tokens"
	"github.com/diglett/diglett/config"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/cli"
	"github.com/diglett/diglett/internal/protocol"
	reglog "github.com/diglett/diglett/register/log"
)

const serverDesc = "The diglett gateway: publishes the services of agents that dial in."

// checkConfig runs "diglett-server check-config FILE": it checks the file
// as a start would (every value, the files it names, the modules) without
// starting anything, and prints "FILE: ok" or returns every problem found.
func checkConfig(args []string, stdout, stderr io.Writer) error {
	var cc struct {
		File string `arg:"" placeholder:"FILE" help:"Configuration file to check."`
	}
	if err := cli.Parse(&cc, "diglett-server check-config", "Check a diglett-server configuration file without starting the gateway.", args, stdout, stderr); err != nil {
		return err
	}
	var c serverCmd
	fr := serverResolver()
	err := cli.Parse(&c, "diglett-server", serverDesc, []string{"--config", cc.File}, io.Discard, io.Discard, fr)
	var errs []error
	if err != nil {
		errs = append(errs, err)
	} else {
		errs = c.check()
		log := slog.New(slog.DiscardHandler)
		authn, regs, err := c.modules(serverFile(fr), log, nil)
		if err != nil {
			errs = append(errs, err)
		}
		closeAuth(authn, log)
		for _, r := range regs {
			closeModule(r, log)
		}
		// The home sections, as far as they can be checked without
		// touching the router, the firewall or the name server.
		if hs, err := serverFile(fr).HomeOptions(c.Domain); err != nil {
			errs = append(errs, err)
		} else if ing, _ := c.ingress(); hs != nil && hs.ACME && !ing.acme {
			errs = append(errs, errors.New("dns.acme: certificates over DNS need ACME: set acme_email, acme_ca or acme_staging"))
		}
	}
	if len(errs) == 0 {
		fmt.Fprintf(stdout, "%s: ok\n", cc.File)
		return nil
	}
	var lines []string
	for _, e := range errs {
		lines = append(lines, strings.Split(e.Error(), "\n")...)
	}
	return fmt.Errorf("check-config: %s is not valid:\n  %s", cc.File, strings.Join(lines, "\n  "))
}

// check runs the checks of a start that need no listener: every problem
// found.
func (c *serverCmd) check() []error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	_, _, err := parsePorts(c.Ports)
	add(err)
	add(cli.CheckIdleTimeout(c.KeepAlive, c.MaxIdle, slog.New(slog.DiscardHandler)))
	_, err = c.ingress()
	add(err)
	_, err = protocol.ParsePrefixes(c.TrustedProxies)
	if err != nil {
		add(fmt.Errorf("--trusted-proxies: %w", err))
	}
	switch {
	case (c.Cert == "") != (c.Key == ""):
		add(errors.New("--cert and --key go together"))
	case c.Cert != "":
		if _, err := tls.LoadX509KeyPair(c.Cert, c.Key); err != nil {
			add(fmt.Errorf("load certificate: %w", err))
		}
	}
	return errs
}

// modules builds the gateway's authenticator and registerers from
// --tokens and the file's auth and register lists (f may be nil). With
// neither --tokens nor auth modules, anyone may register any name, with a
// warning.
//
// changed, which may be nil, is called when a module's answers change on
// their own (a registry it watches). An Authenticator that holds
// resources is an io.Closer: closeAuth it once it is out of force.
func (c *serverCmd) modules(f *config.File, log *slog.Logger, changed func()) (gateway.Authenticator, []gateway.Registerer, error) {
	env := config.Env{Logger: log, Domain: c.Domain, Changed: changed}
	var auths []gateway.Authenticator
	var errs []error
	if s, inFile := f.Lookup("tokens"); inFile && len(f.Auth) > 0 && s.Value == c.Tokens {
		errs = append(errs, fmt.Errorf("%s:%d: tokens: give the tokens file either as tokens: or in the auth list, not both", f.Path, s.Line))
	}
	switch {
	case c.Tokens != "":
		// --tokens FILE is auth: [{tokens: {file: FILE}}], and overrides the
		// file's auth list (flag > file).
		t, err := tokens.Load(c.Tokens)
		if err != nil {
			errs = append(errs, err)
		}
		auths = append(auths, t)
	case f != nil && len(f.Auth) > 0:
		a, err := f.Authenticators(env)
		if err != nil {
			errs = append(errs, err)
		}
		auths = a
	}
	regs := []gateway.Registerer{&reglog.Registerer{Logger: log}}
	if f != nil && len(f.Register) > 0 {
		r, err := f.Registerers(env)
		if err != nil {
			errs = append(errs, err)
		}
		regs = r
	}
	var groups []config.GroupAuth
	if f != nil && len(f.Groups) > 0 {
		g, err := f.GroupAuthenticators(env)
		if err != nil {
			errs = append(errs, err)
		}
		groups = g
	}
	if len(errs) > 0 {
		closeAuth(config.Chain(auths), log)
		return nil, nil, errors.Join(errs...)
	}
	var global gateway.Authenticator
	switch len(auths) {
	case 0:
		if len(groups) > 0 {
			log.Info("no auth list: only the agents of the tunnel groups may log in", "groups", len(groups))
			break
		}
		log.Warn("no --tokens file: ANYONE who can reach this gateway can register any name")
		global = allowall.Authenticator{}
	case 1:
		global = auths[0]
	default:
		global = config.Chain(auths)
	}
	if len(groups) > 0 {
		return config.Grouped{Global: global, Groups: groups}, regs, nil
	}
	return global, regs, nil
}

// closeAuth closes a, which is out of force, if it holds resources.
func closeAuth(a gateway.Authenticator, log *slog.Logger) {
	if c, ok := a.(io.Closer); ok {
		if err := c.Close(); err != nil {
			log.Warn("auth modules closed with an error", "err", err)
		}
	}
}

// heldAuth is what a running gateway holds of its modules: the
// Authenticator in force and the registerers in force. The ones a reload
// replaces, and the last ones at the end, are closed if they hold
// resources (an io.Closer).
type heldAuth struct {
	log  *slog.Logger
	mu   sync.Mutex
	a    gateway.Authenticator
	regs []gateway.Registerer
}

// swap puts a in the place of the one held, which it closes.
func (h *heldAuth) swap(a gateway.Authenticator) {
	h.mu.Lock()
	old := h.a
	h.a = a
	h.mu.Unlock()
	if old != a {
		closeAuth(old, h.log)
	}
}

// swapRegisterers puts regs in the place of the registerers held, and
// closes those of the old ones that regs does not keep. The gateway takes
// their routes down on its own: closing a module stops only its
// background work.
func (h *heldAuth) swapRegisterers(regs []gateway.Registerer) {
	h.mu.Lock()
	old := h.regs
	h.regs = slices.Clone(regs)
	h.mu.Unlock()
	for _, o := range old {
		if !slices.ContainsFunc(regs, func(r gateway.Registerer) bool { return sameModule(r, o) }) {
			closeModule(o, h.log)
		}
	}
}

// close closes everything held; the gateway has stopped.
func (h *heldAuth) close() {
	h.swap(nil)
	h.swapRegisterers(nil)
}

// closeModule closes a module no longer in force, if it holds resources.
func closeModule(m any, log *slog.Logger) {
	if c, ok := m.(io.Closer); ok {
		if err := c.Close(); err != nil {
			log.Warn("module closed with an error", "module", fmt.Sprintf("%T", m), "err", err)
		}
	}
}

// sameModule reports whether a and b are the same module value, without
// panicking on values that cannot be compared.
func sameModule(a, b any) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}

// rechecker asks a gateway to check its sessions again when a module says
// its answers changed: requests made while a check runs are folded into
// one more check after it, so a burst of changes costs two checks.
type rechecker struct {
	log  *slog.Logger
	kick chan struct{}
}

func newRechecker(log *slog.Logger) *rechecker {
	return &rechecker{log: log, kick: make(chan struct{}, 1)}
}

// changed asks for a check; it never blocks.
func (r *rechecker) changed() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// run checks srv's sessions on each request until ctx ends.
func (r *rechecker) run(ctx context.Context, srv *gateway.Server) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
		}
		res, err := srv.Recheck(ctx)
		if err != nil {
			r.log.Warn("sessions not checked again after an auth module changed", "err", err)
			continue
		}
		r.log.Info("auth module changed: sessions checked again", "sessions_kept", res.Kept, "sessions_closed", res.Closed, "sessions_unchecked", res.Failed)
	}
}
