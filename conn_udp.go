package diglett

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/transport"
)

// flowQueueLen bounds the datagrams from the visitor that wait for a UDP
// Conn's Read in QUIC-datagram mode; more are dropped and counted.
const flowQueueLen = 64

// maxKeptFrameBuffer is the largest write buffer a flow in frame mode
// keeps between datagrams; a larger one is let go after its datagram.
const maxKeptFrameBuffer = 16 << 10

var (
	errNoHalfClose = errors.New("a UDP flow has no half-close: close it")
	errFlowEnded   = errors.New("udp flow ended by the gateway")
)

// udpFlow is what makes a Conn a UDP flow: the datagrams travel in frames
// on its stream (sess nil: TLS + multiplexer, WebSocket), or as QUIC
// datagrams of the session marked with id, fed to queue by the session's
// flowTable.
type udpFlow struct {
	// Frame mode: the frame being read (a Read cut short by a deadline
	// resumes it) and the frame being written.
	rmu  sync.Mutex
	rhdr [protocol.DatagramFrameHeaderLen]byte
	rnh  int // header bytes read
	rbuf []byte
	rgot int   // datagram bytes read
	rerr error // a malformed frame: the flow is over
	wmu  sync.Mutex
	wbuf []byte

	// QUIC-datagram mode.
	id    uint32
	sess  transport.DatagramSession
	queue chan []byte
	done  chan struct{} // closed when the Conn is closed
	ended chan struct{} // closed when the gateway's side of the stream ended
	rdl   deadline
	wdl   atomic.Int64 // write deadline, Unix nanoseconds; 0: none

	dropped atomic.Uint64
	log     *slog.Logger
}

// queued reports whether f is a flow in QUIC-datagram mode; false for nil.
func (f *udpFlow) queued() bool { return f != nil && f.sess != nil }

// Dropped is how many datagrams of the flow the agent dropped: too large
// for the QUIC path (written by Write), or arriving from the visitor while
// 64 waited unread. 0 for a TCP visitor's Conn and in frame mode, where
// nothing is dropped.
func (c *Conn) Dropped() uint64 {
	if c.udp == nil {
		return 0
	}
	return c.udp.dropped.Load()
}

func (f *udpFlow) read(st io.Reader, p []byte) (int, error) {
	if f.sess != nil {
		return f.readQueue(p)
	}
	return f.readFrame(st, p)
}

// next is read without a buffer of the caller's: the next datagram itself,
// valid until the next call. The forwarder's relay reads with it, so that
// a flow needs no buffer of the largest datagram's size for that way.
func (f *udpFlow) next(st io.Reader) ([]byte, error) {
	var d []byte
	var err error
	if f.sess != nil {
		_, err = f.readQueueFunc(func(q []byte) int { d = q; return len(q) })
	} else {
		_, err = f.readFrameFunc(st, func(q []byte) int { d = q; return len(q) })
	}
	return d, err
}

func (f *udpFlow) write(st io.Writer, p []byte) (int, error) {
	if len(p) > protocol.MaxDatagramSize {
		return 0, protocol.ErrDatagramTooLarge
	}
	if f.sess != nil {
		return f.send(p)
	}
	f.wmu.Lock()
	defer f.wmu.Unlock()
	f.wbuf, _ = protocol.AppendDatagramFrame(f.wbuf[:0], p)
	_, err := st.Write(f.wbuf)
	if cap(f.wbuf) > maxKeptFrameBuffer {
		f.wbuf = nil
	}
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// readFrame reads the next datagram frame of the stream into p. A read
// that fails midway (a deadline) keeps what it read, and the next one
// goes on from there.
func (f *udpFlow) readFrame(st io.Reader, p []byte) (int, error) {
	return f.readFrameFunc(st, func(d []byte) int { return copy(p, d) })
}

// readFrameFunc reads the next frame and gives its datagram to take,
// whose result it returns.
func (f *udpFlow) readFrameFunc(st io.Reader, take func([]byte) int) (int, error) {
	f.rmu.Lock()
	defer f.rmu.Unlock()
	if f.rerr != nil {
		return 0, f.rerr
	}
	for f.rnh < len(f.rhdr) {
		n, err := st.Read(f.rhdr[f.rnh:])
		f.rnh += n
		if f.rnh == len(f.rhdr) {
			size := int(binary.BigEndian.Uint16(f.rhdr[:]))
			if size > protocol.MaxDatagramSize {
				f.rerr = fmt.Errorf("%w: datagram frame of %d bytes", protocol.ErrMalformed, size)
				return 0, f.rerr
			}
			if cap(f.rbuf) < size || cap(f.rbuf) > maxKeptFrameBuffer {
				f.rbuf = make([]byte, size)
			}
			f.rbuf, f.rgot = f.rbuf[:size], 0
			break
		}
		if err != nil {
			if err == io.EOF && f.rnh > 0 {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
	}
	for f.rgot < len(f.rbuf) {
		n, err := st.Read(f.rbuf[f.rgot:])
		f.rgot += n
		if f.rgot == len(f.rbuf) {
			break
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
	}
	f.rnh = 0
	return take(f.rbuf), nil
}

// readQueue returns the next datagram the session's flowTable queued.
func (f *udpFlow) readQueue(p []byte) (int, error) {
	return f.readQueueFunc(func(d []byte) int { return copy(p, d) })
}

// readQueueFunc takes the next queued datagram and gives it to take,
// whose result it returns.
func (f *udpFlow) readQueueFunc(take func([]byte) int) (int, error) {
	expired := f.rdl.wait()
	select {
	case <-expired:
		return 0, os.ErrDeadlineExceeded
	case <-f.done:
		return 0, net.ErrClosed
	default:
	}
	select {
	case d := <-f.queue:
		return take(d), nil
	case <-f.done:
		return 0, net.ErrClosed
	case <-expired:
		return 0, os.ErrDeadlineExceeded
	case <-f.ended:
		select {
		case d := <-f.queue:
			return take(d), nil
		default:
			return 0, io.EOF
		}
	}
}

// send sends p as one QUIC datagram of the flow; one too large for the
// path is dropped and counted.
func (f *udpFlow) send(p []byte) (int, error) {
	select {
	case <-f.done:
		return 0, net.ErrClosed
	case <-f.ended:
		return 0, errFlowEnded
	default:
	}
	if dl := f.wdl.Load(); dl != 0 && time.Now().UnixNano() >= dl {
		return 0, os.ErrDeadlineExceeded
	}
	d := protocol.AppendFlowDatagram(make([]byte, 0, protocol.FlowDatagramOverhead+len(p)), f.id, p)
	if err := f.sess.SendDatagram(d); err != nil {
		if errors.Is(err, transport.ErrDatagramTooLarge) {
			f.dropped.Add(1)
			f.log.Debug("datagram dropped: too large for the QUIC path", "bytes", len(p), "err", err)
			return len(p), nil
		}
		return 0, err
	}
	return len(p), nil
}

func (f *udpFlow) setReadDeadline(t time.Time) { f.rdl.set(t) }

func (f *udpFlow) setWriteDeadline(t time.Time) {
	if t.IsZero() {
		f.wdl.Store(0)
		return
	}
	f.wdl.Store(t.UnixNano())
}

// watch reads the flow's stream, which carries nothing after the header
// in QUIC-datagram mode, until it ends: the gateway closed the flow, the
// Conn was closed, or the session ended.
func (f *udpFlow) watch(st io.Reader) {
	io.Copy(io.Discard, st)
	close(f.ended)
}

// flowTable is a session's UDP flows in QUIC-datagram mode, by flow
// number: it hands each of the session's datagrams to its flow.
type flowTable struct {
	once  sync.Once
	mu    sync.RWMutex
	flows map[uint32]*udpFlow
}

// add installs the table as sess's datagram handler (once) and adds f;
// false when the flow number is taken.
func (t *flowTable) add(sess transport.DatagramSession, f *udpFlow) bool {
	t.once.Do(func() {
		t.flows = make(map[uint32]*udpFlow)
		sess.HandleDatagrams(t.deliver)
	})
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.flows[f.id]; ok {
		return false
	}
	t.flows[f.id] = f
	return true
}

func (t *flowTable) remove(f *udpFlow) {
	t.mu.Lock()
	if t.flows[f.id] == f {
		delete(t.flows, f.id)
	}
	t.mu.Unlock()
}

// deliver queues d, a datagram of the session, on its flow; it drops
// probes, datagrams of kinds it does not know and those of unknown flows.
func (t *flowTable) deliver(d []byte) {
	id, payload, ok := protocol.ParseFlowDatagram(d)
	if !ok {
		return
	}
	t.mu.RLock()
	f := t.flows[id]
	t.mu.RUnlock()
	if f == nil {
		return
	}
	select {
	case f.queue <- payload:
	default:
		f.dropped.Add(1)
	}
}

// attachUDP makes c, the Conn of a stream whose header is h, a UDP flow
// of ls. The flow is in the session's table before the status is sent:
// the gateway sends datagrams only after it.
func (ls *linkSession) attachUDP(c *Conn, h protocol.StreamHeader, log *slog.Logger) error {
	f := &udpFlow{log: log}
	c.udp = f
	if h.Flow == 0 {
		return nil
	}
	ds, ok := ls.sess.(transport.DatagramSession)
	if !ok || !ds.DatagramsEnabled() {
		return fmt.Errorf("flow %d in QUIC datagrams on a session without them", h.Flow)
	}
	f.id, f.sess = h.Flow, ds
	f.queue = make(chan []byte, flowQueueLen)
	f.done, f.ended = make(chan struct{}), make(chan struct{})
	f.rdl = makeDeadline()
	if !ls.flows.add(ds, f) {
		c.udp = &udpFlow{log: log} // not in the table: nothing to remove
		return fmt.Errorf("flow %d is already open", h.Flow)
	}
	closed := c.closed
	c.closed = func() {
		ls.flows.remove(f)
		close(f.done)
		closed()
	}
	return nil
}

// deadline is a settable deadline whose expiry closes a channel (as
// net.Pipe's).
type deadline struct {
	mu     sync.Mutex
	timer  *time.Timer
	cancel chan struct{} // closed once the deadline has passed
}

func makeDeadline() deadline { return deadline{cancel: make(chan struct{})} }

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.cancel // the timer fired: wait until it closed cancel
	}
	d.timer = nil
	closed := isClosed(d.cancel)
	if t.IsZero() {
		if closed {
			d.cancel = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.cancel = make(chan struct{})
		}
		cancel := d.cancel
		d.timer = time.AfterFunc(dur, func() { close(cancel) })
		return
	}
	if !closed {
		close(d.cancel)
	}
}

// wait is closed once the deadline has passed.
func (d *deadline) wait() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
