package portmap

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/testutil/routertest"
)

// The tests here are in the package itself: the codec's and the
// client's tests need its unexported parts. The first ones run the real
// router daemon; the others a PCP server played by the test on loopback.

// testLog is a logger writing to t, and what it wrote.
func testLog(t *testing.T) (*slog.Logger, *testutil.Buffer) {
	buf := &testutil.Buffer{}
	h := slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})
	t.Cleanup(func() {
		if s := buf.String(); s != "" {
			t.Logf("log:\n%s", s)
		}
	})
	return slog.New(h), buf
}

// routerLine returns the line of the router's list (as the UPnP client
// program prints it) forwarding proto port to the test's address, or "".
func routerLine(t *testing.T, r *routertest.Router, proto string, port uint16) string {
	t.Helper()
	want := fmt.Sprintf("%s %d->%s:%d ", strings.ToUpper(proto), port, r.Client, port)
	out := r.Upnpc(t, "-l")
	if !strings.Contains(out, "ExternalIPAddress") {
		t.Fatalf("upnpc -l did not reach the router: %s", out)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(strings.Join(strings.Fields(line), " ")+" ", want) {
			return line
		}
	}
	return ""
}

// nonceText is how the test router names a PCP mapping in its list: "PCP
// MAP" and the nonce as three 32-bit words in the machine's byte order.
func nonceText(n [12]byte) string {
	return fmt.Sprintf("PCP MAP %08x%08x%08x", binary.NativeEndian.Uint32(n[0:]),
		binary.NativeEndian.Uint32(n[4:]), binary.NativeEndian.Uint32(n[8:]))
}

func discoverPCP(t *testing.T, routerLog fmt.Stringer, o Options) (Result, *pcpMapper) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	res, err := Discover(ctx, o)
	if err != nil {
		t.Fatalf("discover %s: %v\nrouter log:\n%s", o.Protocol, err, routerLog)
	}
	p, ok := res.Mapper.(*pcpMapper)
	if !ok {
		t.Fatalf("discover %s: got a %s mapper, want pcp", o.Protocol, res.Mapper.Protocol())
	}
	return res, p
}

// TestPCP maps, renews and deletes TCP and UDP ports over PCP on the real
// router daemon, checking each step in the router's own list, and lets a
// short mapping expire.
func TestPCP(t *testing.T) {
	t.Parallel()
	r := routertest.Start(t, routertest.Options{})
	log, _ := testLog(t)
	res, p := discoverPCP(t, r.Log, Options{Protocol: ProtocolPCP, Gateway: r.LAN, Logger: log})
	if res.Mapper.Protocol() != ProtocolPCP || res.ExternalIP != r.WAN {
		t.Fatalf("discover: %s %v, want pcp %v\nrouter log:\n%s", res.Mapper.Protocol(), res.ExternalIP, r.WAN, r.Log)
	}
	p.mu.Lock()
	epoch := p.epoch
	p.mu.Unlock()
	t.Logf("pcp: router at %v found, external address %v (from the probe mapping's answer), epoch %ds", r.LAN, res.ExternalIP, epoch)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i, proto := range []string{"tcp", "udp"} {
		port := uint16(44000 + i)
		m := Mapping{Proto: proto, InternalPort: port, Lifetime: time.Hour}
		got, err := p.Map(ctx, m)
		if err != nil {
			t.Fatalf("map %s %d: %v\nrouter log:\n%s", proto, port, err, r.Log)
		}
		if got.ExternalPort != port || got.Lifetime != time.Hour {
			t.Fatalf("map %s %d: granted %+v", proto, port, got)
		}
		nonce := p.mappings[pcpKey{protoNumber(proto), port}].nonce
		line := routerLine(t, r, proto, port)
		if line == "" || !strings.Contains(line, nonceText(nonce)) {
			t.Fatalf("%s %d not in the router's list under its nonce %q: %s", proto, port, nonceText(nonce), r.Upnpc(t, "-l"))
		}
		t.Logf("pcp: %s %d mapped for %v, listed by the router: %s", proto, port, got.Lifetime, strings.TrimSpace(line))

		// A renewal uses the same nonce: the router renews the same
		// mapping rather than refusing a second one.
		again, err := p.Map(ctx, m)
		if err != nil {
			t.Fatalf("renew %s %d: %v", proto, port, err)
		}
		if p.mappings[pcpKey{protoNumber(proto), port}].nonce != nonce || again.ExternalPort != port {
			t.Fatalf("renew %s %d: granted %+v, nonce changed: %v", proto, port, again, p.mappings[pcpKey{protoNumber(proto), port}].nonce != nonce)
		}
		if line := routerLine(t, r, proto, port); !strings.Contains(line, nonceText(nonce)) {
			t.Fatalf("%s %d after renewal: %q", proto, port, line)
		}
		t.Logf("pcp: %s %d renewed with the same nonce, still listed", proto, port)

		// Only the nonce that made a mapping deletes it.
		other := newPCP(p.server, p.local, p.timeout, nil)
		other.mappings[pcpKey{protoNumber(proto), port}] = pcpState{nonce: [12]byte{1, 2, 3}}
		err = other.Unmap(ctx, got)
		if err == nil || routerLine(t, r, proto, port) == "" {
			t.Fatalf("deletion with another nonce: err %v, listed %v", err, routerLine(t, r, proto, port) != "")
		}
		t.Logf("pcp: deleting %s %d with another nonce refused (%v); still listed", proto, port, err)

		if err := p.Unmap(ctx, got); err != nil {
			t.Fatalf("unmap %s %d: %v", proto, port, err)
		}
		if line := routerLine(t, r, proto, port); line != "" {
			t.Fatalf("%s %d still listed after unmap: %s", proto, port, line)
		}
		t.Logf("pcp: %s %d unmapped and gone from the router's list", proto, port)
	}
	if out := r.Upnpc(t, "-l"); strings.Contains(out, "PCP MAP") {
		t.Fatalf("a PCP mapping is left (the external address probe?): %s", out)
	}
	t.Logf("pcp: no mapping left on the router (the external address probe was deleted)")

	port := uint16(44002)
	got, err := p.Map(ctx, Mapping{Proto: "tcp", InternalPort: port, Lifetime: 3 * time.Second})
	if err != nil {
		t.Fatalf("map short: %v", err)
	}
	if got.Lifetime != 3*time.Second || routerLine(t, r, "tcp", port) == "" {
		t.Fatalf("tcp %d (3s): granted %+v, listed %v", port, got, routerLine(t, r, "tcp", port) != "")
	}
	start := time.Now()
	if err := testutil.Poll(30*time.Second, func() error {
		if routerLine(t, r, "tcp", port) != "" {
			return fmt.Errorf("tcp %d still listed", port)
		}
		return nil
	}); err != nil {
		t.Fatalf("mapping with a 3s lifetime: %v", err)
	}
	t.Logf("pcp: tcp %d granted 3s and dropped by the router after %v", port, time.Since(start).Round(100*time.Millisecond))
}

// TestPCPCGNATRouter runs the router with a WAN address from the
// carrier-grade NAT range: PCP still finds it, and its external address is
// reported as none usable, so the caller warns.
func TestPCPCGNATRouter(t *testing.T) {
	t.Parallel()
	r := routertest.Start(t, routertest.Options{CGNAT: true})
	wan := r.WAN
	res, p := discoverPCP(t, r.Log, Options{Protocol: ProtocolPCP, Gateway: r.LAN})
	if !IsPrivate(res.ExternalIP) {
		t.Fatalf("external address %v, want a private one", res.ExternalIP)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	ip, err := p.ExternalIP(ctx)
	if !errors.Is(err, ErrNoExternalAddress) {
		t.Fatalf("ExternalIP: %v, %v; want ErrNoExternalAddress\nrouter log:\n%s", ip, err, r.Log)
	}
	t.Logf("pcp: router with WAN %v found; no usable external address (%v), IsPrivate true", wan, err)
	_, err = p.Map(ctx, Mapping{Proto: "tcp", InternalPort: 45000, Lifetime: time.Minute})
	var pe *PCPError
	if !errors.As(err, &pe) || pe.Code != pcpNoResources {
		t.Fatalf("map behind carrier-grade NAT: %v, want NO_RESOURCES", err)
	}
	t.Logf("pcp: the router refuses to map behind carrier-grade NAT: %v", err)
}

// TestAutoFindsPCP turns the router's UPnP-IGD off: auto then picks PCP,
// before NAT-PMP, which the router still answers.
func TestAutoFindsPCP(t *testing.T) {
	t.Parallel()
	r := routertest.Start(t, routertest.Options{DisableUPnP: true})
	res, _ := discoverPCP(t, r.Log, Options{Gateway: r.LAN, Timeout: time.Second})
	if res.ExternalIP != r.WAN {
		t.Fatalf("auto: external address %v, want %v", res.ExternalIP, r.WAN)
	}
	if out := r.Natpmpc(t); !strings.Contains(out, "Public IP address : "+r.WAN.String()) {
		t.Fatalf("the router does not answer NAT-PMP: %s", out)
	}
	t.Logf("auto: with UPnP off, pcp answered first (external address %v) though NAT-PMP is on too", res.ExternalIP)
}

// fakeServer plays a router on loopback: reply gets each request (its
// index, from 0) and returns the datagrams to send back.
type fakeServer struct {
	addr netip.AddrPort
	mu   sync.Mutex
	reqs [][]byte
}

func startFake(t *testing.T, addr string, reply func(i int, req []byte) [][]byte) *fakeServer {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	return serveFake(t, c, reply)
}

func serveFake(t *testing.T, c *net.UDPConn, reply func(i int, req []byte) [][]byte) *fakeServer {
	f := &fakeServer{addr: c.LocalAddr().(*net.UDPAddr).AddrPort()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			req := bytes.Clone(buf[:n])
			f.mu.Lock()
			i := len(f.reqs)
			f.reqs = append(f.reqs, req)
			f.mu.Unlock()
			for _, b := range reply(i, req) {
				c.WriteToUDPAddrPort(b, from)
			}
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return f
}

func (f *fakeServer) requests() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]byte(nil), f.reqs...)
}

// answer builds the server's answer to a MAP request.
func answer(req []byte, result uint8, lifetime, epoch uint32, ext netip.Addr, extPort uint16) []byte {
	b := make([]byte, pcpHeaderSize+pcpMapSize)
	copy(b, req)
	b[1] |= 0x80
	b[2], b[3] = 0, result
	binary.BigEndian.PutUint32(b[4:], lifetime)
	binary.BigEndian.PutUint32(b[8:], epoch)
	clear(b[12:24])
	binary.BigEndian.PutUint16(b[pcpHeaderSize+18:], extPort)
	a := ext.As16()
	copy(b[pcpHeaderSize+20:], a[:])
	return b
}

// grant answers a request with SUCCESS, its lifetime and port, from
// 192.0.2.1 at epoch 100.
func grant(req []byte) []byte {
	return answer(req, pcpSuccess, binary.BigEndian.Uint32(req[4:]), 100,
		netip.MustParseAddr("192.0.2.1"), binary.BigEndian.Uint16(req[pcpHeaderSize+18:]))
}

func fakeMapper(t *testing.T, f *fakeServer, timeout time.Duration) *pcpMapper {
	log, _ := testLog(t)
	p := newPCP(f.addr, netip.MustParseAddr("127.0.0.1"), timeout, log)
	p.irt = 50 * time.Millisecond
	return p
}

// TestPCPRequest checks the bytes of a MAP request and its deletion: the
// version, opcode, lifetime, client address as IPv4-mapped IPv6, nonce
// (the same for the deletion), protocol, ports and no suggested address.
func TestPCPRequest(t *testing.T) {
	t.Parallel()
	f := startFake(t, "127.0.0.1:0", func(_ int, req []byte) [][]byte { return [][]byte{grant(req)} })
	p := fakeMapper(t, f, 2*time.Second)
	ctx := context.Background()
	m := Mapping{Proto: "udp", InternalPort: 7000, ExternalPort: 7001, Lifetime: 90 * time.Second}
	got, err := p.Map(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if got.ExternalPort != 7001 || got.Lifetime != 90*time.Second {
		t.Fatalf("granted %+v", got)
	}
	if err := p.Unmap(ctx, got); err != nil {
		t.Fatal(err)
	}
	reqs := f.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests, want 2", len(reqs))
	}
	mapped := netip.MustParseAddr("::ffff:127.0.0.1").As16()
	unspec := netip.MustParseAddr("::ffff:0.0.0.0").As16()
	for i, want := range []struct {
		lifetime uint32
		ext      uint16
	}{{90, 7001}, {0, 0}} {
		b := reqs[i]
		if len(b) != 60 || b[0] != 2 || b[1] != 1 || binary.BigEndian.Uint32(b[4:]) != want.lifetime ||
			!bytes.Equal(b[8:24], mapped[:]) || b[24+12] != 17 ||
			binary.BigEndian.Uint16(b[24+16:]) != 7000 || binary.BigEndian.Uint16(b[24+18:]) != want.ext ||
			!bytes.Equal(b[24+20:60], unspec[:]) {
			t.Fatalf("request %d: % x", i, b)
		}
	}
	if !bytes.Equal(reqs[0][24:36], reqs[1][24:36]) || bytes.Equal(reqs[0][24:36], make([]byte, 12)) {
		t.Fatalf("nonces: % x and % x", reqs[0][24:36], reqs[1][24:36])
	}
	t.Logf("map and delete requests as RFC 6887 lays them out, with one nonce: % x", reqs[0][24:36])
}

// TestPCPRenewal: the router grants another external port than asked;
// the renewal asks for the port granted, with the same nonce.
func TestPCPRenewal(t *testing.T) {
	t.Parallel()
	f := startFake(t, "127.0.0.1:0", func(_ int, req []byte) [][]byte {
		return [][]byte{answer(req, pcpSuccess, 60, 100, netip.MustParseAddr("192.0.2.1"), 7601)}
	})
	p := fakeMapper(t, f, 2*time.Second)
	m := Mapping{Proto: "tcp", InternalPort: 7600}
	for range 2 {
		got, err := p.Map(context.Background(), m)
		if err != nil || got.ExternalPort != 7601 {
			t.Fatalf("map: %+v, %v", got, err)
		}
	}
	reqs := f.requests()
	if len(reqs) != 2 || binary.BigEndian.Uint16(reqs[0][24+18:]) != 7600 || binary.BigEndian.Uint16(reqs[1][24+18:]) != 7601 ||
		!bytes.Equal(reqs[0][24:36], reqs[1][24:36]) {
		t.Fatalf("requests: % x", reqs)
	}
	t.Logf("granted 7601 for 7600; the renewal asked for 7601 with the same nonce")
}

// TestPCPIgnoresGarbage answers each request first with datagrams that
// are not its answer (short, a request, another nonce, a success without
// MAP data, another port): the client ignores them and takes the answer.
func TestPCPIgnoresGarbage(t *testing.T) {
	t.Parallel()
	f := startFake(t, "127.0.0.1:0", func(_ int, req []byte) [][]byte {
		otherNonce := grant(req)
		otherNonce[pcpHeaderSize] ^= 0xff
		otherPort := grant(req)
		otherPort[pcpHeaderSize+17] ^= 1
		noMap := grant(req)[:pcpHeaderSize+8]
		wrongOp := grant(req)
		wrongOp[1] = 0x82
		return [][]byte{{0x02}, {}, req, otherNonce, otherPort, noMap, wrongOp, make([]byte, 1200), grant(req)}
	})
	p := fakeMapper(t, f, 2*time.Second)
	got, err := p.Map(context.Background(), Mapping{Proto: "tcp", InternalPort: 7100, Lifetime: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if got.ExternalPort != 7100 || got.Lifetime != time.Minute || len(f.requests()) != 1 {
		t.Fatalf("granted %+v after %d requests", got, len(f.requests()))
	}
	t.Logf("eight datagrams that were not the answer ignored; the answer taken: %+v", got)
}

// TestPCPResultCodes checks that each refusal comes back as a PCPError
// named as in the RFC.
func TestPCPResultCodes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		code uint8
		want string
	}{
		{pcpNotAuthorized, "pcp: NOT_AUTHORIZED"},
		{pcpNoResources, "pcp: NO_RESOURCES"},
		{pcpCannotProvideExternal, "pcp: CANNOT_PROVIDE_EXTERNAL"},
		{pcpAddressMismatch, "pcp: ADDRESS_MISMATCH"},
		{pcpUnsuppProtocol, "pcp: UNSUPP_PROTOCOL"},
		{200, "pcp: result code 200"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			t.Parallel()
			f := startFake(t, "127.0.0.1:0", func(_ int, req []byte) [][]byte {
				return [][]byte{answer(req, tc.code, 0, 100, netip.IPv4Unspecified(), 0)}
			})
			_, err := fakeMapper(t, f, 2*time.Second).Map(context.Background(), Mapping{Proto: "tcp", InternalPort: 7200})
			var pe *PCPError
			if !errors.As(err, &pe) || pe.Code != tc.code || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
			t.Logf("result %d: %v", tc.code, err)
		})
	}
}

// TestPCPRetransmits drops the first request: the client sends it again
// (same nonce) and takes the answer to the second.
func TestPCPRetransmits(t *testing.T) {
	t.Parallel()
	f := startFake(t, "127.0.0.1:0", func(i int, req []byte) [][]byte {
		if i == 0 {
			return nil
		}
		return [][]byte{grant(req)}
	})
	if _, err := fakeMapper(t, f, 5*time.Second).Map(context.Background(), Mapping{Proto: "tcp", InternalPort: 7300}); err != nil {
		t.Fatal(err)
	}
	reqs := f.requests()
	if len(reqs) != 2 || !bytes.Equal(reqs[0], reqs[1]) {
		t.Fatalf("%d requests, want 2 identical", len(reqs))
	}
	t.Logf("first request lost; the retransmission (identical) was answered")
}

// TestPCPBounded: a server that never answers, and one that answers in
// NAT-PMP, end the request within its bound.
func TestPCPBounded(t *testing.T) {
	t.Parallel()
	f := startFake(t, "127.0.0.1:0", func(int, []byte) [][]byte { return nil })
	start := time.Now()
	_, err := fakeMapper(t, f, 400*time.Millisecond).Map(context.Background(), Mapping{Proto: "tcp", InternalPort: 7400})
	if err == nil || time.Since(start) > 3*time.Second {
		t.Fatalf("err %v after %v", err, time.Since(start))
	}
	if n := len(f.requests()); n < 2 {
		t.Fatalf("%d requests in 400ms from a 50ms initial retransmission time", n)
	}
	t.Logf("silent server: %v after %v and %d transmissions", err, time.Since(start).Round(10*time.Millisecond), len(f.requests()))

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = fakeMapper(t, f, time.Minute).Map(ctx, Mapping{Proto: "tcp", InternalPort: 7401})
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 3*time.Second {
		t.Fatalf("with a 200ms context: err %v after %v", err, time.Since(start))
	}
	t.Logf("silent server, 200ms context: %v", err)
}

// natpmpOnly answers PCP in NAT-PMP (version 0, UNSUPP_VERSION) and a
// NAT-PMP external address request with 192.0.2.7.
func natpmpOnly(_ int, req []byte) [][]byte {
	if len(req) < 2 {
		return nil
	}
	if req[0] != 0 {
		return [][]byte{{0, req[1] | 0x80, 0, 1, 0, 0, 0, 9}}
	}
	if req[1] == 0 {
		return [][]byte{{0, 128, 0, 0, 0, 0, 0, 9, 192, 0, 2, 7}}
	}
	return nil
}

// TestPCPRouterSpeaksNATPMPOnly plays a router that answers PCP in
// NAT-PMP: asked for PCP, Discover says so; on auto it moves on to
// NAT-PMP.
func TestPCPRouterSpeaksNATPMPOnly(t *testing.T) {
	t.Parallel()
	// The NAT-PMP client knows only the standard port: the fake takes
	// it on a loopback address of its own.
	var f *fakeServer
	for i := 0; f == nil; i++ {
		addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 77, byte(mrand.IntN(250)), byte(mrand.IntN(250) + 2)}), pcpPort)
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		if err != nil {
			if i > 20 {
				t.Fatal(err)
			}
			continue
		}
		f = serveFake(t, c, natpmpOnly)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Discover(ctx, Options{Protocol: ProtocolPCP, Gateway: f.addr.Addr(), Timeout: 500 * time.Millisecond})
	if !errors.Is(err, errNATPMPOnly) || !errors.Is(err, ErrNotFound) {
		t.Fatalf("discover pcp: %v", err)
	}
	t.Logf("pcp asked of a NAT-PMP-only router: %v", err)
	res, err := Discover(ctx, Options{Gateway: f.addr.Addr(), Timeout: 500 * time.Millisecond})
	if err != nil || res.Mapper.Protocol() != ProtocolNATPMP || res.ExternalIP != netip.MustParseAddr("192.0.2.7") {
		t.Fatalf("auto: %+v, %v", res, err)
	}
	t.Logf("auto: pcp refused in version 0, natpmp picked, external address %v", res.ExternalIP)
}

// TestPCPExternalIP checks the probe mapping's answer: an IPv4-mapped
// address comes back as IPv4, and the probe is deleted with its nonce; an
// unspecified address, or NETWORK_FAILURE, means none usable.
func TestPCPExternalIP(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		result uint8
		ext    netip.Addr
		want   netip.Addr
	}{
		{"mapped", pcpSuccess, netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("203.0.113.7")},
		{"unspecified", pcpSuccess, netip.IPv4Unspecified(), netip.Addr{}},
		{"zero", pcpSuccess, netip.IPv6Unspecified(), netip.Addr{}},
		{"network failure", pcpNetworkFailure, netip.IPv4Unspecified(), netip.Addr{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := startFake(t, "127.0.0.1:0", func(_ int, req []byte) [][]byte {
				return [][]byte{answer(req, tc.result, binary.BigEndian.Uint32(req[4:]), 100, tc.ext, 40000)}
			})
			ip, err := fakeMapper(t, f, 2*time.Second).ExternalIP(context.Background())
			if tc.want.IsValid() {
				if err != nil || ip != tc.want || !ip.Is4() {
					t.Fatalf("ExternalIP: %v, %v; want %v", ip, err, tc.want)
				}
				reqs := f.requests()
				if len(reqs) != 2 || binary.BigEndian.Uint32(reqs[1][4:]) != 0 || !bytes.Equal(reqs[0][24:36], reqs[1][24:36]) {
					t.Fatalf("the probe was not deleted with its nonce: %d requests", len(reqs))
				}
				t.Logf("%s: external address %v; probe deleted", tc.name, ip)
				return
			}
			if !errors.Is(err, ErrNoExternalAddress) {
				t.Fatalf("ExternalIP: %v, %v; want ErrNoExternalAddress", ip, err)
			}
			t.Logf("%s: %v", tc.name, err)
		})
	}
}

// TestPCPEpoch plays a router whose epoch goes backwards (it restarted):
// the client notices and logs it; a steady epoch is no restart.
func TestPCPEpoch(t *testing.T) {
	t.Parallel()
	epochs := []uint32{1000, 1000, 3}
	f := startFake(t, "127.0.0.1:0", func(i int, req []byte) [][]byte {
		b := grant(req)
		binary.BigEndian.PutUint32(b[8:], epochs[min(i, len(epochs)-1)])
		return [][]byte{b}
	})
	p := fakeMapper(t, f, 2*time.Second)
	log, buf := testLog(t)
	p.log = log
	for i := range epochs {
		if _, err := p.Map(context.Background(), Mapping{Proto: "tcp", InternalPort: 7500}); err != nil {
			t.Fatal(err)
		}
		p.mu.Lock()
		resets := p.resets
		p.mu.Unlock()
		if want := max(0, i-1); resets != want {
			t.Fatalf("after epoch %d: %d resets, want %d", epochs[i], resets, want)
		}
	}
	if !strings.Contains(buf.String(), "pcp router lost its mappings") {
		t.Fatalf("no log of the restart: %s", buf)
	}
	t.Logf("epochs %v: one restart noticed and logged", epochs)
}

// TestPCPEpochCheck checks the rule of RFC 6887 section 8.5 on its own.
func TestPCPEpochCheck(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		prev, cur uint32
		elapsed   time.Duration
		lost      bool
	}{
		{1000, 1000, 0, false},
		{1000, 999, 0, false}, // a second of slack
		{1000, 998, 0, true},
		{1000, 1100, 100 * time.Second, false},
		{1000, 1010, 100 * time.Second, true}, // the server's clock lagged: it restarted
		{1000, 2000, 10 * time.Second, true},
	} {
		p := newPCP(netip.AddrPort{}, netip.Addr{}, time.Second, nil)
		p.epoch, p.epochAt, p.haveEpoch = tc.prev, time.Now().Add(-tc.elapsed), true
		p.noteEpoch(tc.cur)
		if lost := p.resets == 1; lost != tc.lost {
			t.Errorf("epoch %d then %d after %v: lost %v, want %v", tc.prev, tc.cur, tc.elapsed, lost, tc.lost)
		}
	}
	t.Logf("epoch rule: backwards by more than 1s, or drifting from the local clock, means lost state")
}

// FuzzPCPResponse feeds the response decoder arbitrary bytes: it must
// never panic, and what it accepts must hold together.
func FuzzPCPResponse(f *testing.F) {
	req := pcpRequest{client: netip.MustParseAddr("10.0.0.2"), lifetime: 60, proto: 6, internal: 80, external: 80}.marshal()
	f.Add(grant(req))
	f.Add(grant(req)[:30])
	f.Add(answer(req, pcpNotAuthorized, 0, 1, netip.IPv4Unspecified(), 0))
	f.Add([]byte{0, 0x81, 0, 1, 0, 0, 0, 9})
	f.Add([]byte{})
	f.Add([]byte{2})
	f.Add(append(grant(req), 0x80, 0, 0, 4, 1, 2, 3, 4))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parsePCPResponse(b)
		if err != nil {
			return
		}
		if len(b) < pcpHeaderSize || b[1]&0x80 == 0 || r.version == 0 {
			t.Fatalf("accepted % x", b)
		}
		if r.hasMap && (!r.extIP.IsValid() || len(b) < pcpHeaderSize+pcpMapSize) {
			t.Fatalf("MAP data from % x: %+v", b, r)
		}
		pcpRequest{nonce: r.nonce, proto: r.proto, internal: r.internal}.answers(r)
	})
}
