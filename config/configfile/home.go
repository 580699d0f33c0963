package configfile

import (
	"net/netip"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/diglett/diglett/internal/yamlerr"
)

// Home is what a gateway at home keeps reachable: its sections nat
// (port mapping on the router), firewall (the host's rules) and dns
// (records of the gateway's domain). A nil section was not given.
//
//	nat: {protocol: auto, refresh: 60s, lifetime: 300s}
//	firewall: {backend: nftables, host_chain: inet filter input}
//	dns: {server: 192.168.1.1:53, tsig_key: diglett., tsig_secret_file: tsig.key}
type Home struct {
	NAT, Firewall, DNS map[string]Setting
}

// The settings of each home section.
var (
	natSchema = Schema{"protocol": String, "refresh": Duration, "lifetime": Duration,
		"private_ip": String, "router": String}
	firewallSchema = Schema{"backend": String, "refresh": Duration, "host_chain": String}
	dnsSchema      = Schema{"server": String, "zone": String, "tsig_key": String,
		"tsig_algorithm": String, "tsig_secret_file": Path, "ttl": Duration,
		"records": String, "addresses": List, "acme": Bool, "resolvers": List}
)

// HomeSections are the sections Home reads.
func HomeSections() []string { return []string{"nat", "firewall", "dns"} }

// parseHome checks one home section into f.Home.
func parseHome(errs *errorList, checks *Checks, dir, key string, v *yaml.Node, f *File) {
	if v.Kind != yaml.MappingNode && !(v.Kind == yaml.ScalarNode && v.Tag == "!!null") {
		errs.add(v.Line, "%s: want a mapping of settings such as {protocol: auto}, got %s", key, yamlerr.Describe(v))
		return
	}
	if f.Home == nil {
		f.Home = &Home{}
	}
	switch key {
	case "nat":
		s := parseSettings(errs, dir, key, natSchema, v)
		checkEnum(errs, s, "protocol", "nat", "auto", "upnp", "pcp", "natpmp")
		checkAddr(errs, s, "private_ip", "nat")
		checkAddr(errs, s, "router", "nat")
		if r, l := durationOf(s, "refresh", checks.natRefresh()), durationOf(s, "lifetime", checks.natLifetime()); checks != nil && r >= l {
			line := v.Line
			if st, ok := s["refresh"]; ok {
				line = st.Line
			}
			errs.add(line, "nat: refresh %v must be shorter than lifetime %v, or mappings lapse between renewals", r, l)
		}
		f.Home.NAT = s
	case "firewall":
		s := parseSettings(errs, dir, key, firewallSchema, v)
		checkEnum(errs, s, "backend", "firewall", "nftables", "iptables")
		if hc, ok := s["host_chain"]; ok {
			if len(strings.Fields(hc.Value)) != 3 {
				errs.add(hc.Line, "firewall.host_chain: want FAMILY TABLE CHAIN such as \"inet filter input\", got %q", hc.Value)
			} else if b := s["backend"].Value; b == "iptables" {
				errs.add(hc.Line, "firewall.host_chain: only for the nftables backend (iptables jumps from INPUT itself)")
			}
		}
		f.Home.Firewall = s
	case "dns":
		s := parseSettings(errs, dir, key, dnsSchema, v)
		if _, ok := s["server"]; !ok {
			errs.add(v.Line, "dns: no server: give the primary name server that takes updates, such as {server: 192.168.1.1:53}")
		}
		checkEnum(errs, s, "records", "dns", "wildcard", "per_tunnel")
		checkEnum(errs, s, "tsig_algorithm", "dns", "hmac-sha256", "hmac-sha512", "hmac-sha1")
		_, key := s["tsig_key"]
		_, secret := s["tsig_secret_file"]
		if key != secret {
			errs.add(v.Line, "dns: tsig_key and tsig_secret_file go together")
		}
		if a, ok := s["addresses"]; ok {
			for _, it := range a.List {
				if _, err := netip.ParseAddr(it); err != nil {
					errs.add(a.Line, "dns.addresses: %q is not an IP address", it)
				}
			}
		}
		f.Home.DNS = s
	}
}

func checkEnum(errs *errorList, s map[string]Setting, key, section string, values ...string) {
	if v, ok := s[key]; ok && !slices.Contains(values, v.Value) {
		errs.add(v.Line, "%s.%s: want one of %s, got %q", section, key, strings.Join(values, ", "), v.Value)
	}
}

func checkAddr(errs *errorList, s map[string]Setting, key, section string) {
	if v, ok := s[key]; ok {
		if _, err := netip.ParseAddr(v.Value); err != nil {
			errs.add(v.Line, "%s.%s: %q is not an IP address", section, key, v.Value)
		}
	}
}

func durationOf(s map[string]Setting, key string, def time.Duration) time.Duration {
	if v, ok := s[key]; ok {
		if d, err := time.ParseDuration(v.Value); err == nil {
			return d
		}
	}
	return def
}

func (c *Checks) natRefresh() time.Duration {
	if c == nil {
		return 0
	}
	return c.NATRefresh
}

func (c *Checks) natLifetime() time.Duration {
	if c == nil {
		return 0
	}
	return c.NATLifetime
}

// LoadHome reads a file of diglett-server portmap: the settings of
// schema, plus nat, firewall and dns, checked against checks.
func LoadHome(path string, schema Schema, checks *Checks) (*File, error) {
	return Load(path, schema, HomeSections(), checks)
}
