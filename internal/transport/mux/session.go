package mux

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Session is one multiplexed connection. Its methods are safe for
// concurrent use.
type Session struct {
	conn   net.Conn
	cfg    Config
	client bool
	flush  func() error

	done      chan struct{} // closed when the session ends
	closeOnce sync.Once
	err       error       // why it ended; set before done is closed
	recvEnded atomic.Bool // the receive loop has ended for good, for tests

	// Receive side, owned by the receive loop.
	hdr      [headerSize]byte
	rd       io.Reader    // what the loop reads payloads from: conn, or a parkReader
	lastRecv atomic.Int64 // unix nanoseconds of the last frame received
	lastWork int64        // the same, of the last frame but a ping (park.go)

	// Parking (Config.Parker; park.go).
	pmu       sync.Mutex
	parked    bool  // no loop runs: the Parker will wake one
	ending    bool  // shutdown owns the read deadline now
	lingerEnd int64 // monoNow of the deadline shutdown set, if it lingers
	wakeFn    func()
	parks     atomic.Int64 // times the loop parked, for tests

	// Write side (write.go).
	wmu        sync.Mutex
	out        []byte        // pending output
	spare      []byte        // the other buffer, while a write is under way
	writing    bool          // a writer is active
	lastTurn   int64         // monoNow when the last writer's turn began
	turnFrom   int64         // frames at the start of the writer's turn
	joined     int64         // data frames others queued during the last turn
	wclosed    bool          // no more frames are queued
	werr       error         // the write path failed
	room       chan struct{} // closed when the pending output was taken
	idle       chan struct{} // closed when the writer stops
	lazyTimer  *time.Timer   // writes frames queued without a writer
	lazyArmed  bool
	wtimer     *time.Timer  // write watchdog
	wtArmed    atomic.Bool  // wtimer is running
	writeSince atomic.Int64 // unix nanoseconds the current write started; 0: none
	batches    atomic.Int64 // connection writes, for tests
	frames     atomic.Int64 // data frames queued
	yields     atomic.Int64 // writer turns that yielded first, for tests

	// Streams.
	smu         sync.Mutex
	streams     map[uint32]*Stream
	nextID      uint32
	acceptWait  int32 // AcceptStream calls waiting on acceptSig
	numIncoming int
	acceptQ     []*Stream
	acceptSig   chan struct{} // cap 1: the accept queue is not empty; nil until an AcceptStream waits
	synOut      int           // outgoing streams not yet acknowledged
	synFreed    chan struct{} // cap 1: a slot was freed; made by the first OpenStream that waits

	// Keepalive and round-trip time (keepalive.go).
	kmu      sync.Mutex
	ktimer   *time.Timer
	pingID   uint32
	pingSent time.Time // when ping pingID went out; zero once answered
	kaPing   time.Time // when the outstanding keepalive ping went out
	kstopped bool
	rtt      atomic.Int64
}

// Client starts the client side of a session over conn (a reliable,
// ordered connection: TLS, a WebSocket). conn is closed when the session
// ends.
func Client(conn net.Conn, cfg Config) *Session { return newSession(conn, cfg, true) }

// Server starts the server side of a session over conn.
func Server(conn net.Conn, cfg Config) *Session { return newSession(conn, cfg, false) }

func newSession(conn net.Conn, cfg Config, client bool) *Session {
	cfg = cfg.withDefaults()
	s := &Session{
		conn:    conn,
		cfg:     cfg,
		client:  client,
		flush:   cfg.Flush,
		done:    make(chan struct{}),
		streams: make(map[uint32]*Stream),
	}
	if s.flush == nil {
		if f, ok := conn.(Flusher); ok {
			s.flush = f.FlushBatch
		}
	}
	if client {
		s.nextID = 1
	} else {
		s.nextID = 2
	}
	if cfg.WriteTimeout > 0 {
		s.wtimer = time.AfterFunc(time.Hour, s.writeWatch)
		s.wtimer.Stop()
	}
	s.lastRecv.Store(time.Now().UnixNano())
	s.lastWork = s.lastRecv.Load()
	s.rd = conn
	if cfg.Parker != nil {
		s.rd = parkReader{s}
		s.wakeFn = s.wake
		conn.SetReadDeadline(time.Now().Add(cfg.ParkAfter))
	}
	go s.recvLoop()
	s.startKeepalive()
	return s
}

// Done is closed when the session has ended.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err reports why the session ended, or nil while it has not.
func (s *Session) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// IsClosed reports whether the session has ended.
func (s *Session) IsClosed() bool { return s.Err() != nil }

// LocalAddr is the connection's local address.
func (s *Session) LocalAddr() net.Addr { return s.conn.LocalAddr() }

// RemoteAddr is the connection's remote address.
func (s *Session) RemoteAddr() net.Addr { return s.conn.RemoteAddr() }

// NumStreams reports the streams the session tracks: open ones, and ones
// closed by one side only.
func (s *Session) NumStreams() int {
	s.smu.Lock()
	defer s.smu.Unlock()
	return len(s.streams)
}

// RTT is the last measured round-trip time, or 0.
func (s *Session) RTT() time.Duration { return time.Duration(s.rtt.Load()) }

// Close ends the session with a GoAway of code CodeNormal.
func (s *Session) Close() error { return s.CloseWithError(CodeNormal) }

// CloseWithError sends a GoAway frame with code behind whatever is
// pending (waiting at most 250 ms for it), then closes the connection and
// every stream.
func (s *Session) CloseWithError(code uint32) error {
	s.shutdown(&GoAwayError{Code: code}, code, true)
	return nil
}

// shutdown ends the session once, for cause.
func (s *Session) shutdown(cause error, code uint32, goAway bool) {
	first := false
	s.closeOnce.Do(func() {
		first = true
		s.err = cause
		close(s.done)
		s.stopKeepalive()
		if s.wtimer != nil {
			s.wtimer.Stop()
		}
		s.wmu.Lock()
		if s.lazyTimer != nil {
			s.lazyTimer.Stop()
		}
		s.wmu.Unlock()
		linger := false
		if goAway {
			linger = s.sendGoAway(code)
		} else {
			s.closeWrites()
		}
		// After a GoAway, the receive loop reads (and drops) what the
		// peer still sends until the peer closes or closeLinger passes,
		// and closes the connection as it ends. A parked loop is started
		// again for it (or to see the connection closed).
		s.pmu.Lock()
		s.ending = true
		resume := s.parked && s.cfg.Parker.Unpark()
		if resume {
			s.parked = false
		}
		end := time.Now().Add(closeLinger)
		if linger && s.conn.SetReadDeadline(end) == nil {
			s.lingerEnd = monoNow() + int64(closeLinger)
		} else {
			s.conn.Close()
		}
		s.pmu.Unlock()
		if resume {
			go s.recvLoop()
		}
		s.smu.Lock()
		streams := s.streams
		s.streams = nil
		queued := s.acceptQ
		s.acceptQ = nil
		s.smu.Unlock()
		for _, st := range streams {
			st.sessionEnded()
		}
		for _, st := range queued {
			st.sessionEnded()
		}
	})
	if first && s.cfg.OnClose != nil {
		s.cfg.OnClose(cause)
	}
}

// OpenStream opens a stream to the peer. It waits while AcceptBacklog
// streams opened by this side are not yet acknowledged, until ctx ends.
func (s *Session) OpenStream(ctx context.Context) (*Stream, error) {
	select {
	case <-s.done:
		return nil, ErrSessionClosed
	default:
	}
	if err := s.takeSyn(ctx); err != nil {
		return nil, err
	}
	// The id is taken and the SYN queued under the write lock, so that
	// SYNs go out in the order of their ids.
	s.wmu.Lock()
	if s.wclosed {
		s.wmu.Unlock()
		s.releaseSyn()
		return nil, ErrSessionClosed
	}
	s.smu.Lock()
	if s.streams == nil || s.nextID >= 1<<32-2 { // ended, or ids exhausted
		s.smu.Unlock()
		s.wmu.Unlock()
		s.releaseSyn()
		return nil, ErrSessionClosed
	}
	id := s.nextID
	s.nextID += 2
	st := newStream(s, id, false)
	st.synPending = true
	s.streams[id] = st
	s.smu.Unlock()
	// The SYN waits for the stream's first frame (or any other batch):
	// opening and the first write cost one write of the connection. A
	// Read that would block flushes it, and so does a timer.
	s.appendHeaderLocked(typeWindowUpdate, flagSYN, id, 0)
	s.armLazyLocked()
	st.synQueued = true
	s.wmu.Unlock()
	return st, nil
}

// AcceptStream waits for the next stream opened by the peer, until ctx
// ends or the session does.
func (s *Session) AcceptStream(ctx context.Context) (*Stream, error) {
	for {
		s.smu.Lock()
		if len(s.acceptQ) > 0 {
			st := s.acceptQ[0]
			s.acceptQ[0] = nil
			s.acceptQ = s.acceptQ[1:]
			if len(s.acceptQ) == 0 {
				s.acceptQ = nil
			} else {
				signal(s.acceptSig)
			}
			if s.acceptWait == 0 && s.numIncoming >= s.cfg.MaxIncomingStreams {
				// No stream can come until one ends (a gateway's
				// session takes only its control stream): the
				// channel goes, the next wait makes it again.
				s.acceptSig = nil
			}
			s.smu.Unlock()
			st.acknowledge()
			return st, nil
		}
		if s.acceptSig == nil {
			s.acceptSig = make(chan struct{}, 1)
		}
		sig := s.acceptSig
		s.acceptWait++
		s.smu.Unlock()
		var err error
		select {
		case <-sig:
		case <-ctx.Done():
			err = ctx.Err()
		case <-s.done:
			err = ErrSessionClosed
		}
		s.smu.Lock()
		s.acceptWait--
		s.smu.Unlock()
		if err != nil {
			return nil, err
		}
	}
}

// forget drops st from the session's table.
func (s *Session) forget(st *Stream) {
	s.smu.Lock()
	if s.streams != nil && s.streams[st.id] == st {
		delete(s.streams, st.id)
		if st.inbound {
			s.numIncoming--
		}
	}
	s.smu.Unlock()
}

// takeSyn takes a slot for an outgoing stream, waiting while
// AcceptBacklog of them are not acknowledged yet, until ctx or the
// session ends.
func (s *Session) takeSyn(ctx context.Context) error {
	for {
		s.smu.Lock()
		if s.synOut < s.cfg.AcceptBacklog {
			s.synOut++
			// Slots freed together signal once: pass it on.
			more := s.synOut < s.cfg.AcceptBacklog && s.synFreed != nil
			s.smu.Unlock()
			if more {
				signal(s.synFreed)
			}
			return nil
		}
		if s.synFreed == nil {
			s.synFreed = make(chan struct{}, 1)
		}
		freed := s.synFreed
		s.smu.Unlock()
		select {
		case <-freed:
		case <-ctx.Done():
			return ctx.Err()
		case <-s.done:
			return ErrSessionClosed
		}
	}
}

// releaseSyn frees the slot an unacknowledged outgoing stream held.
func (s *Session) releaseSyn() {
	s.smu.Lock()
	if s.synOut > 0 {
		s.synOut--
	}
	freed := s.synFreed
	s.smu.Unlock()
	if freed != nil {
		signal(freed)
	}
}

// signal leaves a wake-up on ch unless one is there already; a nil ch is
// nobody to wake.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// recvLoop reads frames until the connection fails or the session ends,
// or until it parks (park.go).
func (s *Session) recvLoop() {
	if s.receive() {
		return
	}
	s.recvEnded.Store(true)
	// The connection is closed here too when shutdown left it to linger.
	s.conn.Close()
}

// receive is the loop; it reports true when it parked.
func (s *Session) receive() bool {
	for {
		if err := s.readHeader(); err != nil {
			if err == errParked {
				return true
			}
			s.shutdown(readError(err), CodeNormal, false)
			return false
		}
		now := time.Now().UnixNano()
		s.lastRecv.Store(now)
		ping := s.hdr[1] == typePing
		if !ping {
			s.lastWork = now
		}
		if err := s.handleFrame(); err != nil {
			if isProtocol(err) {
				s.cfg.Logger.Debug("multiplexer protocol error", "err", err)
				s.shutdown(err, CodeProtocolError, true)
			} else {
				s.shutdown(err, CodeNormal, false)
			}
			return false
		}
		if ping && s.cfg.Parker != nil {
			s.afterPing(now)
		}
	}
}

func readError(err error) error {
	if err == io.ErrUnexpectedEOF {
		err = io.EOF
	}
	return err
}

func (s *Session) handleFrame() error {
	h := s.hdr[:]
	if h[0] != protoVersion {
		return protocolError("version %d", h[0])
	}
	typ := h[1]
	flags := binary.BigEndian.Uint16(h[2:])
	id := binary.BigEndian.Uint32(h[4:])
	length := binary.BigEndian.Uint32(h[8:])
	switch typ {
	case typeData, typeWindowUpdate:
		return s.handleStream(typ, flags, id, length)
	case typePing:
		return s.handlePing(flags, length)
	case typeGoAway:
		return &GoAwayError{Code: length, Remote: true}
	default:
		return protocolError("frame type %d", typ)
	}
}

func (s *Session) handlePing(flags uint16, value uint32) error {
	if flags&flagSYN != 0 {
		// The answer is queued; a goroutine writes it if no writer is
		// active: the receive loop never waits for the connection.
		s.sendControl(typePing, flagACK, 0, value, false)
		return nil
	}
	if flags&flagACK != 0 {
		s.pingAnswered(value)
	}
	return nil
}

func (s *Session) handleStream(typ uint8, flags uint16, id, length uint32) error {
	var st *Stream
	if flags&flagSYN != 0 {
		var err error
		st, err = s.incoming(id)
		if err != nil {
			return err
		}
	} else {
		s.smu.Lock()
		if s.streams != nil {
			st = s.streams[id]
		}
		s.smu.Unlock()
	}
	if st == nil {
		// A stream reset or refused by this side, or one already
		// forgotten: what it carries is dropped.
		if typ == typeData && length > 0 {
			return s.discard(length)
		}
		return nil
	}
	if flags&flagACK != 0 {
		st.acked()
	}
	if flags&flagRST != 0 {
		st.peerReset()
		if typ == typeData && length > 0 {
			return s.discard(length)
		}
		return nil
	}
	if typ == typeWindowUpdate {
		if length > 0 {
			if err := st.grantSend(length); err != nil {
				return err
			}
		}
	} else if length > 0 {
		if err := st.receive(length); err != nil {
			return err
		}
	}
	if flags&flagFIN != 0 {
		st.peerFIN()
	}
	return nil
}

// incoming registers a stream the peer opened, or refuses it with a reset
// (returning a nil stream) when the accept queue or the cap is full.
func (s *Session) incoming(id uint32) (*Stream, error) {
	if id == 0 || (id%2 == 1) == s.client {
		return nil, protocolError("stream id %d of the wrong side", id)
	}
	s.smu.Lock()
	if s.streams == nil {
		s.smu.Unlock()
		return nil, nil
	}
	// Ids are not checked for order: implementations that queue frames
	// in a channel can send two SYNs out of order.
	if _, ok := s.streams[id]; ok {
		s.smu.Unlock()
		return nil, protocolError("stream id %d reused", id)
	}
	if s.numIncoming >= s.cfg.MaxIncomingStreams || len(s.acceptQ) >= s.cfg.AcceptBacklog {
		s.smu.Unlock()
		s.sendControl(typeWindowUpdate, flagRST, id, 0, false)
		return nil, nil
	}
	st := newStream(s, id, true)
	s.streams[id] = st
	s.numIncoming++
	s.acceptQ = append(s.acceptQ, st)
	sig := s.acceptSig // nil: no AcceptStream waits
	s.smu.Unlock()
	signal(sig)
	return st, nil
}

// discard reads and drops n bytes of payload.
func (s *Session) discard(n uint32) error {
	_, err := io.CopyN(io.Discard, s.rd, int64(n))
	return readError(err)
}

func isProtocol(err error) bool {
	for err != nil {
		if err == ErrProtocol {
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

// monoStart is what monoNow counts from.
var monoStart = time.Now()

// monoNow is the monotonic clock in nanoseconds: 8 bytes where a
// time.Time is 24, for a session's timestamps.
func monoNow() int64 { return int64(time.Since(monoStart)) }
