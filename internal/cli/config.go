package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/alecthomas/kong"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/config/configfile"
	"github.com/diglett/diglett/internal/printable"
)

// FileResolver gives flags their values from the --config file, below the
// command line and the environment: flag > DIGLETT_* env > file > default.
// Kong applies environment variables as defaults and lets resolvers
// override them, so the resolver itself leaves alone every flag whose
// variable is set.
type FileResolver struct {
	// Load reads the file of --config, whose settings schema lists.
	Load func(path string, schema configfile.Schema) (*configfile.File, error)

	loaded bool
	file   *configfile.File // nil without --config
	err    error            // from loading the file
}

var _ kong.Resolver = (*FileResolver)(nil)

// File is the file Load read: nil without --config, or before Parse.
func (r *FileResolver) File() *configfile.File { return r.file }

func (r *FileResolver) Validate(*kong.Application) error { return nil }

func (r *FileResolver) Resolve(ctx *kong.Context, _ *kong.Path, flag *kong.Flag) (any, error) {
	if !r.loaded {
		r.loaded = true
		if path := configPath(ctx); path != "" {
			r.file, r.err = r.Load(path, SchemaOf(ctx.Model.Node))
		}
	}
	if r.file == nil {
		return nil, nil
	}
	for _, env := range flag.Envs {
		if _, set := os.LookupEnv(env); set {
			return nil, nil
		}
	}
	s, ok := r.file.Lookup(SettingKey(flag))
	if !ok {
		return nil, nil
	}
	if flag.Enum != "" && !slices.Contains(flag.EnumSlice(), s.Value) {
		r.err = errors.Join(r.err, &configfile.Error{File: r.file.Path, Line: s.Line,
			Msg: fmt.Sprintf("%s: want one of %s, got %q", s.Key, strings.Join(flag.EnumSlice(), ", "), s.Value)})
		return nil, nil
	}
	if (flag.Tag.Type == "existingfile" || flag.Tag.Type == "existingdir") && s.Value != "" {
		// Said here, with the line, rather than by the flag's own check.
		if _, err := os.Stat(s.Value); err != nil {
			r.err = errors.Join(r.err, &configfile.Error{File: r.file.Path, Line: s.Line, Msg: fmt.Sprintf("%s: %v", s.Key, err)})
			return nil, nil
		}
	}
	if s.List != nil {
		items := make([]any, len(s.List))
		for i, v := range s.List {
			items[i] = v
		}
		return items, nil
	}
	return s.Value, nil
}

// configPath is the value of --config (or DIGLETT_CONFIG), or "".
func configPath(ctx *kong.Context) string {
	for _, f := range ctx.Model.Node.Flags {
		if f.Name == "config" {
			s, _ := ctx.FlagValue(f).(string)
			return s
		}
	}
	return ""
}

// SettingKey is the file's key for flag: its name in snake_case.
func SettingKey(flag *kong.Flag) string { return strings.ReplaceAll(flag.Name, "-", "_") }

// notInFile are the flags a file cannot set.
var notInFile = map[string]bool{"help": true, "version": true, "config": true}

// InFile reports whether a file can set flag.
func InFile(flag *kong.Flag) bool { return !notInFile[flag.Name] }

// SchemaOf lists the settings a file may hold: one per flag of node.
func SchemaOf(node *kong.Node) configfile.Schema {
	s := configfile.Schema{}
	for _, f := range node.Flags {
		if notInFile[f.Name] {
			continue
		}
		s[SettingKey(f)] = kindOf(f)
	}
	return s
}

func kindOf(f *kong.Flag) configfile.Kind {
	t := f.Target.Type()
	switch {
	case t == reflect.TypeFor[time.Duration]():
		return configfile.Duration
	case t.Kind() == reflect.Bool:
		return configfile.Bool
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64:
		return configfile.Int
	case t.Kind() == reflect.Slice:
		return configfile.List
	case f.Tag.Type == "existingfile" || f.Tag.Type == "path" || f.Tag.Type == "existingdir" ||
		f.PlaceHolder == "FILE" || f.PlaceHolder == "DIR":
		return configfile.Path
	}
	return configfile.String
}

// tunnelGroup is the tunnels one diglett.Listener serves: those that share
// every per-listener option (h2c, basic auth, allowed addresses, port).
type tunnelGroup struct {
	names      []string
	backends   map[string]string // name -> HOST:PORT
	proxyProto map[string]int    // name -> PROXY protocol version; nil when none sends one
	port       int
	h2c        bool
	basicAuth  string
	allowIPs   []string
	udp        bool
}

// tunnelGroups are the agent's tunnels: the one of the command line
// (--name... BACKEND and its options), or the tunnels of the --config
// file, grouped by their options so that tunnels that can share a
// listener do. A tunnel that asks for a port has a listener of its own.
func (c *agentCmd) tunnelGroups(f *configfile.File) ([]tunnelGroup, error) {
	if f == nil || len(f.Tunnels) == 0 {
		if len(c.Name) == 0 {
			return nil, errors.New("missing flags: --name=NAME (or tunnels in a --config file; see diglett --help)")
		}
		if c.Backend == "" {
			return nil, errors.New(`expected "<backend>" (see diglett --help)`)
		}
		backend, err := backendAddr(c.Backend)
		if err != nil {
			return nil, err
		}
		if c.UDP {
			if err := udpConflict("--udp", "--basic-auth", "--h2c", "--proxy-protocol", configfile.Tunnel{BasicAuth: c.BasicAuth, H2C: c.H2C, ProxyProtocol: c.ProxyProtocol}); err != nil {
				return nil, err
			}
		}
		g := tunnelGroup{names: c.Name, backends: map[string]string{}, port: c.Port, h2c: c.H2C, basicAuth: c.BasicAuth, allowIPs: c.AllowIPs, udp: c.UDP}
		for _, n := range c.Name {
			g.backends[n] = backend
			g.setProxyProtocol(n, c.ProxyProtocol)
		}
		return []tunnelGroup{g}, nil
	}
	if len(c.Name) > 0 || c.Backend != "" {
		return nil, fmt.Errorf("%s: the file has tunnels: give no --name or BACKEND as well", f.Path)
	}
	var groups []tunnelGroup
	index := map[string]int{}
	for _, t := range f.Tunnels {
		backend, err := backendAddr(t.Backend)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: tunnel %s: %w", f.Path, t.Line, t.Name, err)
		}
		udp := t.UDP || c.UDP
		if udp {
			tt := t
			tt.ProxyProtocol = cmp.Or(t.ProxyProtocol, c.ProxyProtocol)
			if err := udpConflict("udp", "basic_auth", "h2c", "proxy_protocol (or --proxy-protocol)", tt); err != nil {
				return nil, fmt.Errorf("%s:%d: tunnel %s: %w", f.Path, t.Line, t.Name, err)
			}
		}
		key := fmt.Sprintf("%t\x00%s\x00%s\x00%t", t.H2C, t.BasicAuth, strings.Join(t.AllowIPs, ","), udp)
		if t.Port != 0 {
			key = "port " + t.Name
		}
		i, ok := index[key]
		if !ok {
			i = len(groups)
			index[key] = i
			groups = append(groups, tunnelGroup{backends: map[string]string{}, port: t.Port, h2c: t.H2C, basicAuth: t.BasicAuth, allowIPs: t.AllowIPs, udp: udp})
		}
		groups[i].names = append(groups[i].names, t.Name)
		groups[i].backends[t.Name] = backend
		groups[i].setProxyProtocol(t.Name, cmp.Or(t.ProxyProtocol, c.ProxyProtocol))
	}
	return groups, nil
}

// setProxyProtocol records the PROXY protocol header of name's backend,
// a --proxy-protocol value.
func (g *tunnelGroup) setProxyProtocol(name, value string) {
	if v := proxyProtocolVersion(value); v != 0 {
		if g.proxyProto == nil {
			g.proxyProto = map[string]int{}
		}
		g.proxyProto[name] = v
	}
}

// serveTunnels opens one listener per group with base's other settings,
// prints each tunnel's public addresses, and forwards visitors to each
// tunnel's backend until ctx ends or a listener stops on a fatal error,
// which stops the others. listening, when not nil, is given the listeners
// of groups (in the same order) once all are registered. With retry, a
// failure at start that is not fatal is retried with backoff (--retry).
func serveTunnels(ctx context.Context, base diglett.Config, groups []tunnelGroup, o diglett.ForwardOptions, stdout io.Writer, listening func([]*diglett.Listener), retry bool) error {
	lns := make([]*diglett.Listener, 0, len(groups))
	for _, g := range groups {
		cfg := base
		cfg.Name, cfg.Names = g.names[0], g.names[1:]
		cfg.Port, cfg.H2C, cfg.BasicAuth, cfg.AllowIPs, cfg.UDP = g.port, g.h2c, g.basicAuth, g.allowIPs, g.udp
		ln, err := listenRetrying(ctx, cfg, retry)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return err
		}
		lns = append(lns, ln)
		for _, t := range ln.AllTunnels() {
			for _, u := range t.URLs() {
				// The URLs come from the gateway: printed safe.
				fmt.Fprintf(stdout, "%s: %s -> %s\n", t.Name, printable.String(u, 0), g.backends[t.Name])
			}
		}
	}
	if listening != nil {
		listening(lns)
	}
	if len(lns) == 1 {
		o.Backends, o.ProxyProtocols = groups[0].backends, groups[0].proxyProto
		return diglett.Forward(ctx, lns[0], "", o)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(lns))
	for i, ln := range lns {
		o := o
		o.Backends, o.ProxyProtocols = groups[i].backends, groups[i].proxyProto
		go func() {
			err := diglett.Forward(ctx, ln, "", o)
			if err != nil {
				cancel()
			}
			errc <- err
		}()
	}
	var first error
	for range lns {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	return first
}
