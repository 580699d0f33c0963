package gateway

// UDP tunnels: a tunnel registered with udp has a public UDP socket in the
// place of a TCP listener, and relays datagrams per flow, the datagrams of
// one visitor address (ip:port). A new visitor address opens a stream to
// an agent with a UDP stream header; once the agent's status says ok, the
// flow's datagrams travel whole, as frames on that stream, or as QUIC
// datagrams marked with the flow's number when the session carries them
// (internal/protocol/PROTOCOL.md, "UDP flows"). A flow ends when no
// datagram went either way for Config.UDPIdleTimeout, when its stream
// ends, or when the tunnel goes. In a cluster, a node none of whose
// agents serves the tunnel sends its flows through the link to a node
// that does, in frames (remote.go).
//
// The socket's one reader never waits for an agent: each flow has a
// bounded queue and a goroutine of its own that writes to the agent, and
// a datagram that finds the queue full is dropped and counted.

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/transport"
)

// Bounds of one flow.
const (
	// udpHeldMax is how many datagrams a flow holds while the agent's
	// status is awaited; more are dropped.
	udpHeldMax = 8
	// udpQueueLen and udpQueueBytes bound a flow's queue to its agent,
	// udpPortQueueBytes the queues of all the flows of a tunnel.
	udpQueueLen       = 64
	udpQueueBytes     = 256 << 10
	udpPortQueueBytes = 4 << 20
	// udpWriteBatch is how many bytes of frames one write to a flow's
	// stream carries at most.
	udpWriteBatch = 64 << 10
	// udpSmallFrame is the size of a flow's own buffer for the agent's
	// frames; a larger frame takes a buffer from udpBigBufs.
	udpSmallFrame = 2048
)

// udpBigBufs holds buffers for frames longer than udpSmallFrame.
var udpBigBufs = sync.Pool{New: func() any {
	b := make([]byte, protocol.MaxDatagramSize)
	return &b
}}

// protoName is the name of a tunnel's public port's protocol.
func protoName(udp bool) string {
	if udp {
		return "udp"
	}
	return "tcp"
}

// bindPort opens public port for a tunnel: a UDP socket for a UDP
// tunnel, else a TCP listener (bind).
func (r *registry) bindPort(udp bool, port int) (net.Listener, error) {
	if !udp {
		return r.bind(port)
	}
	pc, err := net.ListenPacket("udp", net.JoinHostPort(r.srv.cfg.PublicHost, strconv.Itoa(port)))
	if err != nil {
		return nil, err
	}
	uc := pc.(*net.UDPConn)
	// A burst of visitors' datagrams waits here while the reader hands
	// the previous ones to their flows; the kernel's default (about
	// 200 KB) dropped some in an end-to-end test under load. The system
	// caps the size at net.core.rmem_max without an error.
	uc.SetReadBuffer(udpReadBuffer)
	return newUDPPort(uc), nil
}

// udpReadBuffer is the receive buffer asked for a UDP tunnel's socket.
const udpReadBuffer = 2 << 20

// serve serves the tunnel's public port until it closes: the flows of a
// UDP tunnel, the connections of a TCP one. The registry counted it in
// the server's visitors.
func (t *tunnel) serve() {
	u, ok := t.ln.(*udpPort)
	if !ok {
		t.acceptLoop(t.ln)
		return
	}
	defer t.reg.srv.visitors.Done()
	u.serve(t)
}

// udpPort is a UDP tunnel's public socket and its flows. It stands where
// a TCP tunnel's listener does, so that the registry binds, counts and
// closes the ports of both alike; nothing accepts from it (Accept waits
// for Close): its serve reads datagrams.
type udpPort struct {
	pc     *net.UDPConn
	closed chan struct{}
	once   sync.Once

	queued atomic.Int64 // bytes in the flows' queues

	mu      sync.Mutex
	flows   map[netip.AddrPort]*udpFlow
	sources map[netip.Addr]int // flows per visitor IP
	ended   bool               // serve returned: no more flows
}

var _ net.Listener = (*udpPort)(nil)

func newUDPPort(pc *net.UDPConn) *udpPort {
	return &udpPort{pc: pc, closed: make(chan struct{}),
		flows: make(map[netip.AddrPort]*udpFlow), sources: make(map[netip.Addr]int)}
}

// Accept waits for Close: a UDP port has no connections.
func (u *udpPort) Accept() (net.Conn, error) {
	<-u.closed
	return nil, net.ErrClosed
}

// Close closes the socket; serve then ends every flow.
func (u *udpPort) Close() error {
	u.once.Do(func() { close(u.closed) })
	return u.pc.Close()
}

// Addr is the socket's address.
func (u *udpPort) Addr() net.Addr { return u.pc.LocalAddr() }

// flowCount is how many flows are open (or opening).
func (u *udpPort) flowCount() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.flows)
}

// serve reads the visitors' datagrams until the socket closes, then ends
// every flow.
func (u *udpPort) serve(t *tunnel) {
	defer u.endFlows()
	srv := t.reg.srv
	// One byte more than a UDP payload may be: a longer read is a
	// datagram no flow carries.
	buf := make([]byte, protocol.MaxDatagramSize+1)
	for {
		n, from, err := u.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || srv.ctx.Err() != nil {
				return
			}
			select {
			case <-u.closed:
				return
			default:
			}
			// An ICMP error of an earlier send, say: the socket goes on.
			t.log.Debug("udp read failed", "err", err)
			continue
		}
		if n > protocol.MaxDatagramSize {
			srv.obs.DatagramDropped(t.name, DropTooLarge)
			continue
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		u.mu.Lock()
		f := u.flows[from]
		if f == nil {
			f = u.newFlowLocked(t, from)
		}
		u.mu.Unlock()
		if f != nil {
			f.fromVisitor(buf[:n])
		}
	}
}

// newFlowLocked starts a flow for a new visitor address, or drops its
// datagram (nil) when no agent may take it. Called under u.mu.
func (u *udpPort) newFlowLocked(t *tunnel, from netip.AddrPort) *udpFlow {
	srv := t.reg.srv
	drop := func(reason DatagramDrop, msg string, args ...any) *udpFlow {
		srv.obs.DatagramDropped(t.name, reason)
		t.log.Debug(msg, append([]any{"visitor", from.String()}, args...)...)
		return nil
	}
	if u.ended {
		return nil
	}
	members := t.live()
	var remote []Member
	if len(members) == 0 {
		// In a cluster: the nodes whose agents serve the tunnel.
		if remote = t.remoteMembers(); len(remote) == 0 {
			return drop(DropNoAgent, "udp visitor dropped: no agent online")
		}
	}
	if pol := t.policy(); pol != nil && !pol.allows(from.Addr()) {
		return drop(DropNotAllowed, "udp visitor dropped: address not allowed")
	}
	if n := len(u.flows); n >= srv.cfg.UDPMaxFlows {
		return drop(DropFlowLimit, "udp visitor dropped: the tunnel has as many flows as it may", "max", srv.cfg.UDPMaxFlows)
	}
	if n := u.sources[from.Addr()]; n >= srv.cfg.UDPMaxFlowsPerSource {
		return drop(DropFlowLimit, "udp visitor dropped: its address has as many flows as it may", "max", srv.cfg.UDPMaxFlowsPerSource)
	}
	f := &udpFlow{t: t, port: u, visitor: from, q: make(chan []byte, udpQueueLen),
		done: make(chan struct{}), began: time.Now()}
	f.touch()
	u.flows[from] = f
	u.sources[from.Addr()]++
	srv.visitors.Add(1) // serve holds one: no Wait has returned
	go func() {
		defer srv.visitors.Done()
		f.run(members, remote)
	}()
	return f
}

// removeFlow forgets f.
func (u *udpPort) removeFlow(f *udpFlow) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.flows[f.visitor] != f {
		return
	}
	delete(u.flows, f.visitor)
	ip := f.visitor.Addr()
	if u.sources[ip]--; u.sources[ip] <= 0 {
		delete(u.sources, ip)
	}
}

// endFlows ends every flow; no new one starts.
func (u *udpPort) endFlows() {
	u.mu.Lock()
	u.ended = true
	fs := make([]*udpFlow, 0, len(u.flows))
	for _, f := range u.flows {
		fs = append(fs, f)
	}
	u.mu.Unlock()
	for _, f := range fs {
		f.close()
	}
}

// udpFlow is one visitor address of a UDP tunnel and its stream to an
// agent.
type udpFlow struct {
	t       *tunnel
	port    *udpPort
	visitor netip.AddrPort
	began   time.Time

	q      chan []byte  // to the agent; filled by the socket's reader only
	qBytes atomic.Int64 // bytes in q
	ready  atomic.Bool  // the agent said ok: q drains
	last   atomic.Int64 // when a datagram last went either way (UnixNano)

	done      chan struct{} // closed by close
	closeOnce sync.Once
	mu        sync.Mutex
	st        net.Conn    // the stream, once opened; under mu
	idle      *time.Timer // under mu

	// Set by open before ready.
	session uint64                    // the agent session's id (a remote node's)
	node    string                    // the node, through a cluster's link; "" for this one
	ss      *session                  // the agent session; nil through a link
	ds      transport.DatagramSession // nil: frames on the stream
	flow    uint32                    // its number in QUIC datagrams; 0 with frames

	in, out     atomic.Int64 // bytes from and to the visitor
	dgIn, dgOut atomic.Int64 // datagrams from and to the visitor
	dropped     atomic.Int64 // datagrams of the flow dropped
	readerDone  chan struct{}
}

func (f *udpFlow) touch() { f.last.Store(time.Now().UnixNano()) }

// fromVisitor queues a visitor's datagram for the agent, or drops it.
// Called by the socket's reader only; p is copied.
func (f *udpFlow) fromVisitor(p []byte) {
	f.touch()
	if !f.ready.Load() && len(f.q) >= udpHeldMax {
		f.drop(DropQueueFull)
		return
	}
	n := int64(len(p))
	if f.qBytes.Load()+n > udpQueueBytes || f.port.queued.Load()+n > udpPortQueueBytes {
		f.drop(DropQueueFull)
		return
	}
	b := append(make([]byte, 0, len(p)), p...)
	f.qBytes.Add(n)
	f.port.queued.Add(n)
	select {
	case f.q <- b:
	default:
		f.dequeued(b)
		f.drop(DropQueueFull)
	}
}

// dequeued counts p out of the queues' bytes.
func (f *udpFlow) dequeued(p []byte) {
	f.qBytes.Add(-int64(len(p)))
	f.port.queued.Add(-int64(len(p)))
}

func (f *udpFlow) drop(reason DatagramDrop) {
	f.dropped.Add(1)
	f.t.reg.srv.obs.DatagramDropped(f.t.name, reason)
}

// toVisitor sends the agent's datagram p to the visitor.
func (f *udpFlow) toVisitor(p []byte) {
	f.touch()
	// Counted before the write, and taken back if it fails: counted after,
	// a visitor could have its answer, and the flow be ended and logged,
	// before the datagram was counted.
	f.out.Add(int64(len(p)))
	f.dgOut.Add(1)
	if _, err := f.port.pc.WriteToUDPAddrPort(p, f.visitor); err != nil {
		f.out.Add(-int64(len(p)))
		f.dgOut.Add(-1)
		f.t.log.Debug("udp write to visitor failed", "visitor", f.visitor.String(), "err", err)
	}
}

// close ends the flow: its stream closes, and run finishes it.
func (f *udpFlow) close() {
	f.closeOnce.Do(func() {
		close(f.done)
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.st != nil {
			f.st.Close()
		}
		if f.idle != nil {
			f.idle.Stop()
		}
	})
}

// closed reports whether close was called.
func (f *udpFlow) closed() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

// checkIdle ends the flow if it was idle for the idle timeout, or checks
// again when it would be.
func (f *udpFlow) checkIdle() {
	timeout := f.t.reg.srv.cfg.UDPIdleTimeout
	idle := time.Since(time.Unix(0, f.last.Load()))
	if idle >= timeout {
		f.t.log.Debug("udp flow idle, ending it", "visitor", f.visitor.String(), "idle", idle.Round(time.Millisecond))
		f.close()
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.closed() {
		f.idle.Reset(timeout - idle)
	}
}

// run opens the flow's stream to one of members (or, with none, through
// a node of remote), waits for the agent's status, then writes the
// visitor's datagrams to the agent until the flow ends; it finishes the
// flow.
func (f *udpFlow) run(members []*session, remote []Member) {
	t, srv := f.t, f.t.reg.srv
	defer f.finish()
	f.mu.Lock()
	if !f.closed() {
		f.idle = time.AfterFunc(srv.cfg.UDPIdleTimeout, f.checkIdle)
	}
	f.mu.Unlock()

	var st net.Conn
	if len(members) > 0 {
		st = f.open(members)
	} else {
		st = f.openRemote(remote)
	}
	if st == nil {
		return
	}
	st.SetReadDeadline(time.Now().Add(srv.cfg.StatusTimeout))
	status, err := protocol.ReadStatus(st)
	st.SetReadDeadline(time.Time{})
	if err != nil || status != protocol.StatusOK {
		if !f.closed() {
			t.log.Debug("udp visitor refused by the agent", "visitor", f.visitor.String(), "session", f.session, "status", status, "err", err)
		}
		f.dropQueued(DropNoAgent)
		return
	}
	f.ready.Store(true)
	srv.obs.UDPFlowOpened(t.name)
	f.readerDone = make(chan struct{})
	srv.visitors.Add(1) // run holds one
	go func() {
		defer srv.visitors.Done()
		defer close(f.readerDone)
		defer f.close()
		f.readAgent(st)
	}()
	f.writeAgent(st)
	f.close()
	<-f.readerDone
}

// open opens the flow's stream to the first of members (round robin)
// that takes one, registering the flow with the session's datagrams when
// it carries them; nil when none does, or when the flow ended meanwhile.
func (f *udpFlow) open(members []*session) net.Conn {
	t, srv := f.t, f.t.reg.srv
	var st net.Conn
	if inTurn(t, members, func(ss *session) bool {
		var ds transport.DatagramSession
		var flow uint32
		if d, ok := ss.sess.(transport.DatagramSession); ok && d.DatagramsEnabled() {
			if flow = ss.flows.add(d, f); flow != 0 {
				ds = d
			}
		}
		s, err := ss.openWith(srv.ctx, protocol.StreamHeader{Name: t.name, Visitor: f.visitor.String(), UDP: true, Flow: flow})
		if err != nil {
			if flow != 0 {
				ss.flows.remove(flow, f)
			}
			t.log.Debug("open stream failed, trying next agent", "err", err)
			return false
		}
		st = s
		f.ss, f.session, f.ds, f.flow = ss, ss.id, ds, flow
		return true
	}) {
		return f.opened(st)
	}
	t.log.Debug("udp visitor dropped: no agent reachable", "visitor", f.visitor.String())
	f.dropQueued(DropNoAgent)
	return nil
}

// openRemote opens the flow's stream through the first node of remote
// (round robin) that takes one: its datagrams cross the cluster's link
// in frames, relayed as they are by the far node (ServeForwarded).
func (f *udpFlow) openRemote(remote []Member) net.Conn {
	t, srv := f.t, f.t.reg.srv
	var c net.Conn
	if inTurn(t, remote, func(m Member) bool {
		ctx, cancel := context.WithTimeout(srv.ctx, srv.cfg.HandshakeTimeout)
		s, err := m.OpenStream(ctx, t.name, f.visitor.String())
		cancel()
		if err != nil {
			t.log.Debug("forward to another node failed, trying the next", "err", err)
			return false
		}
		c = s
		f.session = m.ID()
		if rm, ok := m.(*remoteMember); ok {
			f.node = rm.node
		}
		return true
	}) {
		return f.opened(c)
	}
	t.log.Debug("udp visitor dropped: no node reachable", "visitor", f.visitor.String())
	f.dropQueued(DropNoAgent)
	return nil
}

// opened makes st the flow's stream; nil (st closed) when the flow
// ended meanwhile.
func (f *udpFlow) opened(st net.Conn) net.Conn {
	f.mu.Lock()
	f.st = st
	f.mu.Unlock()
	if f.closed() {
		// close ran before st was set.
		st.Close()
		return nil
	}
	return st
}

// dropQueued drops and counts the datagrams held for the agent.
func (f *udpFlow) dropQueued(reason DatagramDrop) {
	for {
		select {
		case p := <-f.q:
			f.dequeued(p)
			f.drop(reason)
		default:
			return
		}
	}
}

// writeAgent writes the visitor's datagrams to the agent until the flow
// ends or a write fails.
func (f *udpFlow) writeAgent(st net.Conn) {
	timeout := f.t.reg.srv.cfg.StatusTimeout
	var buf []byte
	for {
		var p []byte
		select {
		case <-f.done:
			return
		case p = <-f.q:
		}
		f.dequeued(p)
		if f.ds != nil {
			buf = protocol.AppendFlowDatagram(buf[:0], f.flow, p)
			// Counted before it goes, as toVisitor counts, and taken
			// back if it does not.
			f.in.Add(int64(len(p)))
			f.dgIn.Add(1)
			if err := f.ds.SendDatagram(buf); err != nil {
				f.in.Add(-int64(len(p)))
				f.dgIn.Add(-1)
				if errors.Is(err, transport.ErrDatagramTooLarge) {
					f.drop(DropTooLarge)
					continue
				}
				f.t.log.Debug("udp flow ended: send to agent failed", "visitor", f.visitor.String(), "err", err)
				return
			}
			continue
		}
		// Frames: what is queued goes in one write, up to a batch.
		buf, _ = protocol.AppendDatagramFrame(buf[:0], p)
		n, bytes := int64(1), int64(len(p))
	batch:
		for len(buf) < udpWriteBatch {
			select {
			case p = <-f.q:
				f.dequeued(p)
				buf, _ = protocol.AppendDatagramFrame(buf, p)
				n, bytes = n+1, bytes+int64(len(p))
			default:
				break batch
			}
		}
		// A write to an agent that reads nothing ends within the bound.
		st.SetWriteDeadline(time.Now().Add(timeout))
		f.in.Add(bytes)
		f.dgIn.Add(n)
		if _, err := st.Write(buf); err != nil {
			f.in.Add(-bytes)
			f.dgIn.Add(-n)
			if !f.closed() {
				f.t.log.Debug("udp flow ended: write to agent failed", "visitor", f.visitor.String(), "err", err)
			}
			return
		}
		if cap(buf) > 2*udpWriteBatch {
			buf = nil
		}
	}
}

// readAgent relays the agent's frames to the visitor until the stream
// ends; with QUIC datagrams the stream carries nothing more, and its end
// ends the flow.
func (f *udpFlow) readAgent(st net.Conn) {
	if f.ds != nil {
		var b [1]byte
		if _, err := st.Read(b[:]); err == nil {
			f.t.log.Debug("udp flow ended: the agent wrote on a flow carried in datagrams", "visitor", f.visitor.String())
		}
		return
	}
	small := make([]byte, udpSmallFrame)
	for {
		n, err := protocol.ReadDatagramFrameLen(st)
		if errors.Is(err, protocol.ErrMalformed) {
			f.t.log.Debug("udp flow ended: malformed frame from the agent", "visitor", f.visitor.String(), "err", err)
		}
		if err != nil {
			return
		}
		buf, big := small, (*[]byte)(nil)
		if n > len(small) {
			big = udpBigBufs.Get().(*[]byte)
			buf = *big
		}
		_, err = io.ReadFull(st, buf[:n])
		if err == nil {
			f.toVisitor(buf[:n])
		}
		if big != nil {
			udpBigBufs.Put(big)
		}
		if err != nil {
			return
		}
	}
}

// finish forgets the ended flow and logs it.
func (f *udpFlow) finish() {
	f.close()
	t, srv := f.t, f.t.reg.srv
	f.port.removeFlow(f)
	if f.flow != 0 {
		f.ss.flows.remove(f.flow, f)
	}
	f.dropQueued(DropQueueFull)
	if !f.ready.Load() {
		return
	}
	in, out := f.in.Load(), f.out.Load()
	if al := srv.cfg.AccessLog; al != nil {
		attrs := []slog.Attr{slog.String("tunnel", t.name), slog.String("visitor", f.visitor.String()),
			slog.Uint64("session", f.session),
			slog.Int64("datagrams_in", f.dgIn.Load()), slog.Int64("datagrams_out", f.dgOut.Load()),
			slog.Int64("bytes_in", in), slog.Int64("bytes_out", out),
			slog.Int64("dropped", f.dropped.Load()),
			slog.Duration("duration", time.Since(f.began))}
		if f.node != "" {
			attrs = append(attrs, slog.String("node", f.node))
		}
		al.LogAttrs(context.Background(), slog.LevelInfo, "udp visitor", attrs...)
	}
	// Told after the access log line is written, as for TCP visitors.
	srv.obs.UDPFlowClosed(t.name, in, out)
}

// flowDemux is a session's UDP flows carried in QUIC datagrams, by flow
// number; the session's datagrams are handed to it once its first such
// flow opens. Its zero value is ready.
type flowDemux struct {
	mu        sync.Mutex
	installed bool
	next      uint32
	flows     map[uint32]*udpFlow
}

// add gives f a flow number of the session, unique among its open flows;
// 0 when the session holds as many flows as numbers (never, in practice).
func (d *flowDemux) add(ds transport.DatagramSession, f *udpFlow) uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.flows == nil {
		d.flows = make(map[uint32]*udpFlow)
	}
	if !d.installed {
		d.installed = true
		ds.HandleDatagrams(d.handle)
	}
	for range 1 << 16 {
		d.next++
		if d.next == 0 {
			d.next++
		}
		if d.flows[d.next] == nil {
			d.flows[d.next] = f
			return d.next
		}
	}
	return 0
}

// remove forgets flow number n, if it is f's.
func (d *flowDemux) remove(n uint32, f *udpFlow) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.flows[n] == f {
		delete(d.flows, n)
	}
}

// handle takes one QUIC datagram of the session: a flow's datagram goes
// to its visitor; a probe, a datagram of an unknown kind or of an unknown
// flow is dropped. It runs on the session's receiving goroutine.
func (d *flowDemux) handle(p []byte) {
	n, payload, ok := protocol.ParseFlowDatagram(p)
	if !ok {
		return
	}
	d.mu.Lock()
	f := d.flows[n]
	d.mu.Unlock()
	if f == nil {
		return
	}
	f.toVisitor(payload)
}
