package config

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/diglett/diglett/dnsupdate"
	"github.com/diglett/diglett/firewall"
	"github.com/diglett/diglett/homenet"
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

// homeSections are the sections Home reads.
var homeSections = []string{"nat", "firewall", "dns"}

// parseHome checks one home section into f.Home.
func parseHome(errs *errorList, dir, key string, v *yaml.Node, f *File) {
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
		if r, l := durationOf(s, "refresh", homenet.DefaultRefresh), durationOf(s, "lifetime", homenet.DefaultLifetime); r >= l {
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

// HomeSettings is what the home sections of a file ask for.
type HomeSettings struct {
	// Options are an Exposer's.
	Options homenet.Options
	// Names are the DNS records kept pointing at the public address:
	// DOMAIN and *.DOMAIN (records: wildcard, the default) or DOMAIN
	// alone (records: per_tunnel; the tunnels' hosts come and go).
	Names []string
	// ACME says the certificates are ordered over DNS-01 through the dns
	// section's server (acme: true); Resolvers are where the challenge's
	// records are checked before the CA is asked (default the system's).
	ACME      bool
	Resolvers []string
}

// HomeOptions builds the home sections of f: nil when f has none. domain
// is the gateway's: the dns section's zone defaults to it.
func (f *File) HomeOptions(domain string) (*HomeSettings, error) {
	if f == nil || f.Home == nil {
		return nil, nil
	}
	h := f.Home
	hs := &HomeSettings{}
	o := &hs.Options
	if s := h.NAT; s != nil {
		n := &homenet.NATOptions{
			Protocol: s["protocol"].Value,
			Refresh:  durationOf(s, "refresh", 0),
			Lifetime: durationOf(s, "lifetime", 0),
		}
		n.PrivateIP, _ = netip.ParseAddr(s["private_ip"].Value)
		n.Router, _ = netip.ParseAddr(s["router"].Value)
		o.NAT = n
	}
	if s := h.Firewall; s != nil {
		o.Firewall = &firewall.Options{
			Backend:   s["backend"].Value,
			Refresh:   durationOf(s, "refresh", 0),
			HostChain: s["host_chain"].Value,
		}
	}
	if s := h.DNS; s != nil {
		domain = strings.ToLower(strings.TrimSuffix(domain, "."))
		zone := s["zone"].Value
		if zone == "" {
			zone = domain
		}
		if domain == "" {
			return nil, fmt.Errorf("%s: dns: the gateway has no domain: its records are DOMAIN and *.DOMAIN; set domain", f.Path)
		}
		if zone == "" || !inZoneOf(domain, zone) {
			return nil, fmt.Errorf("%s:%d: dns.zone: the domain %s is not in zone %s", f.Path, s["zone"].Line, domain, zone)
		}
		d := &homenet.DNSOptions{
			Update: dnsupdate.Options{
				Server: s["server"].Value,
				Zone:   zone,
				TTL:    durationOf(s, "ttl", 0),
			},
			PerTunnel: s["records"].Value == "per_tunnel",
		}
		if k, ok := s["tsig_key"]; ok {
			sf := s["tsig_secret_file"]
			b, err := os.ReadFile(sf.Value)
			if err != nil {
				return nil, fmt.Errorf("%s:%d: dns.tsig_secret_file: %w", f.Path, sf.Line, err)
			}
			d.Update.TSIG = &dnsupdate.TSIG{Name: k.Value, Algorithm: s["tsig_algorithm"].Value, Secret: strings.TrimSpace(string(b))}
		}
		for _, it := range s["addresses"].List {
			a, _ := netip.ParseAddr(it)
			d.Addresses = append(d.Addresses, a)
		}
		if len(d.Addresses) == 0 && o.NAT == nil {
			return nil, fmt.Errorf("%s: dns: no address to point the records at: give dns.addresses, or a nat section so the router tells its public address", f.Path)
		}
		o.DNS = d
		hs.Names = []string{domain}
		if !d.PerTunnel {
			hs.Names = append(hs.Names, "*."+domain)
		}
		hs.ACME = s["acme"].Value == "true"
		hs.Resolvers = s["resolvers"].List
	}
	return hs, nil
}

func inZoneOf(name, zone string) bool {
	zone = strings.ToLower(strings.TrimSuffix(zone, "."))
	return name == zone || strings.HasSuffix(name, "."+zone)
}

// LoadHome reads a file of diglett-server portmap: the settings of
// schema, plus nat, firewall and dns.
func LoadHome(path string, schema Schema) (*File, error) {
	return load(path, schema, homeSections)
}
