package gateway

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/diglett/diglett/internal/protocol"
)

// Hosts maps further host names to the tunnels that answer on them, beside
// NAME.Domain: "www.example.org" -> "web". Host names are in lower case
// without a trailing dot or a port.
type Hosts map[string]string

// SetHosts puts hosts in force in place of Config.Hosts (or a previous
// call's): HTTP requests and TLS server names for one of them go to its
// tunnel from now on, and HostAllowed lets certificates be ordered for
// them. The map is copied. A host under the gateway's Domain, a host that
// is not a DNS name, or a tunnel name that is not one is refused whole.
func (s *Server) SetHosts(hosts Hosts) error {
	h, err := checkHosts(s.cfg.Domain, hosts)
	if err != nil {
		return err
	}
	s.hosts.Store(&h)
	// The registerers publish the hosts with the routes.
	s.reg.mu.Lock()
	for _, t := range s.reg.byName {
		t.reconcileLocked()
	}
	s.reg.mu.Unlock()
	return nil
}

// checkHosts returns a clean copy of hosts, or why it is refused.
func checkHosts(domain string, hosts Hosts) (Hosts, error) {
	out := make(Hosts, len(hosts))
	var errs []error
	for host, name := range hosts {
		if err := ValidateHost(host); err != nil {
			errs = append(errs, err)
			continue
		}
		if domain != "" && strings.HasSuffix(host, "."+domain) {
			errs = append(errs, fmt.Errorf("host %q: is under the gateway's domain, where NAME.%s is tunnel NAME's already", host, domain))
			continue
		}
		if err := protocol.ValidateName(name); err != nil {
			errs = append(errs, fmt.Errorf("host %q: tunnel %w", host, err))
			continue
		}
		out[host] = name
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("gateway: hosts: %w", errors.Join(errs...))
	}
	return out, nil
}

// ValidateHost checks that host is a DNS name in lower case, without a
// trailing dot or a port: labels of letters, digits and inner hyphens, at
// least two of them, 253 characters at most.
func ValidateHost(host string) error {
	if len(host) > 253 {
		return fmt.Errorf("host %q: longer than 253 characters", host)
	}
	labels := strings.Split(host, ".")
	if len(labels) < 2 {
		return fmt.Errorf("host %q: want a DNS name such as www.example.org", host)
	}
	for _, l := range labels {
		if protocol.ValidateName(l) != nil {
			return fmt.Errorf("host %q: want a DNS name in lower case such as www.example.org", host)
		}
	}
	return nil
}

// Route maps a Host header (or TLS server name) to the tunnel that answers
// on it and the host its backend is told: NAME.Domain is tunnel NAME (see
// SplitHost), and each host of Hosts is its tunnel's, told as the visitor
// gave it, in lower case without a trailing dot. A host that is no
// tunnel's gives an empty name and no error; a port that is not a port
// number gives ErrMalformedHost.
func (s *Server) Route(host string) (name, forwarded string, err error) {
	name, forwarded, err = SplitHost(s.cfg.Domain, host)
	if err != nil || name != "" {
		return name, forwarded, err
	}
	hosts := s.furtherHosts()
	if len(hosts) == 0 || strings.ContainsAny(host, "[]") {
		return "", "", nil
	}
	hostname, port, hasPort := strings.Cut(host, ":")
	hostname = strings.ToLower(strings.TrimSuffix(hostname, "."))
	name, ok := hosts[hostname]
	if !ok {
		return "", "", nil
	}
	forwarded = hostname
	if hasPort {
		// SplitHost checked the port.
		p, _ := strconv.ParseUint(port, 10, 16)
		forwarded += ":" + strconv.FormatUint(p, 10)
	}
	return name, forwarded, nil
}

// HostsOf lists, sorted, the further hosts of tunnel name, for its
// agents and operators.
func (s *Server) HostsOf(name string) []string {
	var out []string
	for h, n := range maps.All(s.furtherHosts()) {
		if n == name {
			out = append(out, h)
		}
	}
	slices.Sort(out)
	return out
}

// routeHosts are the hosts of tunnel name as registerers publish them:
// NAME.Domain, then its further hosts; none for a UDP tunnel, which has
// no HTTP address.
func (s *Server) routeHosts(name string) []string {
	if t := s.reg.route(name); t != nil && t.udp {
		return nil
	}
	var out []string
	if s.cfg.Domain != "" {
		out = append(out, name+"."+s.cfg.Domain)
	}
	return append(out, s.HostsOf(name)...)
}

// furtherHosts is the Hosts in force; nil for none.
func (s *Server) furtherHosts() Hosts {
	if h := s.hosts.Load(); h != nil {
		return *h
	}
	return nil
}
