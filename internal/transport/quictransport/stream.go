package quictransport

import (
	"errors"
	"net"
	"os"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/diglett/diglett/internal/transport"
)

// Stream error codes, sent to the peer when a side stops a direction of a
// stream early.
const (
	// codeStreamClosed: Close stopped reading (STOP_SENDING); the peer's
	// writes fail.
	codeStreamClosed quic.StreamErrorCode = 0
	// codeStreamReset: Reset abandoned both directions.
	codeStreamReset quic.StreamErrorCode = 1
)

// stream adapts a quic-go stream to transport.Stream. quic-go's Close ends
// only the sending direction and must not run concurrently with Write;
// stream gives Close its net.Conn meaning (both directions, unblocking a
// Write in progress) and keeps CloseWrite for the half-close.
type stream struct {
	qs   *quic.Stream
	conn *quic.Conn

	// wmu is held by Write, so that quic-go's Close never runs during one.
	wmu sync.Mutex
	// mu guards sendClosed and setting the write deadline, so that a
	// deadline set while closing cannot undo the one closeSend uses to
	// unblock a Write.
	mu         sync.Mutex
	sendClosed bool
}

var _ transport.Stream = (*stream)(nil)

func newStream(qs *quic.Stream, conn *quic.Conn) *stream {
	return &stream{qs: qs, conn: conn}
}

// Read reads data. It returns io.EOF after the peer's CloseWrite or Close,
// once all the data before it was read, and an error (*quic.StreamError
// with Remote set) when the peer reset the stream.
func (s *stream) Read(p []byte) (int, error) {
	n, err := s.qs.Read(p)
	if err != nil {
		err = localErr(err)
	}
	return n, err
}

// Write writes data. Concurrent Writes are serialized.
func (s *stream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	n, err := s.qs.Write(p)
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) && s.isSendClosed() {
			return n, net.ErrClosed // the deadline closeSend set
		}
		err = localErr(err)
	}
	return n, err
}

// localErr turns the errors of a direction this side closed into
// net.ErrClosed, as net.Conn does; the peer's reset and deadlines pass
// through.
func localErr(err error) error {
	var se *quic.StreamError
	if errors.As(err, &se) && !se.Remote || errors.Is(err, quic.ErrStreamClosed) {
		return net.ErrClosed
	}
	return err
}

func (s *stream) isSendClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sendClosed
}

// closeSend sends FIN after the data already written, which stays
// deliverable. A Write in progress is ended first: a past write deadline
// unblocks it.
func (s *stream) closeSend() error {
	s.mu.Lock()
	if s.sendClosed {
		s.mu.Unlock()
		return nil
	}
	s.sendClosed = true
	s.qs.SetWriteDeadline(time.Unix(1, 0))
	s.mu.Unlock()
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.qs.Close()
}

// CloseWrite sends EOF to the peer after the data already written; reads
// go on. A Write in progress fails.
func (s *stream) CloseWrite() error { return s.closeSend() }

// Close sends EOF after the data already written, which stays deliverable,
// and stops reading: the peer's further writes fail. Reads and writes in
// progress fail with net.ErrClosed.
func (s *stream) Close() error {
	// quic-go's Close fails only when the sending direction was already
	// reset (by Reset, or by the peer's Close): it is closed either way.
	s.closeSend()
	s.qs.CancelRead(codeStreamClosed)
	return nil
}

// Reset abandons both directions at once: the peer's reads and writes
// fail, possibly before it read the data sent before.
func (s *stream) Reset() error {
	s.mu.Lock()
	s.sendClosed = true
	s.mu.Unlock()
	s.qs.CancelWrite(codeStreamReset)
	s.qs.CancelRead(codeStreamReset)
	return nil
}

func (s *stream) LocalAddr() net.Addr  { return s.conn.LocalAddr() }
func (s *stream) RemoteAddr() net.Addr { return s.conn.RemoteAddr() }

func (s *stream) SetDeadline(t time.Time) error {
	s.qs.SetReadDeadline(t)
	return s.SetWriteDeadline(t)
}

func (s *stream) SetReadDeadline(t time.Time) error { return s.qs.SetReadDeadline(t) }

func (s *stream) SetWriteDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.sendClosed {
		s.qs.SetWriteDeadline(t)
	}
	return nil
}
