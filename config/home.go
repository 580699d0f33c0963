package config

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/diglett/diglett/dnsupdate"
	"github.com/diglett/diglett/firewall"
	"github.com/diglett/diglett/homenet"
)

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
