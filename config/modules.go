package config

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"

	"github.com/diglett/diglett/auth/allowall"
	"github.com/diglett/diglett/auth/tokens"
	"github.com/diglett/diglett/config/configfile"
	"github.com/diglett/diglett/gateway"
	reglog "github.com/diglett/diglett/register/log"
)

// module is one entry of the table: the section it belongs to, the
// settings it takes and how to build it.
type module struct {
	section  string // "auth" or "register"
	settings Schema
	auth     func(s map[string]Setting, env Env) (gateway.Authenticator, error)
	register func(s map[string]Setting, env Env) (gateway.Registerer, error)
}

// modules is THE table from module names to modules: a new module is one
// line here (and its own package). Nothing registers itself.
var modules = map[string]module{
	// tokens: {file: tokens.yaml} — static tokens scoped to name patterns.
	"tokens": {section: "auth", settings: Schema{"file": Path}, auth: newTokens},
	// allow_all: {} — anyone may publish any name (development only).
	"allow_all": {section: "auth", settings: Schema{}, auth: newAllowAll},
	"jwt":       {section: "auth", settings: jwtSettings, auth: newJWT}, // jwt: {identities: identities.yaml} — signed identity tokens (module_jwt.go).
	// basic: {file: users.yaml}, bearer: {sha256: HEX, identity: ci, names: [ci-*]}, external: {url: https://auth.internal/check} (module_creds.go).
	"basic":    {section: "auth", settings: basicSettings, auth: newBasic},
	"bearer":   {section: "auth", settings: bearerSettings, auth: newBearer},
	"external": {section: "auth", settings: externalSettings, auth: newExternal},
	// log: {} — logs "register domain 'NAME' -> 'PORT'".
	"log": {section: "register", settings: Schema{}, register: newLog},
	// traefik: {dir: /etc/traefik/dynamic} — the proxy's file and http providers (module_traefik.go).
	"traefik": {section: "register", settings: traefikSettings, register: newTraefik},
	"caddy":   {section: "register", settings: caddySettings, register: newCaddy}, // caddy: {admin: http://127.0.0.1:2019, server: srv0} — routes through the admin API (module_caddy.go).
	// exec: {command: [/etc/diglett/hook]}, webhook: {url: https://hooks.internal/diglett} — a command or a POST per event (module_hooks.go).
	"exec":    {section: "register", settings: execSettings, register: newExec},
	"webhook": {section: "register", settings: webhookSettings, register: newWebhook},
}

// PathKeys lists, sorted, the settings of module that name files (kind
// Path): what a watch of the configuration follows.
func PathKeys(module string) []string {
	var keys []string
	for _, k := range slices.Sorted(maps.Keys(modules[module].settings)) {
		if modules[module].settings[k] == Path {
			keys = append(keys, k)
		}
	}
	return keys
}

// moduleSpecs is the table as configfile checks module lists against it.
func moduleSpecs() map[string]configfile.ModuleSpec {
	specs := make(map[string]configfile.ModuleSpec, len(modules))
	for name, m := range modules {
		specs[name] = configfile.ModuleSpec{Section: m.section, Settings: m.settings}
	}
	return specs
}

// Env is what modules are built with.
type Env struct {
	// Logger is where modules log. Default: slog.Default().
	Logger *slog.Logger
	// Domain is the gateway's domain ("" if it has none): the audience
	// its tokens are for, unless a module says otherwise.
	Domain string
	// Changed is called by a module whose answers change on their own (a
	// registry it watches) after each change: the gateway then checks
	// every live session again. Nil: nothing is told.
	Changed func()
}

// changed tells the gateway that a module's answers changed.
func (e Env) changed() {
	if e.Changed != nil {
		e.Changed()
	}
}

func (e Env) logger() *slog.Logger {
	if e.Logger == nil {
		return slog.Default()
	}
	return e.Logger
}

func newTokens(s map[string]Setting, _ Env) (gateway.Authenticator, error) {
	f, ok := s["file"]
	if !ok {
		return nil, errors.New("no file: give the tokens file as {file: tokens.yaml}")
	}
	return tokens.Load(f.Value)
}

func newAllowAll(map[string]Setting, Env) (gateway.Authenticator, error) {
	return allowall.Authenticator{}, nil
}

func newLog(_ map[string]Setting, env Env) (gateway.Registerer, error) {
	return &reglog.Registerer{Logger: env.logger()}, nil
}

// Authenticators builds the file's auth modules, in order. Every module
// is built, and every problem reported with its line.
func (f *File) Authenticators(env Env) ([]gateway.Authenticator, error) {
	return buildModules(f, "auth", f.Auth, func(m Module, mod module, s map[string]Setting) (gateway.Authenticator, error) {
		a, err := mod.auth(s, env)
		if err == nil && m.Name == "allow_all" {
			env.logger().Warn("auth module allow_all: ANYONE who can reach this gateway can register any name", "file", f.Path, "line", m.Line)
		}
		return a, err
	})
}

// Registerers builds the file's register modules, in order.
func (f *File) Registerers(env Env) ([]gateway.Registerer, error) {
	return buildModules(f, "register", f.Register, func(_ Module, mod module, s map[string]Setting) (gateway.Registerer, error) {
		return mod.register(s, env)
	})
}

// buildModules builds each module of a section's list with build, after
// reading its settings; every problem is reported with its line.
func buildModules[T any](f *File, section string, list []Module, build func(Module, module, map[string]Setting) (T, error)) ([]T, error) {
	var errs Errors
	var out []T
	for _, m := range list {
		mod := modules[m.Name]
		s, err := m.Settings(f.Path, f.Dir, section+": "+m.Name, mod.settings)
		var es Errors
		if errors.As(err, &es) {
			errs = append(errs, es...)
		}
		if len(errs) > 0 {
			continue
		}
		x, err := build(m, mod, s)
		if err != nil {
			errs = append(errs, &Error{File: f.Path, Line: m.Line, Msg: fmt.Sprintf("%s: %s: %v", section, m.Name, err)})
			continue
		}
		out = append(out, x)
	}
	if len(errs) == 0 {
		return out, nil
	}
	return out, errs
}

// ClaimAuthenticator is the claim a Chain adds to an identity: the index
// (an int) in the chain of the authenticator that authenticated it, which
// Authorize then asks.
const ClaimAuthenticator = "diglett.authenticator"

// Chain tries authenticators in order: the first that does not refuse the
// credentials (an error wrapping gateway.ErrUnauthorized) decides. Any
// other error stops the chain. An empty chain refuses everyone.
type Chain []gateway.Authenticator

var _ gateway.Authenticator = Chain(nil)

// Authenticate returns the identity of the first authenticator that takes
// c, with ClaimAuthenticator set in a copy of its claims. When all refuse,
// the refusal gives the reasons of those that found credentials of their
// kind (gateway.ErrNoCredentials if none did).
func (ch Chain) Authenticate(ctx context.Context, c gateway.Credentials) (gateway.Identity, error) {
	var reasons []string
	for i, a := range ch {
		id, aerr := a.Authenticate(ctx, c)
		if errors.Is(aerr, gateway.ErrNoCredentials) {
			continue
		}
		if errors.Is(aerr, gateway.ErrUnauthorized) {
			why, _ := strings.CutPrefix(aerr.Error(), gateway.ErrUnauthorized.Error()+": ")
			if why != aerr.Error() && !slices.Contains(reasons, why) {
				reasons = append(reasons, why)
			}
			continue
		}
		if aerr != nil {
			return gateway.Identity{}, aerr
		}
		claims := make(map[string]any, len(id.Claims)+1)
		maps.Copy(claims, id.Claims)
		claims[ClaimAuthenticator] = i
		id.Claims = claims
		return id, nil
	}
	if len(reasons) == 0 {
		if len(ch) == 0 {
			return gateway.Identity{}, gateway.ErrUnauthorized
		}
		return gateway.Identity{}, gateway.ErrNoCredentials
	}
	return gateway.Identity{}, fmt.Errorf("%w: %s", gateway.ErrUnauthorized, strings.Join(reasons, "; "))
}

// Close closes every authenticator of the chain that holds resources
// (an io.Closer: a watched registry, say), once the chain is no longer in
// force.
func (ch Chain) Close() error {
	var errs []error
	for _, a := range ch {
		if c, ok := a.(io.Closer); ok {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}

// Authorize asks the authenticator that authenticated id.
func (ch Chain) Authorize(ctx context.Context, id gateway.Identity, name string) error {
	i, ok := id.Claims[ClaimAuthenticator].(int)
	if !ok || i < 0 || i >= len(ch) {
		return fmt.Errorf("%w: %q: identity not authenticated by this gateway's chain", gateway.ErrForbidden, name)
	}
	return ch[i].Authorize(ctx, id, name)
}
