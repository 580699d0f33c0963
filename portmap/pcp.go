package portmap

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// The Port Control Protocol (RFC 6887), as much of it as mapping inbound
// ports for this machine needs: the MAP opcode over IPv4.
const (
	pcpPort    = 5351 // the server's UDP port (section 19.1)
	pcpVersion = 2
	pcpOpMap   = 1
	// pcpMaxSize is the largest PCP message (section 7).
	pcpMaxSize = 1100
	// pcpHeaderSize and pcpMapSize are the common header and the MAP
	// opcode's data (sections 7.1, 7.2 and 11.1).
	pcpHeaderSize = 24
	pcpMapSize    = 36
	// pcpIRT and pcpMRT are the initial and the largest retransmission
	// times (section 8.1.1).
	pcpIRT = 3 * time.Second
	pcpMRT = 1024 * time.Second
	// pcpProbeLifetime is the lifetime asked for the mapping ExternalIP
	// makes and deletes at once.
	pcpProbeLifetime = 10
)

// PCP result codes (section 7.4).
const (
	pcpSuccess               = 0
	pcpUnsuppVersion         = 1
	pcpNotAuthorized         = 2
	pcpMalformedRequest      = 3
	pcpUnsuppOpcode          = 4
	pcpUnsuppOption          = 5
	pcpMalformedOption       = 6
	pcpNetworkFailure        = 7
	pcpNoResources           = 8
	pcpUnsuppProtocol        = 9
	pcpUserExQuota           = 10
	pcpCannotProvideExternal = 11
	pcpAddressMismatch       = 12
	pcpExcessiveRemotePeers  = 13
)

var pcpResultNames = [...]string{
	pcpSuccess:               "SUCCESS",
	pcpUnsuppVersion:         "UNSUPP_VERSION",
	pcpNotAuthorized:         "NOT_AUTHORIZED",
	pcpMalformedRequest:      "MALFORMED_REQUEST",
	pcpUnsuppOpcode:          "UNSUPP_OPCODE",
	pcpUnsuppOption:          "UNSUPP_OPTION",
	pcpMalformedOption:       "MALFORMED_OPTION",
	pcpNetworkFailure:        "NETWORK_FAILURE",
	pcpNoResources:           "NO_RESOURCES",
	pcpUnsuppProtocol:        "UNSUPP_PROTOCOL",
	pcpUserExQuota:           "USER_EX_QUOTA",
	pcpCannotProvideExternal: "CANNOT_PROVIDE_EXTERNAL",
	pcpAddressMismatch:       "ADDRESS_MISMATCH",
	pcpExcessiveRemotePeers:  "EXCESSIVE_REMOTE_PEERS",
}

// PCPError is a PCP router's refusal: the result code of its answer
// (RFC 6887 section 7.4). Its message is "pcp: " and the code's name in
// the RFC, such as "pcp: NOT_AUTHORIZED" or "pcp: NO_RESOURCES".
type PCPError struct {
	// Code is the result code.
	Code uint8
}

func (e *PCPError) Error() string {
	if int(e.Code) < len(pcpResultNames) {
		return "pcp: " + pcpResultNames[e.Code]
	}
	return fmt.Sprintf("pcp: result code %d", e.Code)
}

// errNATPMPOnly is returned (wrapped) when the router answers a PCP
// request in NAT-PMP (version 0): it does not speak PCP.
var errNATPMPOnly = errors.New("router answered in NAT-PMP (version 0): it does not speak PCP")

// errNotPCPResponse marks a datagram that is not a PCP response; the
// client ignores it and keeps waiting.
var errNotPCPResponse = errors.New("not a pcp response")

var _ Mapper = (*pcpMapper)(nil)

// pcpKey names a mapping: the protocol and internal port, as the server
// does (with this client's address).
type pcpKey struct {
	proto uint8
	port  uint16
}

// pcpMapper maps ports over PCP. It keeps one nonce per mapping for its
// renewals and its deletion, and the server's epoch to notice a router
// that restarted (and so lost its mappings).
type pcpMapper struct {
	server  netip.AddrPort
	local   netip.Addr
	timeout time.Duration
	irt     time.Duration
	log     *slog.Logger

	mu       sync.Mutex
	mappings map[pcpKey]pcpState
	// epoch is the server's epoch time and when it was received
	// (section 8.5); haveEpoch is false until the first answer.
	epoch     uint32
	epochAt   time.Time
	haveEpoch bool
	// resets counts the times the epoch showed the router lost its
	// state.
	resets int
}

func newPCP(server netip.AddrPort, local netip.Addr, timeout time.Duration, log *slog.Logger) *pcpMapper {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &pcpMapper{
		server:   server,
		local:    local.Unmap(),
		timeout:  timeout,
		irt:      pcpIRT,
		log:      log,
		mappings: make(map[pcpKey]pcpState),
	}
}

func (p *pcpMapper) Protocol() string { return ProtocolPCP }

// pcpState is what the client keeps of one mapping: the nonce of all
// its requests, and the external port last granted (asked for again on
// renewal, as section 11.2 says).
type pcpState struct {
	nonce    [12]byte
	external uint16
}

// pcpRequest is one MAP request.
type pcpRequest struct {
	client   netip.Addr
	lifetime uint32
	nonce    [12]byte
	proto    uint8
	internal uint16
	external uint16
}

// marshal encodes r as a PCP version 2 MAP request with no suggested
// external address (the IPv4-mapped unspecified address: section 11.1).
func (r pcpRequest) marshal() []byte {
	b := make([]byte, pcpHeaderSize+pcpMapSize)
	b[0] = pcpVersion
	b[1] = pcpOpMap
	binary.BigEndian.PutUint32(b[4:], r.lifetime)
	a := r.client.As16() // an IPv4 address as IPv4-mapped IPv6
	copy(b[8:24], a[:])
	m := b[pcpHeaderSize:]
	copy(m[0:12], r.nonce[:])
	m[12] = r.proto
	binary.BigEndian.PutUint16(m[16:], r.internal)
	binary.BigEndian.PutUint16(m[18:], r.external)
	unspec := netip.IPv6Unspecified().As16()
	if r.client.Is4() {
		unspec = netip.IPv4Unspecified().As16()
	}
	copy(m[20:36], unspec[:])
	return b
}

// pcpResponse is a decoded PCP response.
type pcpResponse struct {
	version  uint8
	opcode   uint8
	result   uint8
	lifetime uint32
	epoch    uint32
	// hasMap says the MAP data below is present.
	hasMap   bool
	nonce    [12]byte
	proto    uint8
	internal uint16
	external uint16
	extIP    netip.Addr
}

// parsePCPResponse decodes a PCP response. It returns errNATPMPOnly for
// a NAT-PMP (version 0) response and errNotPCPResponse for anything else
// that is not a PCP response. The MAP data is decoded when the opcode is
// MAP and the message is long enough; options after it are ignored.
func parsePCPResponse(b []byte) (pcpResponse, error) {
	var r pcpResponse
	if len(b) < 2 {
		return r, fmt.Errorf("%w: %d bytes", errNotPCPResponse, len(b))
	}
	if b[1]&0x80 == 0 {
		return r, fmt.Errorf("%w: the R bit is clear", errNotPCPResponse)
	}
	if b[0] == 0 {
		return r, errNATPMPOnly
	}
	if len(b) < pcpHeaderSize || len(b) > pcpMaxSize {
		return r, fmt.Errorf("%w: %d bytes", errNotPCPResponse, len(b))
	}
	r.version = b[0]
	r.opcode = b[1] & 0x7f
	r.result = b[3]
	r.lifetime = binary.BigEndian.Uint32(b[4:])
	r.epoch = binary.BigEndian.Uint32(b[8:])
	if r.opcode == pcpOpMap && len(b) >= pcpHeaderSize+pcpMapSize {
		m := b[pcpHeaderSize:]
		r.hasMap = true
		copy(r.nonce[:], m[0:12])
		r.proto = m[12]
		r.internal = binary.BigEndian.Uint16(m[16:])
		r.external = binary.BigEndian.Uint16(m[18:])
		r.extIP = netip.AddrFrom16([16]byte(m[20:36])).Unmap()
	}
	return r, nil
}

// answers reports whether resp is the answer to req: the same version
// and opcode and, for a success (whose MAP data must be there), the same
// nonce, protocol and internal port. An error answer may come without
// the MAP data (a server that could not parse it).
func (req pcpRequest) answers(resp pcpResponse) bool {
	if resp.opcode != pcpOpMap {
		return false
	}
	if resp.version != pcpVersion {
		// Only an UNSUPP_VERSION answer may carry another version.
		return resp.result == pcpUnsuppVersion
	}
	if !resp.hasMap {
		return resp.result != pcpSuccess
	}
	return resp.nonce == req.nonce && resp.proto == req.proto && resp.internal == req.internal
}

// dial opens the socket the requests go out on, from p.local (the client
// address the request names, which the server checks against the source)
// to the server.
func (p *pcpMapper) dial() (*net.UDPConn, error) {
	laddr := net.UDPAddrFromAddrPort(netip.AddrPortFrom(p.local, 0))
	c, err := net.DialUDP("udp", laddr, net.UDPAddrFromAddrPort(p.server))
	if err != nil {
		return nil, fmt.Errorf("pcp: %w", err)
	}
	return c, nil
}

// exchange sends req over c and waits for its answer, retransmitting as
// section 8.1.1 says (from p.irt, doubling, with a random tenth either
// way, up to pcpMRT) until ctx ends or p.timeout passes. Datagrams that
// are not the answer are ignored. The answer's result code, when not
// SUCCESS, is returned as a *PCPError along with the answer.
func (p *pcpMapper) exchange(ctx context.Context, c *net.UDPConn, req pcpRequest) (pcpResponse, error) {
	deadline := time.Now().Add(p.timeout)
	byCtx := false
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline, byCtx = d, true
	}
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Now()) })
	defer stop()
	msg := req.marshal()
	buf := make([]byte, pcpMaxSize+1)
	rt := jitter(p.irt)
	var refused error
	for {
		if err := ctx.Err(); err != nil {
			return pcpResponse{}, err
		}
		if time.Now().After(deadline) {
			break
		}
		if _, err := c.Write(msg); err != nil {
			return pcpResponse{}, fmt.Errorf("pcp: send: %w", err)
		}
		next := time.Now().Add(rt)
		if next.After(deadline) {
			next = deadline
		}
		c.SetReadDeadline(next)
		for {
			n, err := c.Read(buf)
			if err != nil {
				if ctx.Err() != nil {
					return pcpResponse{}, ctx.Err()
				}
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				if errors.Is(err, syscall.ECONNREFUSED) {
					// Nothing listens on the router's port (yet):
					// remembered, and the wait goes on.
					refused = err
					continue
				}
				return pcpResponse{}, fmt.Errorf("pcp: receive: %w", err)
			}
			resp, err := parsePCPResponse(buf[:n])
			if errors.Is(err, errNATPMPOnly) {
				return pcpResponse{}, fmt.Errorf("pcp: %w", errNATPMPOnly)
			}
			if err != nil || !req.answers(resp) {
				continue
			}
			p.noteEpoch(resp.epoch)
			if resp.result != pcpSuccess {
				if resp.result == pcpUnsuppVersion && resp.version != pcpVersion {
					return resp, fmt.Errorf("%w (the router speaks version %d)", &PCPError{Code: resp.result}, resp.version)
				}
				return resp, &PCPError{Code: resp.result}
			}
			return resp, nil
		}
		rt = jitter(2 * rt)
		if rt > pcpMRT {
			rt = jitter(pcpMRT)
		}
	}
	if byCtx {
		return pcpResponse{}, fmt.Errorf("pcp: no answer from %s: %w", p.server, context.DeadlineExceeded)
	}
	if refused != nil {
		return pcpResponse{}, fmt.Errorf("pcp: no answer from %s: %w", p.server, refused)
	}
	return pcpResponse{}, fmt.Errorf("pcp: no answer from %s within %v", p.server, p.timeout)
}

// jitter returns d changed by a random amount up to a tenth either way
// (the RAND of section 8.1.1).
func jitter(d time.Duration) time.Duration {
	return d + time.Duration((mrand.Float64()*0.2-0.1)*float64(d))
}

// noteEpoch checks the server's epoch time against the last one
// (section 8.5): when it went backwards, or moved apart from this
// machine's clock by more than the slack the RFC allows, the router lost
// its state (it restarted), and with it every mapping; the next renewal
// of each makes it again.
func (p *pcpMapper) noteEpoch(epoch uint32) {
	now := time.Now()
	p.mu.Lock()
	prev, prevAt, have := p.epoch, p.epochAt, p.haveEpoch
	p.epoch, p.epochAt, p.haveEpoch = epoch, now, true
	lost := false
	if have {
		client := int64(now.Sub(prevAt) / time.Second)
		server := int64(epoch) - int64(prev)
		lost = server < -1 ||
			client+2 < server-server/16 ||
			server+2 < client-client/16
	}
	if lost {
		p.resets++
	}
	p.mu.Unlock()
	if lost {
		p.log.Warn("pcp router lost its mappings (its epoch went backwards): each is made again at its next renewal",
			"router", p.server.Addr(), "epoch", epoch, "previous_epoch", prev)
	}
}

// state returns what is kept of the mapping k, with a new nonce for a
// new mapping.
func (p *pcpMapper) state(k pcpKey) (pcpState, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if st, ok := p.mappings[k]; ok {
		return st, nil
	}
	var st pcpState
	if _, err := rand.Read(st.nonce[:]); err != nil {
		return st, fmt.Errorf("pcp: nonce: %w", err)
	}
	p.mappings[k] = st
	return st, nil
}

// protoNumber is the IP protocol number of "tcp" or "udp".
func protoNumber(proto string) uint8 {
	if proto == "tcp" {
		return 6
	}
	return 17
}

// ExternalIP asks the router for its external address: PCP has no
// request for it, so ExternalIP maps a UDP port for a few seconds (the
// port its own request socket holds, so no other mapping is touched),
// reads the address the router assigned, and deletes that mapping. An
// unspecified address, NETWORK_FAILURE or NO_RESOURCES (the answer of a
// router whose WAN address is private) wrap ErrNoExternalAddress.
func (p *pcpMapper) ExternalIP(ctx context.Context) (netip.Addr, error) {
	c, err := p.dial()
	if err != nil {
		return netip.Addr{}, err
	}
	defer c.Close()
	port := uint16(c.LocalAddr().(*net.UDPAddr).Port)
	req := pcpRequest{client: p.local, lifetime: pcpProbeLifetime, proto: 17, internal: port, external: port}
	if _, err := rand.Read(req.nonce[:]); err != nil {
		return netip.Addr{}, fmt.Errorf("pcp: nonce: %w", err)
	}
	resp, err := p.exchange(ctx, c, req)
	if err != nil {
		var pe *PCPError
		if errors.As(err, &pe) && (pe.Code == pcpNetworkFailure || pe.Code == pcpNoResources) {
			// The router has no usable external address
			// (NETWORK_FAILURE), or cannot map even the probe: a
			// router whose WAN address is private answers
			// NO_RESOURCES to every request.
			return netip.Addr{}, fmt.Errorf("external address: %w: %w", ErrNoExternalAddress, err)
		}
		return netip.Addr{}, fmt.Errorf("external address: %w", err)
	}
	req.lifetime = 0
	if _, err := p.exchange(ctx, c, req); err != nil {
		p.log.Debug("pcp: deleting the external address probe failed; it expires on its own",
			"router", p.server.Addr(), "port", port, "err", err)
	}
	ip := resp.extIP
	if !ip.IsValid() || ip.IsUnspecified() {
		return netip.Addr{}, fmt.Errorf("external address %v: %w", ip, ErrNoExternalAddress)
	}
	return ip, nil
}

// Map adds or renews m, with the nonce of its earlier requests (so the
// router sees a renewal of the same mapping).
func (p *pcpMapper) Map(ctx context.Context, m Mapping) (Mapping, error) {
	if err := check(m); err != nil {
		return Mapping{}, err
	}
	k := pcpKey{protoNumber(m.Proto), m.InternalPort}
	st, err := p.state(k)
	if err != nil {
		return Mapping{}, err
	}
	ext := m.ExternalPort
	if ext == 0 {
		ext = st.external
	}
	if ext == 0 {
		ext = m.InternalPort
	}
	req := pcpRequest{client: p.local, lifetime: lifetimeOf(m), nonce: st.nonce, proto: k.proto, internal: m.InternalPort, external: ext}
	c, err := p.dial()
	if err != nil {
		return Mapping{}, err
	}
	defer c.Close()
	resp, err := p.exchange(ctx, c, req)
	if err != nil {
		return Mapping{}, fmt.Errorf("portmap: pcp map %s %d: %w", m.Proto, m.InternalPort, err)
	}
	if resp.external == 0 || resp.lifetime == 0 {
		return Mapping{}, fmt.Errorf("portmap: pcp map %s %d: router granted port %d for %ds", m.Proto, m.InternalPort, resp.external, resp.lifetime)
	}
	p.mu.Lock()
	if cur, ok := p.mappings[k]; ok && cur.nonce == st.nonce {
		p.mappings[k] = pcpState{nonce: st.nonce, external: resp.external}
	}
	p.mu.Unlock()
	m.ExternalPort = resp.external
	m.Lifetime = time.Duration(resp.lifetime) * time.Second
	return m, nil
}

// Unmap deletes the mapping of m's protocol and internal port that this
// Mapper made (a PCP router deletes a mapping only for the nonce that
// made it).
func (p *pcpMapper) Unmap(ctx context.Context, m Mapping) error {
	if err := check(m); err != nil {
		return err
	}
	k := pcpKey{protoNumber(m.Proto), m.InternalPort}
	p.mu.Lock()
	st, ok := p.mappings[k]
	p.mu.Unlock()
	if !ok {
		return fmt.Errorf("portmap: pcp unmap %s %d: not mapped by this client", m.Proto, m.InternalPort)
	}
	c, err := p.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	req := pcpRequest{client: p.local, nonce: st.nonce, proto: k.proto, internal: m.InternalPort}
	if _, err := p.exchange(ctx, c, req); err != nil {
		return fmt.Errorf("portmap: pcp unmap %s %d: %w", m.Proto, m.InternalPort, err)
	}
	p.mu.Lock()
	if p.mappings[k].nonce == st.nonce {
		delete(p.mappings, k)
	}
	p.mu.Unlock()
	return nil
}
