// Package config reads the versioned configuration files of diglett-server
// and diglett (YAML, "version: 1"), and builds the gateway's modules from
// them through one explicit table (modules.go). Every problem is reported
// with the file, the line and the key, in plain words; a file is checked
// whole, so every problem in it is reported at once.
//
// A file holds plain settings, one per command-line flag (the flag's name
// in snake_case: max_visitors for --max-visitors), whose keys and kinds
// the caller gives as a Schema, and sections of their own: auth and
// register (the gateway's modules) and tunnels (the agent's tunnels).
//
// The checking itself is package configfile's, which links nothing of
// the gateway: the agent reads its file through it alone. This package
// adds what the gateway's sections are checked against (checks) and what
// is built from them.
package config

import (
	"github.com/diglett/diglett/config/configfile"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/homenet"
)

// Version is the only version of the file format.
const Version = configfile.Version

// Kind is the kind of value a setting takes.
type Kind = configfile.Kind

// The kinds of settings.
const (
	String   = configfile.String   // any scalar
	Int      = configfile.Int      // a whole number
	Bool     = configfile.Bool     // true or false
	Duration = configfile.Duration // a duration such as 60s or 1m30s
	List     = configfile.List     // a list of strings (or one string)
	Path     = configfile.Path     // a file or directory: relative to the config file's directory
)

type (
	// Schema maps the keys of a file's plain settings to their kinds.
	Schema = configfile.Schema
	// Setting is one plain setting of a file, checked against its kind.
	Setting = configfile.Setting
	// Module is one item of a module list (auth, register).
	Module = configfile.Module
	// Tunnel is one tunnel of an agent's file.
	Tunnel = configfile.Tunnel
	// Group is one tunnel group of a gateway's file.
	Group = configfile.Group
	// Home is a gateway's nat, firewall and dns sections.
	Home = configfile.Home
	// ClusterSettings is the cluster section of a file.
	ClusterSettings = configfile.ClusterSettings
	// ProxyProtocol is the proxy_protocol section of a file.
	ProxyProtocol = configfile.ProxyProtocol
	// Error is one problem found in a configuration file, at a line.
	Error = configfile.Error
	// Errors are all the problems found in a file, in the order of its
	// lines.
	Errors = configfile.Errors
)

// File is a checked configuration file, with the gateway's modules and
// home settings built from it on demand.
type File struct {
	*configfile.File
}

// Lookup returns the setting of key, if the file has it; a nil file has
// none.
func (f *File) Lookup(key string) (Setting, bool) {
	if f == nil {
		return Setting{}, false
	}
	return f.File.Lookup(key)
}

// wrap is f as a *File: nil when f is nil.
func wrap(f *configfile.File, err error) (*File, error) {
	if f == nil {
		return nil, err
	}
	return &File{File: f}, err
}

// checks are what the gateway's sections are checked against: the module
// table, the gateway's rule for hosts and the nat defaults.
var checks = &configfile.Checks{
	Modules:      moduleSpecs(),
	ValidateHost: gateway.ValidateHost,
	NATRefresh:   homenet.DefaultRefresh,
	NATLifetime:  homenet.DefaultLifetime,
}

// LoadServer reads a diglett-server file: the settings of schema, plus
// auth, register, groups, cluster, proxy_protocol, nat, firewall and dns.
func LoadServer(path string, schema Schema) (*File, error) {
	return wrap(configfile.Load(path, schema, configfile.ServerSections(), checks))
}

// LoadAgent reads a diglett file: the settings of schema, plus tunnels.
// The agent itself reads it with configfile.LoadAgent, which links none of
// the gateway.
func LoadAgent(path string, schema Schema) (*File, error) {
	return wrap(configfile.LoadAgent(path, schema))
}

// LoadHome reads a file of diglett-server portmap: the settings of
// schema, plus nat, firewall and dns.
func LoadHome(path string, schema Schema) (*File, error) {
	return wrap(configfile.LoadHome(path, schema, checks))
}

// parse checks data, the text of file, whose relative paths are taken
// from dir (the tests' way in).
func parse(file, dir string, data []byte, schema Schema, sections []string) (*File, error) {
	return wrap(configfile.Parse(file, dir, data, schema, sections, checks))
}
