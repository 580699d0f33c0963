// Package dnsupdate changes the records of a DNS zone on its primary
// server through dynamic updates (RFC 2136) signed with a TSIG key
// (RFC 8945): the A and AAAA records of a name, set or deleted in one
// update message each, and, through Provider, the TXT records of the ACME
// DNS-01 challenge.
package dnsupdate

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// TSIG is a shared key that signs the updates and their answers.
type TSIG struct {
	// Name is the key's name, as the server knows it ("gateway-key").
	Name string
	// Algorithm is "hmac-sha256" (the default when empty), "hmac-sha512"
	// or "hmac-sha1".
	Algorithm string
	// Secret is the key, base64-encoded.
	Secret string
}

// Options configures a Client. Zero values take the documented defaults.
type Options struct {
	// Server is the zone's primary server, host:port ("ns1.example.com:53",
	// "127.0.0.1:5353"); port 53 when omitted. Required.
	Server string
	// Zone is the zone to update ("example.com"; a trailing dot is
	// optional). Required.
	Zone string
	// TSIG signs the updates. Nil sends them unsigned, which a server
	// should refuse unless it trusts the sender's address; New logs a
	// warning then.
	TSIG *TSIG
	// TTL is the time to live of the records written. Default 60s.
	TTL time.Duration
	// Timeout bounds each exchange with the server. Default 10s.
	Timeout time.Duration
	// Logger receives one line per update. Default: discard. The secret
	// is never logged.
	Logger *slog.Logger
}

// Defaults for Options.
const (
	DefaultTTL     = 60 * time.Second
	DefaultTimeout = 10 * time.Second
	DefaultPort    = "53"
)

// The TSIG algorithms accepted, by their names in Options.
var algorithms = map[string]string{
	"hmac-sha256": dns.HmacSHA256,
	"hmac-sha512": dns.HmacSHA512,
	"hmac-sha1":   dns.HmacSHA1,
}

// ErrOutsideZone is returned, before anything is sent, for a name that is
// not in the client's zone.
var ErrOutsideZone = errors.New("dnsupdate: name outside the zone")

// RefusedError is a server's refusal of an update: its RCODE, and for a
// TSIG failure the error the server put in its TSIG record.
type RefusedError struct {
	Name      string // the name updated, absolute without the trailing dot
	Server    string // the server's address
	Rcode     int    // the response code, e.g. dns.RcodeNotAuth
	TSIGError int    // the TSIG error, e.g. dns.RcodeBadSig; 0 when none
}

func (e *RefusedError) Error() string {
	msg := fmt.Sprintf("dnsupdate: update of %s refused by %s: %s", e.Name, e.Server, rcodeName(e.Rcode))
	switch {
	case e.TSIGError != 0:
		msg += fmt.Sprintf(" (TSIG verification failed: %s)", rcodeName(e.TSIGError))
	case e.Rcode == dns.RcodeNotAuth:
		msg += " (the server is not authoritative for the zone, or refused the key)"
	case e.Rcode == dns.RcodeRefused:
		msg += " (the key or address may not update this name)"
	case e.Rcode == dns.RcodeNotZone:
		msg += " (the name is not in the zone)"
	}
	return msg
}

func rcodeName(rc int) string {
	if s, ok := dns.RcodeToString[rc]; ok {
		return s
	}
	return fmt.Sprintf("RCODE%d", rc)
}

// Client sends updates for one zone to its primary server. It is safe for
// concurrent use.
type Client struct {
	server  string
	zone    string // canonical: lowercase, with the trailing dot
	key     string // canonical TSIG key name; "" when unsigned
	alg     string // canonical algorithm name
	secret  string
	ttl     uint32
	timeout time.Duration
	log     *slog.Logger
}

// New validates o and returns a Client for it. It sends nothing.
func New(o Options) (*Client, error) {
	if o.Zone == "" {
		return nil, errors.New("dnsupdate: no zone")
	}
	zone := dns.CanonicalName(o.Zone)
	if zone == "." {
		return nil, errors.New("dnsupdate: the root zone cannot be updated")
	}
	if _, ok := dns.IsDomainName(zone); !ok || strings.Contains(zone, "*") {
		return nil, fmt.Errorf("dnsupdate: bad zone %q", o.Zone)
	}
	server, err := serverAddr(o.Server)
	if err != nil {
		return nil, err
	}
	c := &Client{server: server, zone: zone, ttl: uint32(DefaultTTL / time.Second), timeout: o.Timeout, log: o.Logger}
	if o.TTL < 0 {
		return nil, fmt.Errorf("dnsupdate: negative TTL %v", o.TTL)
	}
	if o.TTL > 0 {
		if o.TTL < time.Second || o.TTL > time.Duration(1<<31-1)*time.Second {
			return nil, fmt.Errorf("dnsupdate: TTL %v out of range", o.TTL)
		}
		c.ttl = uint32(o.TTL / time.Second)
	}
	if c.timeout < 0 {
		return nil, fmt.Errorf("dnsupdate: negative timeout %v", o.Timeout)
	}
	if c.timeout == 0 {
		c.timeout = DefaultTimeout
	}
	if c.log == nil {
		c.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if t := o.TSIG; t != nil {
		if t.Name == "" {
			return nil, errors.New("dnsupdate: TSIG key without a name")
		}
		if _, ok := dns.IsDomainName(t.Name); !ok {
			return nil, fmt.Errorf("dnsupdate: bad TSIG key name %q", t.Name)
		}
		name := strings.ToLower(strings.TrimSuffix(t.Algorithm, "."))
		if name == "" {
			name = "hmac-sha256"
		}
		alg, ok := algorithms[name]
		if !ok {
			return nil, fmt.Errorf("dnsupdate: TSIG algorithm %q not supported (hmac-sha256, hmac-sha512 or hmac-sha1)", t.Algorithm)
		}
		raw, err := base64.StdEncoding.DecodeString(t.Secret)
		if err != nil {
			return nil, errors.New("dnsupdate: TSIG secret is not valid base64")
		}
		if len(raw) == 0 {
			return nil, errors.New("dnsupdate: empty TSIG secret")
		}
		c.key, c.alg, c.secret = dns.CanonicalName(t.Name), alg, t.Secret
	}
	c.log = c.log.With("zone", strings.TrimSuffix(c.zone, "."), "server", c.server)
	if c.key == "" {
		c.log.Warn("dns updates are not signed: configure a TSIG key unless the server trusts this address")
	}
	return c, nil
}

// serverAddr checks a server address and adds the default port.
func serverAddr(s string) (string, error) {
	if s == "" {
		return "", errors.New("dnsupdate: no server")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		// No port: the whole is the host (an IPv6 address may be bracketed).
		host, port = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"), DefaultPort
	}
	if host == "" || strings.ContainsAny(host, " /") {
		return "", fmt.Errorf("dnsupdate: bad server %q", s)
	}
	if p, err := net.LookupPort("udp", port); err != nil || p == 0 {
		return "", fmt.Errorf("dnsupdate: bad server port in %q", s)
	}
	return net.JoinHostPort(host, port), nil
}

// Zone returns the client's zone, without the trailing dot.
func (c *Client) Zone() string { return strings.TrimSuffix(c.zone, ".") }

// fqdn turns name (absolute, trailing dot optional, or "@" for the apex)
// into a canonical absolute name of the zone, or refuses it.
func (c *Client) fqdn(name string) (string, error) {
	if name == "@" {
		return c.zone, nil
	}
	if name == "" {
		return "", errors.New("dnsupdate: empty name")
	}
	n := dns.CanonicalName(name)
	if _, ok := dns.IsDomainName(n); !ok {
		return "", fmt.Errorf("dnsupdate: bad name %q", name)
	}
	if i := strings.LastIndex(n, "*"); i > 0 || (i == 0 && !strings.HasPrefix(n, "*.")) {
		return "", fmt.Errorf("dnsupdate: bad name %q: a wildcard is only a whole first label", name)
	}
	if !dns.IsSubDomain(c.zone, n) {
		return "", fmt.Errorf("%w: %s is not in %s", ErrOutsideZone, strings.TrimSuffix(n, "."), c.Zone())
	}
	return n, nil
}

// SetAddrs replaces the A and AAAA records of name with exactly addrs, in
// one update: the name's A and AAAA sets are deleted, then each address
// is added, so the latest call wins. No addresses deletes both sets. name
// is absolute ("www.example.com", "*.example.com") or "@" for the apex,
// and must be in the zone.
func (c *Client) SetAddrs(ctx context.Context, name string, addrs []netip.Addr) error {
	n, err := c.fqdn(name)
	if err != nil {
		return err
	}
	m := c.newUpdate()
	m.RemoveRRset([]dns.RR{
		&dns.A{Hdr: dns.RR_Header{Name: n, Rrtype: dns.TypeA, Class: dns.ClassINET}},
		&dns.AAAA{Hdr: dns.RR_Header{Name: n, Rrtype: dns.TypeAAAA, Class: dns.ClassINET}},
	})
	var add []dns.RR
	var shown []string
	for _, a := range addrs {
		if !a.IsValid() {
			return fmt.Errorf("dnsupdate: invalid address for %s", strings.TrimSuffix(n, "."))
		}
		a = a.Unmap().WithZone("")
		hdr := dns.RR_Header{Name: n, Class: dns.ClassINET, Ttl: c.ttl}
		if a.Is4() {
			hdr.Rrtype = dns.TypeA
			add = append(add, &dns.A{Hdr: hdr, A: a.AsSlice()})
		} else {
			hdr.Rrtype = dns.TypeAAAA
			add = append(add, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
		shown = append(shown, a.String())
	}
	if len(add) > 0 {
		m.Insert(add)
	}
	if err := c.send(ctx, n, m); err != nil {
		return err
	}
	c.log.Info("dns records set", "name", strings.TrimSuffix(n, "."), "addrs", strings.Join(shown, ","), "ttl", c.ttl)
	return nil
}

// Delete deletes the A and AAAA records of name; see SetAddrs.
func (c *Client) Delete(ctx context.Context, name string) error {
	n, err := c.fqdn(name)
	if err != nil {
		return err
	}
	m := c.newUpdate()
	m.RemoveRRset([]dns.RR{
		&dns.A{Hdr: dns.RR_Header{Name: n, Rrtype: dns.TypeA, Class: dns.ClassINET}},
		&dns.AAAA{Hdr: dns.RR_Header{Name: n, Rrtype: dns.TypeAAAA, Class: dns.ClassINET}},
	})
	if err := c.send(ctx, n, m); err != nil {
		return err
	}
	c.log.Info("dns records deleted", "name", strings.TrimSuffix(n, "."))
	return nil
}

func (c *Client) newUpdate() *dns.Msg {
	m := new(dns.Msg)
	m.SetUpdate(c.zone)
	return m
}

// send signs m, sends it to the server over UDP (over TCP when the answer
// is truncated), and checks the answer: its signature and its RCODE. name
// is what the errors name.
func (c *Client) send(ctx context.Context, name string, m *dns.Msg) error {
	shown := strings.TrimSuffix(name, ".")
	if c.key != "" {
		m.SetTsig(c.key, c.alg, 300, time.Now().Unix())
	}
	r, err := c.exchange(ctx, "udp", m)
	if err == nil && r.Truncated {
		r, err = c.exchange(ctx, "tcp", m)
	}
	if r != nil && r.Rcode != dns.RcodeSuccess {
		// A refusal of a signed update may itself be unsigned (a bad key
		// or signature): its RCODE is what matters.
		e := &RefusedError{Name: shown, Server: c.server, Rcode: r.Rcode}
		if t := r.IsTsig(); t != nil {
			e.TSIGError = int(t.Error)
		}
		return e
	}
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return fmt.Errorf("dnsupdate: update of %s via %s: no answer within %v", shown, c.server, c.timeout)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("dnsupdate: update of %s via %s: %w", shown, c.server, ctx.Err())
		}
		if errors.Is(err, dns.ErrSig) || errors.Is(err, dns.ErrTime) {
			return fmt.Errorf("dnsupdate: update of %s via %s: answer's signature not valid: %w", shown, c.server, err)
		}
		return fmt.Errorf("dnsupdate: update of %s via %s: %w", shown, c.server, err)
	}
	if c.key != "" && r.IsTsig() == nil {
		return fmt.Errorf("dnsupdate: update of %s via %s: answer not signed", shown, c.server)
	}
	return nil
}

func (c *Client) exchange(ctx context.Context, network string, m *dns.Msg) (*dns.Msg, error) {
	cl := &dns.Client{Net: network, Timeout: c.timeout}
	if c.key != "" {
		cl.TsigSecret = map[string]string{c.key: c.secret}
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	r, _, err := cl.ExchangeContext(ctx, m, c.server)
	if r != nil && r.Id != m.Id {
		return nil, dns.ErrId
	}
	return r, err
}
