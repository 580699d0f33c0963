package dnsupdate_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/libdns/libdns"
	"github.com/miekg/dns"

	"github.com/diglett/diglett/dnsupdate"
	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/testutil/dnstest"
)

var _ certmagic.DNSProvider = (*dnsupdate.Provider)(nil)

// uniqueZone is a zone name of the test's own.
func uniqueZone(t *testing.T) string {
	b := make([]byte, 4)
	rand.Read(b)
	return fmt.Sprintf("z%x.test", b)
}

func newClient(t *testing.T, s *dnstest.Server, mod func(*dnsupdate.Options)) *dnsupdate.Client {
	t.Helper()
	o := dnsupdate.Options{
		Server:  s.Addr,
		Zone:    s.Zone,
		TSIG:    &dnsupdate.TSIG{Name: s.KeyName, Algorithm: s.KeyAlgorithm, Secret: s.Secret},
		TTL:     42 * time.Second,
		Timeout: 5 * time.Second,
		Logger:  slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&o)
	}
	c, err := dnsupdate.New(o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// answers returns the records dig shows for name and type, one
// "NAME TTL TYPE DATA" string each, sorted.
func answers(t *testing.T, s *dnstest.Server, name, typ string) []string {
	t.Helper()
	out := s.Dig(t, "+noall", "+answer", name, typ)
	var rrs []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 || strings.HasPrefix(l, ";") {
			continue
		}
		rrs = append(rrs, f[0]+" "+f[1]+" "+f[3]+" "+strings.Join(f[4:], " "))
	}
	slices.Sort(rrs)
	return rrs
}

// short returns dig +short's lines for name and type, sorted.
func short(t *testing.T, s *dnstest.Server, name, typ string) []string {
	t.Helper()
	out := strings.TrimSpace(s.Dig(t, "+short", name, typ))
	if out == "" {
		return nil
	}
	l := strings.Split(out, "\n")
	slices.Sort(l)
	return l
}

func addrs(s ...string) []netip.Addr {
	var a []netip.Addr
	for _, x := range s {
		a = append(a, netip.MustParseAddr(x))
	}
	return a
}

func TestSetAddrsAndDelete(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t, uniqueZone(t))
	c := newClient(t, s, nil)
	ctx := context.Background()

	for _, tc := range []struct{ name, fqdn string }{
		{"@", s.Zone},
		{"www." + s.Zone, "www." + s.Zone},
		{"*." + s.Zone + ".", "*." + s.Zone},
	} {
		if err := c.SetAddrs(ctx, tc.name, addrs("192.0.2.1", "192.0.2.2", "2001:db8::1")); err != nil {
			t.Fatalf("SetAddrs %s: %v", tc.name, err)
		}
		q := tc.fqdn
		if strings.HasPrefix(q, "*.") {
			q = "anything." + s.Zone // the wildcard answers for any name under the zone
		}
		if got, want := short(t, s, q, "A"), []string{"192.0.2.1", "192.0.2.2"}; !slices.Equal(got, want) {
			t.Fatalf("dig +short %s A = %q, want %q", q, got, want)
		}
		if got, want := short(t, s, q, "AAAA"), []string{"2001:db8::1"}; !slices.Equal(got, want) {
			t.Fatalf("dig +short %s AAAA = %q, want %q", q, got, want)
		}
		want := []string{q + ". 42 A 192.0.2.1", q + ". 42 A 192.0.2.2"}
		if got := answers(t, s, q, "A"); !slices.Equal(got, want) {
			t.Fatalf("dig %s A = %q, want %q (TTL 42)", q, got, want)
		}
		t.Logf("checked: %s set to 2 A and 1 AAAA with TTL 42, seen by dig as %s", tc.name, q)

		// Latest wins: the second set replaces the first, both families.
		if err := c.SetAddrs(ctx, tc.name, addrs("198.51.100.7")); err != nil {
			t.Fatalf("second SetAddrs %s: %v", tc.name, err)
		}
		if got, want := short(t, s, q, "A"), []string{"198.51.100.7"}; !slices.Equal(got, want) {
			t.Fatalf("after replace: dig +short %s A = %q, want %q", q, got, want)
		}
		if got := short(t, s, q, "AAAA"); got != nil {
			t.Fatalf("after replace: dig +short %s AAAA = %q, want none", q, got)
		}
		t.Logf("checked: a second SetAddrs of %s replaced A and removed AAAA", tc.name)
	}

	if err := c.Delete(ctx, "www."+s.Zone); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if got := short(t, s, "www."+s.Zone, "A"); got != nil && !slices.Equal(got, []string{"198.51.100.7"}) {
		t.Fatalf("after Delete: dig www A = %q", got)
	}
	// With www gone, the wildcard answers for it: delete the wildcard too
	// and check both are gone.
	if err := c.SetAddrs(ctx, "*."+s.Zone, nil); err != nil {
		t.Fatalf("SetAddrs wildcard with no addresses: %v", err)
	}
	for _, q := range []string{"www." + s.Zone, "anything." + s.Zone} {
		for _, typ := range []string{"A", "AAAA"} {
			if got := short(t, s, q, typ); got != nil {
				t.Fatalf("after deletes: dig +short %s %s = %q, want none", q, typ, got)
			}
		}
	}
	if got := short(t, s, s.Zone, "A"); !slices.Equal(got, []string{"198.51.100.7"}) {
		t.Fatalf("the apex changed: %q", got)
	}
	if got := short(t, s, "ns1."+s.Zone, "A"); !slices.Equal(got, []string{"127.0.0.1"}) {
		t.Fatalf("another name changed: ns1 A = %q", got)
	}
	t.Log("checked: Delete and an empty SetAddrs removed www and the wildcard; the apex and ns1 were untouched")
}

func TestWrongSecretRefused(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t, uniqueZone(t))
	other := make([]byte, 32)
	rand.Read(other)
	c := newClient(t, s, func(o *dnsupdate.Options) { o.TSIG.Secret = base64.StdEncoding.EncodeToString(other) })
	err := c.SetAddrs(context.Background(), "www."+s.Zone, addrs("192.0.2.9"))
	if err == nil {
		t.Fatal("update signed with a wrong secret accepted")
	}
	var re *dnsupdate.RefusedError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "NOTAUTH") || !strings.Contains(err.Error(), "BADSIG") {
		t.Fatalf("error = %v, want a refusal with NOTAUTH and BADSIG", err)
	}
	if !strings.Contains(err.Error(), "www."+s.Zone) || !strings.Contains(err.Error(), s.Addr) {
		t.Fatalf("error %q does not name the record and the server", err)
	}
	if got := short(t, s, "www."+s.Zone, "A"); got != nil {
		t.Fatalf("the refused update changed the zone: %q", got)
	}
	t.Logf("checked: wrong secret refused (%v), zone unchanged", err)

	// An unknown key name is refused too.
	c = newClient(t, s, func(o *dnsupdate.Options) { o.TSIG.Name = "not-the-key" })
	err = c.SetAddrs(context.Background(), "www."+s.Zone, addrs("192.0.2.9"))
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "NOTAUTH") || !strings.Contains(err.Error(), "BADKEY") {
		t.Fatalf("unknown key: error = %v, want NOTAUTH with BADKEY", err)
	}
	// And an unsigned update.
	c = newClient(t, s, func(o *dnsupdate.Options) { o.TSIG = nil })
	err = c.SetAddrs(context.Background(), "www."+s.Zone, addrs("192.0.2.9"))
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "REFUSED") {
		t.Fatalf("unsigned: error = %v, want REFUSED", err)
	}
	if got := short(t, s, "www."+s.Zone, "A"); got != nil {
		t.Fatalf("a refused update changed the zone: %q", got)
	}
	t.Log("checked: unknown key refused with BADKEY, unsigned update REFUSED, zone unchanged")
}

// silentServer is a UDP socket that reads and never answers; it counts
// the packets it gets.
func silentServer(t *testing.T) (string, *atomic.Int64) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	var n atomic.Int64
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			n.Add(1)
		}
	}()
	return pc.LocalAddr().String(), &n
}

func TestOutsideZoneRefusedBeforeSending(t *testing.T) {
	t.Parallel()
	addr, packets := silentServer(t)
	c, err := dnsupdate.New(dnsupdate.Options{Server: addr, Zone: "example.test", Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"www.example.org", "example.test.evil", "test", "www", "a.*.example.test", "*x.example.test", ""} {
		err := c.SetAddrs(context.Background(), name, addrs("192.0.2.1"))
		if err == nil {
			t.Fatalf("SetAddrs(%q) accepted", name)
		}
		t.Logf("SetAddrs(%q): %v", name, err)
	}
	err = c.Delete(context.Background(), "www.example.org")
	if !errors.Is(err, dnsupdate.ErrOutsideZone) {
		t.Fatalf("Delete outside the zone: %v, want ErrOutsideZone", err)
	}
	p := c.Provider()
	_, err = p.AppendRecords(context.Background(), "example.org.", []libdns.Record{libdns.TXT{Name: "_acme-challenge", Text: "x"}})
	if !errors.Is(err, dnsupdate.ErrOutsideZone) {
		t.Fatalf("AppendRecords outside the zone: %v, want ErrOutsideZone", err)
	}
	if n := packets.Load(); n != 0 {
		t.Fatalf("%d packets sent for names outside the zone", n)
	}
	t.Log("checked: names outside the zone or malformed refused, nothing sent")
}

func TestUnreachableServerErrsWithinTimeout(t *testing.T) {
	t.Parallel()
	const timeout = 500 * time.Millisecond
	silent, packets := silentServer(t)
	// A closed port: the kernel answers that nothing listens there.
	ln, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.LocalAddr().String()
	ln.Close()
	for _, tc := range []struct{ server, want string }{
		{silent, "no answer within 500ms"},
		{closed, "refused"},
	} {
		c, err := dnsupdate.New(dnsupdate.Options{Server: tc.server, Zone: "example.test", Timeout: timeout,
			TSIG: &dnsupdate.TSIG{Name: "k", Secret: base64.StdEncoding.EncodeToString([]byte("0123456789abcdef"))}})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		err = c.SetAddrs(context.Background(), "www.example.test", addrs("192.0.2.1"))
		took := time.Since(start)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.server) {
			t.Fatalf("server %s: error = %v, want one with %q and the server", tc.server, err, tc.want)
		}
		// The bound, with room for a slow machine: never the minutes of
		// a hang.
		if took > timeout+5*time.Second {
			t.Fatalf("server %s: error after %v, timeout %v", tc.server, took, timeout)
		}
		t.Logf("checked: %s erred after %v: %v", tc.server, took.Round(time.Millisecond), err)
	}
	if packets.Load() == 0 {
		t.Fatal("the silent server got nothing")
	}
	// A cancelled context ends the exchange too.
	c, _ := dnsupdate.New(dnsupdate.Options{Server: silent, Zone: "example.test", Timeout: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := c.Delete(ctx, "www.example.test"); err == nil {
		t.Fatal("Delete with an ended context succeeded")
	}
	t.Log("checked: a context deadline ends an exchange with a silent server")
}

func TestProviderTXT(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t, uniqueZone(t))
	p := newClient(t, s, nil).Provider()
	ctx := context.Background()
	zone := s.Zone + "." // as a solver finds it, from the SOA
	name := "_acme-challenge." + s.Zone

	long := strings.Repeat("x", 300) // more than one TXT string
	added, err := p.AppendRecords(ctx, zone, []libdns.Record{
		libdns.RR{Type: "TXT", Name: "_acme-challenge", Data: "token-one"},
		libdns.TXT{Name: "_acme-challenge", Text: "token-two", TTL: 30 * time.Second},
		libdns.TXT{Name: "_acme-challenge.sub", Text: long},
	})
	if err != nil {
		t.Fatalf("AppendRecords: %v", err)
	}
	if len(added) != 3 || added[0].RR().Data != "token-one" || added[0].RR().Name != "_acme-challenge" || added[0].RR().TTL != 42*time.Second {
		t.Fatalf("AppendRecords returned %+v", added)
	}
	if got, want := short(t, s, name, "TXT"), []string{`"token-one"`, `"token-two"`}; !slices.Equal(got, want) {
		t.Fatalf("dig +short %s TXT = %q, want %q", name, got, want)
	}
	// The records of one set share one TTL: the server keeps the last
	// one written, the record's own 30s. The other name has the
	// client's 42s.
	if got := answers(t, s, name, "TXT"); len(got) != 2 || !strings.Contains(got[0], " 30 TXT ") || !strings.Contains(got[1], " 30 TXT ") {
		t.Fatalf("dig %s TXT = %q, want TTL 30", name, got)
	}
	if got := answers(t, s, "_acme-challenge.sub."+s.Zone, "TXT"); len(got) != 1 || !strings.Contains(got[0], " 42 TXT ") {
		t.Fatalf("dig _acme-challenge.sub TXT = %q, want TTL 42", got)
	}
	if got := short(t, s, "_acme-challenge.sub."+s.Zone, "TXT"); len(got) != 1 || strings.ReplaceAll(strings.ReplaceAll(got[0], `"`, ""), " ", "") != long {
		t.Fatalf("long TXT = %q", got)
	}
	t.Log("checked: AppendRecords added two TXT records to one name (both kept) and a 300-byte one")

	// Appending keeps what is there.
	if _, err := p.AppendRecords(ctx, zone, []libdns.Record{libdns.TXT{Name: "_acme-challenge", Text: "token-three"}}); err != nil {
		t.Fatal(err)
	}
	if got := short(t, s, name, "TXT"); len(got) != 3 {
		t.Fatalf("after a third append: %q", got)
	}
	// Deleting one value leaves the others.
	if _, err := p.DeleteRecords(ctx, zone, []libdns.Record{libdns.TXT{Name: "_acme-challenge", Text: "token-one"}}); err != nil {
		t.Fatalf("DeleteRecords: %v", err)
	}
	if got, want := short(t, s, name, "TXT"), []string{`"token-three"`, `"token-two"`}; !slices.Equal(got, want) {
		t.Fatalf("after deleting token-one: %q, want %q", got, want)
	}
	// A record without a value deletes the name's whole TXT set.
	if _, err := p.DeleteRecords(ctx, zone, []libdns.Record{
		libdns.RR{Name: "_acme-challenge", Type: "TXT"},
		libdns.TXT{Name: "_acme-challenge.sub", Text: long},
	}); err != nil {
		t.Fatalf("DeleteRecords: %v", err)
	}
	for _, n := range []string{name, "_acme-challenge.sub." + s.Zone} {
		if got := short(t, s, n, "TXT"); got != nil {
			t.Fatalf("after deleting all: %s TXT = %q", n, got)
		}
	}
	t.Log("checked: DeleteRecords removed one value, then the rest and the long one; dig sees none")

	if _, err := p.AppendRecords(ctx, zone, []libdns.Record{libdns.RR{Type: "A", Name: "x", Data: "192.0.2.1"}}); err == nil {
		t.Fatal("an A record was accepted by the TXT provider")
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	secret := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef"))
	good := dnsupdate.Options{Server: "127.0.0.1:5353", Zone: "example.com", TSIG: &dnsupdate.TSIG{Name: "k", Secret: secret}}
	for _, tc := range []struct {
		name string
		mod  func(*dnsupdate.Options)
		want string // "" for success
	}{
		{"good", func(*dnsupdate.Options) {}, ""},
		{"default port", func(o *dnsupdate.Options) { o.Server = "ns1.example.com" }, ""},
		{"ipv6", func(o *dnsupdate.Options) { o.Server = "[2001:db8::1]:53" }, ""},
		{"sha512", func(o *dnsupdate.Options) { o.TSIG.Algorithm = "hmac-sha512" }, ""},
		{"sha1", func(o *dnsupdate.Options) { o.TSIG.Algorithm = "HMAC-SHA1." }, ""},
		{"unsigned", func(o *dnsupdate.Options) { o.TSIG = nil }, ""},
		{"no zone", func(o *dnsupdate.Options) { o.Zone = "" }, "no zone"},
		{"root zone", func(o *dnsupdate.Options) { o.Zone = "." }, "root zone"},
		{"bad zone", func(o *dnsupdate.Options) { o.Zone = "exa mple..com" }, "bad zone"},
		{"no server", func(o *dnsupdate.Options) { o.Server = "" }, "no server"},
		{"bad port", func(o *dnsupdate.Options) { o.Server = "127.0.0.1:99999" }, "bad server port"},
		{"md5", func(o *dnsupdate.Options) { o.TSIG.Algorithm = "hmac-md5" }, "not supported"},
		{"bad secret", func(o *dnsupdate.Options) { o.TSIG.Secret = "not base64!" }, "not valid base64"},
		{"empty secret", func(o *dnsupdate.Options) { o.TSIG.Secret = "" }, "empty TSIG secret"},
		{"no key name", func(o *dnsupdate.Options) { o.TSIG.Name = "" }, "without a name"},
		{"negative ttl", func(o *dnsupdate.Options) { o.TTL = -time.Second }, "negative TTL"},
		{"sub-second ttl", func(o *dnsupdate.Options) { o.TTL = time.Millisecond }, "out of range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := good
			tsig := *good.TSIG
			o.TSIG = &tsig
			tc.mod(&o)
			var logs testutil.Buffer
			o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			_, err := dnsupdate.New(o)
			if tc.want == "" && err != nil {
				t.Fatalf("New: %v", err)
			}
			if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("New: %v, want %q", err, tc.want)
			}
			if strings.Contains(logs.String(), secret) {
				t.Fatal("the secret was logged")
			}
			if o.TSIG == nil && !strings.Contains(logs.String(), "not signed") {
				t.Fatalf("no warning for unsigned updates: %q", logs.String())
			}
		})
	}
	t.Log("checked: New accepts good options and rejects each bad one with a clear error; the secret is never logged")
}

// fakeServer answers every update NOERROR over UDP through sign, which may
// sign the answer or not.
func fakeServer(t *testing.T, secrets map[string]string, sign func(req, resp *dns.Msg)) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{
		PacketConn:        pc,
		TsigSecret:        secrets,
		NotifyStartedFunc: func() { close(started) },
		MsgAcceptFunc:     func(dns.Header) dns.MsgAcceptAction { return dns.MsgAccept }, // updates too
		Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(req)
			sign(req, m)
			w.WriteMsg(m)
		}),
	}
	done := make(chan error, 1)
	go func() { done <- srv.ActivateAndServe() }()
	select {
	case <-started:
	case err := <-done:
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Shutdown()
		<-done
	})
	return pc.LocalAddr().String()
}

func TestAnswerSignatureChecked(t *testing.T) {
	t.Parallel()
	key := base64.StdEncoding.EncodeToString([]byte("the right key, 32 bytes long....."))
	wrong := base64.StdEncoding.EncodeToString([]byte("a wrong key, also 32 bytes long.."))
	for _, tc := range []struct {
		name    string
		secrets map[string]string // the server's
		sign    func(req, resp *dns.Msg)
		want    string
	}{
		{"unsigned answer", nil, func(_, _ *dns.Msg) {}, "answer not signed"},
		{"answer signed with another key", map[string]string{"k.": wrong}, func(req, resp *dns.Msg) {
			resp.SetTsig("k.", dns.HmacSHA256, 300, time.Now().Unix())
		}, "signature not valid"},
		{"good answer", map[string]string{"k.": key}, func(req, resp *dns.Msg) {
			resp.SetTsig("k.", dns.HmacSHA256, 300, time.Now().Unix())
		}, ""},
	} {
		addr := fakeServer(t, tc.secrets, tc.sign)
		c, err := dnsupdate.New(dnsupdate.Options{Server: addr, Zone: "example.test", Timeout: 2 * time.Second,
			TSIG: &dnsupdate.TSIG{Name: "k", Secret: key}})
		if err != nil {
			t.Fatal(err)
		}
		err = c.SetAddrs(context.Background(), "www.example.test", addrs("192.0.2.1"))
		if tc.want == "" {
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%s: error = %v, want %q", tc.name, err, tc.want)
		}
		t.Logf("checked: %s: %v", tc.name, err)
	}
	t.Log("checked: a signed update's answer must carry a valid signature of the same key")
}
