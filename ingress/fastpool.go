package ingress

// The streams of fast.go's forwarding path, kept idle between requests
// per member and per tunnel, like a client's keep-alive connections.

import (
	"bufio"
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// fastIdleTimeout closes a stream left idle this long.
const fastIdleTimeout = 90 * time.Second

// fastStream is a stream to an agent that carries HTTP/1.1 requests one
// after the other.
type fastStream struct {
	net.Conn
	br    *bufio.Reader // the responses
	m     *member
	name  string      // the tunnel
	timer *time.Timer // closes the stream when idle too long; stopped in use
}

var streamReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}

func newFastStream(c net.Conn, m *member, name string) *fastStream {
	br := streamReaders.Get().(*bufio.Reader)
	br.Reset(c)
	return &fastStream{Conn: c, br: br, m: m, name: name}
}

// close closes the stream, abandoning it in both directions if abort.
func (s *fastStream) close(abort bool) {
	if abort {
		resetStream(s.Conn)
	} else {
		s.Conn.Close()
	}
	if s.br != nil {
		s.br.Reset(nil)
		streamReaders.Put(s.br)
		s.br = nil
	}
}

// takeIdle returns an idle stream of m for tunnel name, most recent first,
// or nil.
func (m *member) takeIdle(name string) *fastStream {
	m.mu.Lock()
	defer m.mu.Unlock()
	for {
		list := m.idle[name]
		if len(list) == 0 {
			return nil
		}
		s := list[len(list)-1]
		list[len(list)-1] = nil
		m.idle[name] = list[:len(list)-1]
		if s.timer.Stop() {
			return s
		}
		// Its idle timer fired: the timer closes it.
	}
}

// putIdle keeps s for the next request, or closes it if m is dropped or
// keeps enough idle streams.
func (m *member) putIdle(s *fastStream) {
	m.mu.Lock()
	if m.dropped || len(m.idle[s.name]) >= idleStreamsPerMember {
		m.mu.Unlock()
		s.close(false)
		return
	}
	if m.idle == nil {
		m.idle = make(map[string][]*fastStream)
	}
	m.idle[s.name] = append(m.idle[s.name], s)
	if s.timer == nil {
		s.timer = time.AfterFunc(fastIdleTimeout, func() { m.expire(s) })
	} else {
		s.timer.Reset(fastIdleTimeout) // stopped by takeIdle: one timer for its life
	}
	m.mu.Unlock()
}

// expire closes s, idle for too long.
func (m *member) expire(s *fastStream) {
	m.mu.Lock()
	list := m.idle[s.name]
	for i, x := range list {
		if x == s {
			m.idle[s.name] = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(m.idle[s.name]) == 0 {
		delete(m.idle, s.name)
	}
	m.mu.Unlock()
	s.close(false)
}

// closeIdle closes the idle streams of a dropped member.
func closeIdle(idle map[string][]*fastStream) {
	for _, list := range idle {
		for _, s := range list {
			if s.timer.Stop() {
				s.close(false)
			}
		}
	}
}

// alive reports whether an idle stream may carry a request: the agent has
// not closed it (its backend closed the connection) and it holds no stray
// bytes. A read with a deadline already passed answers at once.
func (s *fastStream) alive() bool {
	if s.br.Buffered() > 0 {
		return false
	}
	if s.SetReadDeadline(longAgo) != nil {
		return false
	}
	var b [1]byte
	n, err := s.Conn.Read(b[:])
	if n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	return s.SetReadDeadline(time.Time{}) == nil
}
