package servercli

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"

	"github.com/alecthomas/kong"
	"go.yaml.in/yaml/v3"

	"github.com/diglett/diglett/auth/tokens"
	"github.com/diglett/diglett/config"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/cli"
	reglog "github.com/diglett/diglett/register/log"
)

// Live reload of the configuration file (--config).
//
// A reload reads the file again exactly as a start does: the same command
// line parsed again over the new file, so flags and DIGLETT_* variables
// still win over it (flag > env > file > default), and every check of
// check-config. A file that fails any of them changes nothing. Otherwise
// the authenticator chain (tokens:, the auth list, and the tokens files
// they name) and the register list are put in force live; every other
// setting that changed needs a restart: the reload names it at Warn and
// leaves it as it is.

// liveKeys are the settings a reload applies; the auth section is live
// too. Every other setting needs a restart.
var liveKeys = map[string]bool{"tokens": true}

// registererSetter is the part of the gateway a reload of the register
// list changes.
type registererSetter interface {
	SetRegisterers(rgs []gateway.Registerer)
	SetHosts(hosts gateway.Hosts) error
}

var _ registererSetter = (*gateway.Server)(nil)

// configReload is the state of the reloads of one configuration file.
type configReload struct {
	args []string // the command line of the start
	path string   // the --config file
	srv  registererSetter
	log  *slog.Logger // given to the modules built
	// changed is what auth modules call when their answers change.
	changed func()
	// held closes the registerers a reload replaced; nil in tests.
	held *heldAuth

	// Fixed at start: what a restart would change is measured from here.
	startValues  map[string]string
	startHome    string // the nat, firewall and dns sections, as homeDigest words them
	startCluster string // the cluster section, as clusterDigest words it
	startProxy   string // the proxy_protocol section, as proxyProtocolDigest words it

	// In force, from the start or the last reload put in force.
	modules []string             // the auth modules, as authModules words them
	hosts   []string             // the groups' hosts, as hostList words them
	regKeys []string             // the register modules, as registerModules words them
	regs    []gateway.Registerer // the registerers, in the order of regKeys
}

// configSource is the --config file f, as the start read it with args,
// and the files it names; regs are the registerers the gateway started
// with, built from f.
func (c *serverCmd) configSource(args []string, f *config.File, srv registererSetter, regs []gateway.Registerer, held *heldAuth, changed func(), log *slog.Logger) authSource {
	if len(c.extraRegs) > 0 {
		srv = withExtraRegs{srv, c.extraRegs}
	}
	if c.gate != nil {
		c.gate.mu.Lock()
		c.gate.registererSetter = srv
		c.gate.mu.Unlock()
		srv = c.gate
	}
	cr := &configReload{args: args, path: c.Config, srv: srv, log: log, regs: regs, held: held, changed: changed, startHome: homeDigest(f), startCluster: clusterDigest(f), startProxy: proxyProtocolDigest(f)}
	cr.startValues, _ = settingValues(c)
	raw := readRaw(f)
	cr.modules = authModules(c, raw)
	cr.regKeys = registerModules(raw)
	cr.hosts = hostList(f.Hosts())
	return authSource{
		What:  "config",
		Files: append([]string{c.Config}, moduleFiles(c, raw)...),
		Build: cr.build,
		Kept:  "the one in force",
	}
}

// build reads the file again and checks it as check-config does.
func (cr *configReload) build() (authSnapshot, error) {
	var c serverCmd
	fr := serverResolver()
	err := cli.Parse(&c, "diglett-server", serverDesc, cr.args, io.Discard, io.Discard, fr)
	file := serverFile(fr)
	if err != nil {
		snap := authSnapshot{}
		if file != nil {
			snap.Files = append([]string{cr.path}, moduleFiles(&c, readRaw(file))...)
		}
		return snap, err
	}
	raw := readRaw(file)
	snap := authSnapshot{Files: append([]string{c.Config}, moduleFiles(&c, raw)...)}
	errs := c.check()
	// The modules log what they do from now on (a registry they watch,
	// say); the registerers built here are only checked.
	authn, _, err := c.modules(file, cr.log, cr.changed)
	if err != nil {
		errs = append(errs, err)
	}
	defer func() {
		if snap.Auth == nil {
			closeAuth(authn, cr.log)
		}
	}()
	values, err := settingValues(&c)
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return snap, errors.Join(errs...)
	}
	snap.Auth = authn
	snap.Identities = identitiesOf(tokenFiles(&c, raw))
	for _, k := range slices.Sorted(maps.Keys(values)) {
		if !liveKeys[k] && values[k] != cr.startValues[k] {
			snap.Restart = append(snap.Restart, k)
		}
	}
	if homeDigest(file) != cr.startHome {
		snap.Restart = append(snap.Restart, "nat/firewall/dns")
	}
	if clusterDigest(file) != cr.startCluster {
		snap.Restart = append(snap.Restart, "cluster")
	}
	if proxyProtocolDigest(file) != cr.startProxy {
		snap.Restart = append(snap.Restart, "proxy_protocol")
	}
	regKeys, regs, err := cr.registerers(file, raw)
	if err != nil {
		return snap, err
	}
	mods := authModules(&c, raw)
	added, removed := diffLists(cr.modules, mods)
	regsAdded, regsRemoved := diffLists(cr.regKeys, regKeys)
	snap.Changes = []any{"auth_modules_added", added, "auth_modules_removed", removed,
		"registerers_added", regsAdded, "registerers_removed", regsRemoved}
	hosts := file.Hosts()
	hostsAdded, hostsRemoved := diffLists(cr.hosts, hostList(hosts))
	snap.Changes = append(snap.Changes, "hosts_added", hostsAdded, "hosts_removed", hostsRemoved)
	snap.Commit = func() {
		cr.modules = mods
		if !slices.Equal(cr.hosts, hostList(hosts)) {
			if err := cr.srv.SetHosts(hosts); err != nil {
				// The file's checks passed: only a bug gets here.
				cr.log.Error("tunnel groups' hosts not reloaded", "err", err)
			} else {
				cr.hosts = hostList(hosts)
			}
		}
		if !slices.Equal(regKeys, cr.regKeys) {
			cr.srv.SetRegisterers(regs)
			if cr.held != nil {
				cr.held.swapRegisterers(regs)
			}
		}
		cr.regKeys, cr.regs = regKeys, regs
	}
	return snap, nil
}

// registerers builds the register list of f, keeping each registerer in
// force whose module and settings are unchanged: its routes stay as they
// are.
func (cr *configReload) registerers(f *config.File, raw rawConfig) ([]string, []gateway.Registerer, error) {
	keys := registerModules(raw)
	built := []gateway.Registerer{&reglog.Registerer{Logger: cr.log}}
	if len(f.Register) > 0 {
		var err error
		if built, err = f.Registerers(config.Env{Logger: cr.log}); err != nil {
			return nil, nil, err
		}
	}
	if len(built) != len(keys) {
		return nil, nil, fmt.Errorf("%s: register: the file changed while read: reloaded again on the next change", f.Path)
	}
	used := make([]bool, len(cr.regKeys))
	out := make([]gateway.Registerer, len(keys))
	for i, k := range keys {
		out[i] = built[i]
		for j, old := range cr.regKeys {
			if !used[j] && old == k && j < len(cr.regs) {
				used[j], out[i] = true, cr.regs[j]
				// The one built in its place is never used.
				closeModule(built[i], cr.log)
				break
			}
		}
	}
	return keys, out, nil
}

// registerModules words the register modules of a file, such as "log";
// the default list when it has none.
func registerModules(raw rawConfig) []string {
	if len(raw.register) == 0 {
		return []string{"log"}
	}
	return moduleKeys(raw.register)
}

// moduleKeys words modules: their name, and a digest of their settings
// if they have some (never a secret).
func moduleKeys(ms []rawModule) []string {
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		if len(m.settings) == 0 {
			out = append(out, m.name)
			continue
		}
		b, _ := json.Marshal(m.settings) // map keys sorted
		out = append(out, fmt.Sprintf("%s:%x", m.name, sha256.Sum256(b)))
	}
	return out
}

// settingValues are c's settings, by their key in the file, as text.
func settingValues(c *serverCmd) (map[string]string, error) {
	k, err := kong.New(c, kong.Vars{"version": cli.Version}, kong.Exit(func(int) {}))
	if err != nil {
		return nil, fmt.Errorf("command line: %w", err)
	}
	out := make(map[string]string)
	for _, f := range k.Model.Node.Flags {
		if !cli.InFile(f) {
			continue
		}
		out[cli.SettingKey(f)] = fmt.Sprint(f.Target.Interface())
	}
	return out, nil
}

// rawConfig is what a reload compares of the module sections of a file.
type rawConfig struct {
	dir            string
	auth, register []rawModule
}

type rawModule struct {
	name     string
	settings map[string]any
	group    string // the tunnel group whose auth list it is in; "" for none
}

// readRaw reads the module sections of f again. The file was checked
// just before; a file that changed meanwhile reads as it is now, and the
// watch reloads it again.
func readRaw(f *config.File) rawConfig {
	raw := rawConfig{}
	if f == nil {
		return raw
	}
	raw.dir = f.Dir
	data, err := os.ReadFile(f.Path)
	if err != nil {
		return raw
	}
	var doc struct {
		Auth     []map[string]map[string]any `yaml:"auth"`
		Register []map[string]map[string]any `yaml:"register"`
		Groups   []struct {
			Name string                      `yaml:"name"`
			Auth []map[string]map[string]any `yaml:"auth"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return raw
	}
	for _, m := range doc.Auth {
		for name, s := range m {
			raw.auth = append(raw.auth, rawModule{name: name, settings: s})
		}
	}
	for _, g := range doc.Groups {
		for _, m := range g.Auth {
			for name, s := range m {
				raw.auth = append(raw.auth, rawModule{name: name, settings: s, group: g.Name})
			}
		}
	}
	for _, m := range doc.Register {
		for name, s := range m {
			raw.register = append(raw.register, rawModule{name: name, settings: s})
		}
	}
	return raw
}

// tokenFiles are the tokens files c and its file name: --tokens (or
// tokens:), which overrides the auth list, or the auth lists'.
func tokenFiles(c *serverCmd, raw rawConfig) []string {
	if c.Tokens != "" {
		return []string{c.Tokens}
	}
	var files []string
	for _, m := range raw.auth {
		if f := m.tokensFile(raw.dir); f != "" && !slices.Contains(files, f) {
			files = append(files, f)
		}
	}
	return files
}

// moduleFiles are the files the auth modules read (tokens files, users
// files, key registries: their settings of kind config.Path), which a
// change to reloads.
func moduleFiles(c *serverCmd, raw rawConfig) []string {
	files := tokenFiles(c, raw)
	for _, m := range raw.auth {
		for _, k := range config.PathKeys(m.name) {
			f, _ := m.settings[k].(string)
			if f == "" {
				continue
			}
			if !filepath.IsAbs(f) {
				f = filepath.Join(raw.dir, f)
			}
			if !slices.Contains(files, f) {
				files = append(files, f)
			}
		}
	}
	return files
}

// tokensFile is the file of a tokens module, relative paths taken from
// dir; "" for another module.
func (m rawModule) tokensFile(dir string) string {
	f, _ := m.settings["file"].(string)
	if m.name != "tokens" || f == "" {
		return ""
	}
	if !filepath.IsAbs(f) {
		f = filepath.Join(dir, f)
	}
	return f
}

// authModules words the auth modules in force, such as "tokens:FILE" or
// "allow_all"; never a secret (a module's other settings are digested).
func authModules(c *serverCmd, raw rawConfig) []string {
	if c.Tokens != "" {
		return []string{"tokens:" + c.Tokens}
	}
	var out []string
	for _, m := range raw.auth {
		key := moduleKeys([]rawModule{m})[0]
		if m.name == "tokens" {
			key = "tokens:" + m.tokensFile(raw.dir)
		}
		if m.group != "" {
			key = "group " + m.group + ": " + key
		}
		out = append(out, key)
	}
	return out
}

// identitiesOf merges what tokenIdentities says of each file; nil when
// one cannot be read.
func identitiesOf(files []string) map[string]string {
	out := make(map[string]string)
	for _, f := range files {
		t, err := tokens.Load(f)
		if err != nil {
			return nil
		}
		ids := tokenIdentities(f, t)
		if ids == nil {
			return nil
		}
		for id, d := range ids {
			out[id] += d
		}
	}
	return out
}

// diffLists lists, sorted, the items only in after and only in before,
// counted with their repeats.
func diffLists(before, after []string) (added, removed []string) {
	added, removed = []string{}, []string{}
	n := make(map[string]int)
	for _, s := range before {
		n[s]++
	}
	for _, s := range after {
		if n[s]--; n[s] < 0 {
			added = append(added, s)
		}
	}
	for _, s := range before {
		if n[s] > 0 {
			n[s]--
			removed = append(removed, s)
		}
	}
	sort.Strings(added)
	sort.Strings(removed)
	return added, removed
}

// hostList words hosts as "HOST=TUNNEL", sorted.
func hostList(hosts gateway.Hosts) []string {
	out := make([]string, 0, len(hosts))
	for _, h := range slices.Sorted(maps.Keys(hosts)) {
		out = append(out, h+"="+hosts[h])
	}
	return out
}
