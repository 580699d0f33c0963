// Package configfile checks the versioned configuration files of
// diglett-server and diglett (YAML, "version: 1") into plain values: the
// settings of a Schema, the agent's tunnels, and the shape of the
// gateway's sections (modules, groups, cluster, nat, firewall, dns).
// Every problem is reported with the file, the line and the key, in plain
// words; a file is checked whole, so every problem in it is reported at
// once.
//
// It links nothing of the gateway, so that the agent can read its file
// without it: what the gateway's sections are checked against (the known
// modules, host names, the nat defaults) comes in Checks, which package
// config gives, and config builds the gateway's modules from the result.
package configfile

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/diglett/diglett/internal/yamlerr"
	"go.yaml.in/yaml/v3"
)

// Version is the only version of the file format.
const Version = 1

// Kind is the kind of value a setting takes.
type Kind int

// The kinds of settings.
const (
	String   Kind = iota // any scalar
	Int                  // a whole number
	Bool                 // true or false
	Duration             // a duration such as 60s or 1m30s
	List                 // a list of strings (or one string)
	Path                 // a file or directory: relative to the config file's directory
)

// Schema maps the keys of a file's plain settings to their kinds.
type Schema map[string]Kind

// Setting is one plain setting of a file, checked against its kind.
type Setting struct {
	Key  string
	Line int
	// Value is the setting's value as text (a Path made absolute); for a
	// List, its items joined by commas.
	Value string
	// List holds the items of a List setting.
	List []string
}

// Module is one item of a module list (auth, register): the module's name
// and its own settings, checked when the module is built (Settings).
type Module struct {
	Name string
	Line int
	node *yaml.Node // the settings; nil when none were given
}

// Tunnel is one tunnel of an agent's file.
type Tunnel struct {
	Name      string
	Backend   string // as written: HOST:PORT or a bare PORT
	H2C       bool
	BasicAuth string
	AllowIPs  []string
	Port      int
	// ProxyProtocol is the PROXY protocol header the agent sends the
	// backend: "off", "v1" or "v2", or "" when the tunnel does not say.
	ProxyProtocol string
	// UDP makes the tunnel a UDP tunnel (udp: true).
	UDP  bool
	Line int
}

// File is a checked configuration file.
type File struct {
	// Path is the file as given; Dir is its directory, which relative
	// paths in it are taken from.
	Path, Dir string
	// Settings are the plain settings, by key.
	Settings map[string]Setting
	// Auth and Register are the gateway's module lists, in file order.
	Auth, Register []Module
	// Tunnels are the agent's tunnels, in file order.
	Tunnels []Tunnel
	// Groups are the gateway's tunnel groups, in file order.
	Groups []Group
	// Home is the gateway's nat, firewall and dns sections; nil without
	// any (home.go).
	Home *Home
	// Cluster is the gateway's cluster section; nil without it
	// (cluster.go).
	Cluster *ClusterSettings
	// ProxyProtocol is the gateway's proxy_protocol section; nil without
	// it (proxyproto.go).
	ProxyProtocol *ProxyProtocol
}

// Lookup returns the setting of key, if the file has it.
func (f *File) Lookup(key string) (Setting, bool) {
	if f == nil {
		return Setting{}, false
	}
	s, ok := f.Settings[key]
	return s, ok
}

// ModuleSpec is what a module list's item is checked against: the
// section the module belongs to ("auth" or "register") and the settings
// it takes.
type ModuleSpec struct {
	Section  string
	Settings Schema
}

// Checks are what the gateway's sections are checked against beyond
// their shape. A nil *Checks knows no modules and checks neither hosts
// nor the nat section's timing.
type Checks struct {
	// Modules are the known modules, by name.
	Modules map[string]ModuleSpec
	// ValidateHost checks each further host of a group; nil takes any.
	ValidateHost func(host string) error
	// NATRefresh and NATLifetime are the nat section's defaults, which a
	// refresh must stay shorter than the lifetime against.
	NATRefresh, NATLifetime time.Duration
}

// ServerSections are the sections of a diglett-server file besides its
// settings.
func ServerSections() []string {
	return append([]string{"auth", "register", "groups", "cluster", "proxy_protocol"}, HomeSections()...)
}

// LoadAgent reads a diglett file: the settings of schema, plus tunnels.
func LoadAgent(path string, schema Schema) (*File, error) {
	return Load(path, schema, []string{"tunnels"}, nil)
}

// Load reads path, a file of the settings of schema and of sections,
// checked against checks.
func Load(path string, schema Schema, sections []string, checks *Checks) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	return Parse(path, dir, data, schema, sections, checks)
}

// Parse checks data, the text of file, whose relative paths are taken
// from dir: the settings of schema and the given sections, checked
// against checks.
func Parse(file, dir string, data []byte, schema Schema, sections []string, checks *Checks) (*File, error) {
	errs := &errorList{file: file}
	f := &File{Path: file, Dir: dir, Settings: make(map[string]Setting)}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		errs.add(yamlLine(err), "not valid YAML: %s", yamlMsg(err))
		return nil, errs.err()
	}
	if len(doc.Content) == 0 {
		errs.add(0, "empty file: start it with \"version: %d\"", Version)
		return nil, errs.err()
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		errs.add(root.Line, "want a mapping of keys to values (version: %d, ...), got %s", Version, yamlerr.Describe(root))
		return nil, errs.err()
	}
	known := append(slices.Sorted(maps.Keys(schema)), sections...)
	known = append(known, "version")
	seen := map[string]int{}
	version := false
	var groups *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		key := k.Value
		if line, dup := seen[key]; dup {
			errs.add(k.Line, "%s: given twice (first on line %d)", key, line)
			continue
		}
		seen[key] = k.Line
		switch {
		case key == "version":
			version = true
			if n, err := strconv.Atoi(v.Value); v.Kind != yaml.ScalarNode || err != nil || n != Version {
				errs.add(v.Line, "version: want %d, got %s", Version, yamlerr.Describe(v))
			}
		case key == "auth" && slices.Contains(sections, key):
			f.Auth = parseModules(errs, checks, key, v)
		case key == "register" && slices.Contains(sections, key):
			f.Register = parseModules(errs, checks, key, v)
		case key == "tunnels" && slices.Contains(sections, key):
			f.Tunnels = parseTunnels(errs, v)
		case key == "groups" && slices.Contains(sections, key):
			groups = v // once the domain is known
		case slices.Contains(HomeSections(), key) && slices.Contains(sections, key):
			parseHome(errs, checks, dir, key, v, f)
		case key == "cluster" && slices.Contains(sections, key):
			parseCluster(errs, dir, v, f)
		case key == "proxy_protocol" && slices.Contains(sections, key):
			parseProxyProtocol(errs, v, f)
		default:
			kind, ok := schema[key]
			if !ok {
				errs.add(k.Line, "%s", unknownKey(key, known))
				continue
			}
			if s, ok := parseSetting(errs, dir, key, kind, v); ok {
				f.Settings[key] = s
			}
		}
	}
	if groups != nil {
		f.Groups = parseGroups(errs, checks, strings.TrimSuffix(strings.ToLower(f.Settings["domain"].Value), "."), groups)
	}
	if !version {
		errs.add(root.Line, "no version: start the file with \"version: %d\"", Version)
	}
	if err := errs.err(); err != nil {
		return nil, err
	}
	return f, nil
}

// parseSettings checks the settings of a mapping (a module's block)
// against schema.
func parseSettings(errs *errorList, dir, where string, schema Schema, n *yaml.Node) map[string]Setting {
	out := map[string]Setting{}
	if n == nil || n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return out
	}
	if n.Kind != yaml.MappingNode {
		errs.add(n.Line, "%s: want a mapping of settings such as {file: tokens.yaml}, got %s", where, yamlerr.Describe(n))
		return out
	}
	known := slices.Sorted(maps.Keys(schema))
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		kind, ok := schema[k.Value]
		if !ok {
			msg := unknownKey(k.Value, known)
			if len(known) == 0 {
				msg = fmt.Sprintf("unknown key %q (this module takes no settings)", k.Value)
			}
			errs.add(k.Line, "%s: %s", where, msg)
			continue
		}
		if s, ok := parseSetting(errs, dir, where+"."+k.Value, kind, v); ok {
			out[k.Value] = s
		}
	}
	return out
}

// parseSetting checks v against kind.
func parseSetting(errs *errorList, dir, key string, kind Kind, v *yaml.Node) (Setting, bool) {
	s := Setting{Key: key, Line: v.Line}
	if kind == List {
		switch v.Kind {
		case yaml.ScalarNode:
			s.List = []string{v.Value}
		case yaml.SequenceNode:
			for _, it := range v.Content {
				if it.Kind != yaml.ScalarNode {
					errs.add(it.Line, "%s: want a list of strings, got %s in it", key, yamlerr.Describe(it))
					return s, false
				}
				s.List = append(s.List, it.Value)
			}
		default:
			errs.add(v.Line, "%s: want a list of strings, got %s", key, yamlerr.Describe(v))
			return s, false
		}
		s.Value = strings.Join(s.List, ",")
		return s, true
	}
	if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
		errs.add(v.Line, "%s: want %s, got %s", key, want(kind), yamlerr.Describe(v))
		return s, false
	}
	s.Value = v.Value
	var bad bool
	switch kind {
	case Int:
		_, err := strconv.Atoi(v.Value)
		bad = err != nil
	case Bool:
		_, err := strconv.ParseBool(v.Value)
		bad = err != nil || v.Tag != "!!bool"
	case Duration:
		_, err := time.ParseDuration(v.Value)
		bad = err != nil
	case Path:
		if v.Value != "" && !filepath.IsAbs(v.Value) {
			s.Value = filepath.Join(dir, v.Value)
		}
	}
	if bad {
		errs.add(v.Line, "%s: want %s, got %s", key, want(kind), yamlerr.Describe(v))
		return s, false
	}
	return s, true
}

func want(k Kind) string {
	switch k {
	case Int:
		return "a whole number"
	case Bool:
		return "true or false"
	case Duration:
		return "a duration such as 60s"
	case List:
		return "a list of strings"
	case Path:
		return "a file name"
	}
	return "a string"
}

// Settings checks the module's settings against schema, with relative
// paths taken from dir; where names the module in the problems, which
// are of file.
func (m Module) Settings(file, dir, where string, schema Schema) (map[string]Setting, error) {
	errs := &errorList{file: file}
	s := parseSettings(errs, dir, where, schema, m.node)
	return s, errs.err()
}

// moduleNames lists the known modules of section, sorted.
func (c *Checks) moduleNames(section string) []string {
	var names []string
	for _, n := range slices.Sorted(maps.Keys(c.modules())) {
		if c.Modules[n].Section == section {
			names = append(names, n)
		}
	}
	return names
}

func (c *Checks) modules() map[string]ModuleSpec {
	if c == nil {
		return nil
	}
	return c.Modules
}

// parseModules checks a module list: a list of one-key mappings
// {module-name: settings}.
func parseModules(errs *errorList, checks *Checks, section string, n *yaml.Node) []Module {
	if n.Kind != yaml.SequenceNode {
		errs.add(n.Line, "%s: want a list of modules such as \"- log: {}\", got %s", section, yamlerr.Describe(n))
		return nil
	}
	var ms []Module
	for _, it := range n.Content {
		if it.Kind != yaml.MappingNode || len(it.Content) != 2 {
			errs.add(it.Line, "%s: want one module per item, as \"- NAME: {settings}\", got %s", section, yamlerr.Describe(it))
			continue
		}
		m := Module{Name: it.Content[0].Value, Line: it.Content[0].Line, node: it.Content[1]}
		if spec, ok := checks.modules()[m.Name]; !ok || spec.Section != section {
			errs.add(m.Line, "%s: unknown module %q (known: %s)", section, m.Name, strings.Join(checks.moduleNames(section), ", "))
			continue
		}
		ms = append(ms, m)
	}
	return ms
}

// tunnelSchema is the settings of one tunnel.
var tunnelSchema = Schema{"name": String, "backend": String, "h2c": Bool, "basic_auth": String, "allow_ips": List, "port": Int, "proxy_protocol": String, "udp": Bool}

// proxyProtocols are the values of a tunnel's proxy_protocol (those of
// the agent's --proxy-protocol).
var proxyProtocols = []string{"off", "v1", "v2"}

func parseTunnels(errs *errorList, n *yaml.Node) []Tunnel {
	if n.Kind != yaml.SequenceNode {
		errs.add(n.Line, "tunnels: want a list such as [{name: web, backend: localhost:3000}], got %s", yamlerr.Describe(n))
		return nil
	}
	var ts []Tunnel
	names := map[string]int{}
	for i, it := range n.Content {
		where := fmt.Sprintf("tunnels[%d]", i+1)
		before := len(errs.errs)
		s := parseSettings(errs, "", where, tunnelSchema, it)
		if len(errs.errs) > before {
			continue
		}
		t := Tunnel{Name: s["name"].Value, Backend: s["backend"].Value, BasicAuth: s["basic_auth"].Value, AllowIPs: s["allow_ips"].List, Line: it.Line}
		t.H2C, _ = strconv.ParseBool(s["h2c"].Value)
		t.Port, _ = strconv.Atoi(s["port"].Value)
		t.UDP, _ = strconv.ParseBool(s["udp"].Value)
		if pp, ok := s["proxy_protocol"]; ok {
			if !slices.Contains(proxyProtocols, pp.Value) {
				errs.add(pp.Line, "%s: want one of %s, got %q", pp.Key, strings.Join(proxyProtocols, ", "), pp.Value)
				continue
			}
			t.ProxyProtocol = pp.Value
		}
		if t.Name == "" || t.Backend == "" {
			errs.add(it.Line, "%s: want a name and a backend, as {name: web, backend: localhost:3000}", where)
			continue
		}
		if line, dup := names[t.Name]; dup {
			errs.add(it.Line, "%s: tunnel %q given twice (first on line %d)", where, t.Name, line)
			continue
		}
		names[t.Name] = it.Line
		ts = append(ts, t)
	}
	return ts
}

// yamlLine finds the line in a YAML syntax error, or 0.
func yamlLine(err error) int {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		return 0
	}
	msg := err.Error()
	if _, rest, ok := strings.Cut(msg, "line "); ok {
		end := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
		if end > 0 {
			n, _ := strconv.Atoi(rest[:end])
			return n
		}
	}
	return 0
}

// yamlMsg strips the prefix and line of a YAML syntax error.
func yamlMsg(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if _, rest, ok := strings.Cut(msg, ": "); ok && strings.HasPrefix(msg, "line ") {
		return rest
	}
	return msg
}
