// Package mux is diglett's stream multiplexer. It speaks the yamux wire
// format exactly (12-byte frame headers, Data, WindowUpdate, Ping and GoAway
// frames, SYN/ACK/FIN/RST flags, 256 KiB initial stream windows, odd stream
// ids for the client and even ones for the server), so it interoperates with
// other yamux implementations in both directions, but it is built for few
// system calls and little idle memory:
//
//   - Frames are written by group commit: a writer appends its frames to the
//     session's pending output and, when no other goroutine is writing,
//     becomes the writer and writes everything pending with one conn.Write.
//     Under load many frames share one write; when idle a frame goes out at
//     once. There is no send goroutine.
//   - One goroutine per session reads frames and places payloads straight
//     into the streams' pooled receive buffers.
//   - Keepalive is a timer, not a goroutine.
//
// An idle session holds one goroutine and no buffers.
package mux

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Wire constants of the yamux format.
const (
	protoVersion = 0
	headerSize   = 12

	typeData         = 0
	typeWindowUpdate = 1
	typePing         = 2
	typeGoAway       = 3

	flagSYN = 1
	flagACK = 2
	flagFIN = 4
	flagRST = 8

	// InitialWindow is the receive window every stream starts with, on
	// both sides, as the format prescribes.
	InitialWindow = 256 << 10
)

// GoAway codes of the yamux format. Other values are carried as they are.
const (
	CodeNormal        uint32 = 0
	CodeProtocolError uint32 = 1
	CodeInternalError uint32 = 2
)

// Defaults for Config.
const (
	DefaultAcceptBacklog      = 256
	DefaultMaxIncomingStreams = 16384
	DefaultMaxStreamWindow    = 16 << 20
	DefaultMaxFrame           = 32 << 10
	DefaultMaxPending         = 256 << 10
)

// goAwayWait bounds how long closing a session waits to write what is
// pending and the GoAway frame.
const goAwayWait = 250 * time.Millisecond

// closeLinger bounds how long a session that sent a GoAway goes on
// reading, until the peer closes, before it closes the connection.
// Closing a socket with unread input makes the kernel send a reset, which
// the peer can meet before it reads the GoAway, and then it reports the
// reset instead of the code.
const closeLinger = time.Second

// Flusher is implemented by a connection that buffers writes: after each
// batch of frames the writer calls FlushBatch.
type Flusher interface {
	FlushBatch() error
}

// Parker watches an idle session's connection while no goroutine reads
// it (Config.Parker).
type Parker interface {
	// Park arranges for wake to be called once, on a goroutine of its
	// own, when the connection has something to read or has failed. It
	// reports false, and will not call wake, when it cannot.
	Park(wake func()) bool
	// Unpark cancels the last Park if its wake has not been started, and
	// reports whether it did.
	Unpark() bool
}

// DefaultParkAfter is Config.ParkAfter's default.
const DefaultParkAfter = time.Second

// Config tunes a session. Zero fields take the documented defaults.
type Config struct {
	// KeepAlivePeriod is how long the read side of a client session may
	// be silent before it sends a ping. A server session waits half as
	// long again, less when MaxIdleTimeout is under three periods, so
	// that its ping's answer has at least a period to come back in: while
	// its client keeps the session alive it never pings, and one pair of
	// frames crosses per period instead of two. Zero: no keepalive.
	KeepAlivePeriod time.Duration
	// MaxIdleTimeout ends the session when nothing at all was received
	// within it: a side that sent its ping after its silence must have
	// its answer, or any frame, within the rest of MaxIdleTimeout. Zero
	// or not above KeepAlivePeriod: 3×KeepAlivePeriod.
	MaxIdleTimeout time.Duration
	// WriteTimeout ends the session when one write of the connection does
	// not complete within it. Zero: no bound.
	WriteTimeout time.Duration
	// MaxIncomingStreams caps the streams opened by the peer that are
	// open at once; a stream above it is reset and the session goes on.
	// Default 16384.
	MaxIncomingStreams int
	// AcceptBacklog caps the streams waiting for AcceptStream (beyond it
	// a new stream is reset) and the streams this side opened that the
	// peer has not acknowledged (OpenStream waits). Default 256.
	AcceptBacklog int
	// MaxStreamWindow is the largest receive window a stream grows to.
	// Default 16 MiB; never below InitialWindow.
	MaxStreamWindow int
	// MaxFrame is the largest payload of a data frame this side sends.
	// Default 32 KiB.
	MaxFrame int
	// MaxPending is how much data may wait to be written before writers
	// wait for the connection (control frames never wait). Default 256 KiB.
	// A writer woken by the connection's progress adds one frame even
	// over it, so no stream's writes starve behind others.
	MaxPending int
	// Hold and Flush, when set, are called before and after each write of
	// a batch to the connection: a buffering layer under it (under TLS,
	// say) gathers what the batch's write produces and sends it with one
	// system call. When Flush is nil, a conn implementing Flusher is
	// flushed through it.
	Hold  func()
	Flush func() error
	// Parker, when set, lets the receive loop end while the session is
	// idle: once nothing but keepalives has been received for ParkAfter
	// and no frame is part-read, the loop hands the wait to Parker and
	// returns, and a new loop starts when Parker wakes it. A keepalive
	// that wakes an idle session is answered and the loop parks again at
	// once. The connection's reads must be resumable after a read
	// deadline passes (TLS over TCP's are), and its read deadline is the
	// session's.
	Parker Parker
	// ParkAfter is how long a session with a Parker is idle (silent, or
	// receiving only keepalives) before its receive loop parks. Default 1s.
	ParkAfter time.Duration
	// OnClose, when set, is called once when the session ends, with why.
	// It must not block.
	OnClose func(err error)
	// Logger receives debug records about protocol errors. Default: none.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.KeepAlivePeriod > 0 && c.MaxIdleTimeout <= c.KeepAlivePeriod {
		c.MaxIdleTimeout = 3 * c.KeepAlivePeriod
	}
	if c.MaxIncomingStreams <= 0 {
		c.MaxIncomingStreams = DefaultMaxIncomingStreams
	}
	if c.AcceptBacklog <= 0 {
		c.AcceptBacklog = DefaultAcceptBacklog
	}
	if c.MaxStreamWindow <= 0 {
		c.MaxStreamWindow = DefaultMaxStreamWindow
	}
	c.MaxStreamWindow = min(max(c.MaxStreamWindow, InitialWindow), 1<<30)
	if c.MaxFrame <= 0 {
		c.MaxFrame = DefaultMaxFrame
	}
	c.MaxFrame = min(max(c.MaxFrame, 1024), 1<<20)
	if c.MaxPending <= 0 {
		c.MaxPending = DefaultMaxPending
	}
	if c.ParkAfter <= 0 {
		c.ParkAfter = DefaultParkAfter
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Errors of sessions and streams.
var (
	// ErrSessionClosed is returned by operations on a session that ended.
	ErrSessionClosed = errors.New("session closed")
	// ErrStreamReset is returned by operations on a stream reset by
	// either side.
	ErrStreamReset = errors.New("stream reset")
	// ErrStreamClosed is returned by writes after CloseWrite or Close and
	// by reads after Close.
	ErrStreamClosed = errors.New("stream closed")
	// ErrTapped is returned by Reads on a stream whose tap took a
	// payload, until ClearTap (tap.go).
	ErrTapped = errors.New("stream data taken by its tap")
	// ErrWouldBlock is ReadNow's answer where Read would wait.
	ErrWouldBlock = errors.New("nothing to read yet")
	// ErrKeepAliveTimeout ends a session whose peer did not answer a
	// keepalive ping in time.
	ErrKeepAliveTimeout = errors.New("keepalive timeout")
	// ErrWriteTimeout ends a session whose connection did not take a write
	// in time.
	ErrWriteTimeout = errors.New("connection write timeout")
	// ErrProtocol ends a session whose peer broke the protocol; it is
	// wrapped with the detail.
	ErrProtocol = errors.New("protocol error")
	// errWriteBacklog ends a session whose peer makes it queue control
	// frames without reading them.
	errWriteBacklog = errors.New("write backlog overflow")
)

// GoAwayError ends a session closed with a GoAway frame: sent by the peer
// (Remote) or by this side.
type GoAwayError struct {
	Code   uint32
	Remote bool
}

func (e *GoAwayError) Error() string {
	who := "local"
	if e.Remote {
		who = "remote"
	}
	return fmt.Sprintf("%v: %s go away (code %d)", ErrSessionClosed, who, e.Code)
}

// Unwrap makes a GoAwayError an ErrSessionClosed.
func (e *GoAwayError) Unwrap() error { return ErrSessionClosed }

func protocolError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
}
