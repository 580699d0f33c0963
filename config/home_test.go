package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestHomeSectionErrors(t *testing.T) {
	tests := map[string]struct {
		content string
		want    []string // each line of the error, after "gateway.yaml:"
	}{
		"protocol":     {"version: 1\nnat: {protocol: igd}\n", []string{`2: nat.protocol: want one of auto, upnp, pcp, natpmp, got "igd"`}},
		"refresh":      {"version: 1\nnat:\n  refresh: 10m\n", []string{`3: nat: refresh 10m0s must be shorter than lifetime 5m0s`}},
		"private ip":   {"version: 1\nnat: {private_ip: home}\n", []string{`2: nat.private_ip: "home" is not an IP address`}},
		"unknown":      {"version: 1\nnat: {lifetme: 5m}\n", []string{`2: nat: unknown key "lifetme" (did you mean "lifetime"?)`}},
		"not mapping":  {"version: 1\nfirewall: nftables\n", []string{`2: firewall: want a mapping of settings such as {protocol: auto}, got "nftables"`}},
		"backend":      {"version: 1\nfirewall: {backend: pf}\n", []string{`2: firewall.backend: want one of nftables, iptables, got "pf"`}},
		"host chain":   {"version: 1\nfirewall: {host_chain: input}\n", []string{`2: firewall.host_chain: want FAMILY TABLE CHAIN such as "inet filter input", got "input"`}},
		"chain ipt":    {"version: 1\nfirewall: {backend: iptables, host_chain: inet filter input}\n", []string{`2: firewall.host_chain: only for the nftables backend`}},
		"no server":    {"version: 1\ndns: {zone: home.test}\n", []string{`2: dns: no server`}},
		"records":      {"version: 1\ndns: {server: 127.0.0.1, records: all}\n", []string{`2: dns.records: want one of wildcard, per_tunnel, got "all"`}},
		"tsig alone":   {"version: 1\ndns: {server: 127.0.0.1, tsig_key: k.}\n", []string{`2: dns: tsig_key and tsig_secret_file go together`}},
		"bad address":  {"version: 1\ndns: {server: 127.0.0.1, addresses: [home]}\n", []string{`2: dns.addresses: "home" is not an IP address`}},
		"ttl duration": {"version: 1\ndns: {server: 127.0.0.1, ttl: 60}\n", []string{`2: dns.ttl: want a duration such as 60s, got "60"`}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := write(t, "gateway.yaml", tc.content)
			_, err := LoadServer(p, testSchema)
			if err == nil {
				t.Fatal("accepted")
			}
			got := err.Error()
			for _, w := range tc.want {
				if !strings.Contains(got, p+":"+w) {
					t.Errorf("error\n%s\ndoes not say\n%s", got, w)
				}
			}
			if lines := strings.Count(got, "\n") + 1; lines != len(tc.want) {
				t.Errorf("%d errors, want %d:\n%s", lines, len(tc.want), got)
			}
		})
	}
}

func TestHomeOptions(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "tsig.key")
	writeAt(t, secret, "c2VjcmV0\n")
	p := writeAt(t, filepath.Join(dir, "gateway.yaml"), `version: 1
domain: Home.Example.org
nat: {protocol: pcp, refresh: 30s, lifetime: 2m, router: 192.168.1.1}
firewall: {host_chain: inet filter input}
dns:
  server: 192.168.1.1:53
  zone: example.org
  tsig_key: diglett.
  tsig_secret_file: tsig.key
  ttl: 2m
  acme: true
  resolvers: [192.168.1.1]
`)
	f, err := LoadServer(p, testSchema)
	if err != nil {
		t.Fatal(err)
	}
	hs, err := f.HomeOptions(f.Settings["domain"].Value)
	if err != nil {
		t.Fatal(err)
	}
	o := hs.Options
	if o.NAT.Protocol != "pcp" || o.NAT.Refresh != 30*time.Second || o.NAT.Lifetime != 2*time.Minute || o.NAT.Router != netip.MustParseAddr("192.168.1.1") {
		t.Errorf("nat: %+v", o.NAT)
	}
	if o.Firewall.HostChain != "inet filter input" || o.Firewall.Backend != "" {
		t.Errorf("firewall: %+v", o.Firewall)
	}
	d := o.DNS.Update
	if d.Server != "192.168.1.1:53" || d.Zone != "example.org" || d.TTL != 2*time.Minute || d.TSIG.Name != "diglett." || d.TSIG.Secret != "c2VjcmV0" {
		t.Errorf("dns: %+v %+v", d, d.TSIG)
	}
	if strings.Join(hs.Names, " ") != "home.example.org *.home.example.org" || !hs.ACME || strings.Join(hs.Resolvers, " ") != "192.168.1.1" {
		t.Errorf("names %v acme %v resolvers %v", hs.Names, hs.ACME, hs.Resolvers)
	}

	for _, c := range []struct{ content, want string }{
		{"version: 1\ndns: {server: 127.0.0.1, addresses: [192.0.2.1]}\n", "the gateway has no domain"},
		{"version: 1\ndomain: a.test\ndns: {server: 127.0.0.1, zone: b.test, addresses: [192.0.2.1]}\n", "the domain a.test is not in zone b.test"},
		{"version: 1\ndomain: a.test\ndns: {server: 127.0.0.1}\n", "no address to point the records at"},
		{"version: 1\ndomain: a.test\ndns: {server: 127.0.0.1, tsig_key: k., tsig_secret_file: nope.key, addresses: [192.0.2.1]}\n", "dns.tsig_secret_file: open"},
	} {
		f, err := LoadServer(writeAt(t, filepath.Join(dir, "g.yaml"), c.content), testSchema)
		if err != nil {
			t.Fatalf("%q: %v", c.content, err)
		}
		if _, err := f.HomeOptions(f.Settings["domain"].Value); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.content, err, c.want)
		}
	}
}

func writeAt(t *testing.T, p, content string) string {
	t.Helper()
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
