package dnsupdate

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/libdns/libdns"
	"github.com/miekg/dns"
)

// Provider adds and deletes TXT records, such as those of the ACME DNS-01
// challenge (_acme-challenge.NAME), through its Client's server and key.
// It implements the record appender and deleter of the libdns interfaces,
// which is what a DNS-01 solver needs. It is safe for concurrent use.
type Provider struct {
	c *Client
}

// Provider returns a Provider that updates c's zone.
func (c *Client) Provider() *Provider { return &Provider{c: c} }

var (
	_ libdns.RecordAppender = (*Provider)(nil)
	_ libdns.RecordDeleter  = (*Provider)(nil)
)

// txt is one TXT record to write: its canonical absolute name, the name
// relative to the caller's zone, its TTL and its text.
type txt struct {
	fqdn, rel string
	ttl       time.Duration
	text      string
}

// records checks recs, TXT records relative to zone, and resolves their
// names. zone is the caller's idea of the zone (a solver finds it by
// looking up SOA records); the names must be in the client's zone, which
// is the one updated.
func (p *Provider) records(zone string, recs []libdns.Record) ([]txt, error) {
	if len(recs) == 0 {
		return nil, nil
	}
	out := make([]txt, 0, len(recs))
	for _, r := range recs {
		rr := r.RR()
		if rr.Type != "TXT" && rr.Type != "" {
			return nil, fmt.Errorf("dnsupdate: record type %q not supported (only TXT)", rr.Type)
		}
		if rr.Name == "" {
			return nil, errors.New("dnsupdate: record without a name")
		}
		n, err := p.c.fqdn(libdns.AbsoluteName(rr.Name, zone))
		if err != nil {
			return nil, err
		}
		out = append(out, txt{fqdn: n, rel: rr.Name, ttl: rr.TTL, text: rr.Data})
	}
	return out, nil
}

// AppendRecords adds recs, TXT records, in one update; the records already
// there stay. A record without a TTL gets the client's.
func (p *Provider) AppendRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	ts, err := p.records(zone, recs)
	if err != nil || len(ts) == 0 {
		return nil, err
	}
	m := p.c.newUpdate()
	add := make([]dns.RR, 0, len(ts))
	done := make([]libdns.Record, 0, len(ts))
	for _, t := range ts {
		ttl := p.c.ttl
		if t.ttl >= time.Second {
			ttl = uint32(min(t.ttl/time.Second, 1<<31-1))
		}
		add = append(add, &dns.TXT{
			Hdr: dns.RR_Header{Name: t.fqdn, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: ttl},
			Txt: txtStrings(t.text),
		})
		done = append(done, libdns.TXT{Name: t.rel, TTL: time.Duration(ttl) * time.Second, Text: t.text})
	}
	m.Insert(add)
	if err := p.c.send(ctx, ts[0].fqdn, m); err != nil {
		return nil, err
	}
	p.c.log.Debug("dns TXT records added", "name", strings.TrimSuffix(ts[0].fqdn, "."), "count", len(ts))
	return done, nil
}

// DeleteRecords deletes recs, TXT records, in one update: each record
// whose text matches, or the name's whole TXT set for a record without
// text. TTLs are not compared. A dynamic update does not say what it
// deleted, so the records returned are those asked for.
func (p *Provider) DeleteRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	ts, err := p.records(zone, recs)
	if err != nil || len(ts) == 0 {
		return nil, err
	}
	m := p.c.newUpdate()
	var sets, one []dns.RR
	done := make([]libdns.Record, 0, len(ts))
	for _, t := range ts {
		hdr := dns.RR_Header{Name: t.fqdn, Rrtype: dns.TypeTXT, Class: dns.ClassINET}
		if t.text == "" {
			sets = append(sets, &dns.TXT{Hdr: hdr})
		} else {
			one = append(one, &dns.TXT{Hdr: hdr, Txt: txtStrings(t.text)})
		}
		done = append(done, libdns.TXT{Name: t.rel, TTL: t.ttl, Text: t.text})
	}
	if len(sets) > 0 {
		m.RemoveRRset(sets)
	}
	if len(one) > 0 {
		m.Remove(one)
	}
	if err := p.c.send(ctx, ts[0].fqdn, m); err != nil {
		return nil, err
	}
	p.c.log.Debug("dns TXT records deleted", "name", strings.TrimSuffix(ts[0].fqdn, "."), "count", len(ts))
	return done, nil
}

// txtStrings splits text into the strings of a TXT record (at most 255
// bytes each), escaped as the DNS library's presentation form wants.
func txtStrings(text string) []string {
	var out []string
	for {
		n := min(len(text), 255)
		out = append(out, escapeTXT(text[:n]))
		text = text[n:]
		if text == "" {
			return out
		}
	}
}

func escapeTXT(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' || c == '"':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c >= 0x7f:
			b.WriteByte('\\')
			d := strconv.Itoa(int(c))
			b.WriteString(strings.Repeat("0", 3-len(d)) + d)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
