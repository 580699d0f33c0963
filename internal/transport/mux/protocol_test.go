package mux

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

func frame(typ uint8, flags uint16, id, length uint32, payload ...byte) []byte {
	b := make([]byte, headerSize, headerSize+len(payload))
	putHeader(b, typ, flags, id, length)
	return append(b, payload...)
}

// rawPeer starts a server session on one end of a pipe and returns the
// other end, whose reads are collected into frames.
func rawPeer(t testing.TB, cfg Config) (*Session, net.Conn, <-chan [headerSize]byte) {
	a, b := net.Pipe()
	s := Server(a, cfg)
	headers := make(chan [headerSize]byte, 1024)
	go func() {
		defer close(headers)
		var h [headerSize]byte
		for {
			if _, err := io.ReadFull(b, h[:]); err != nil {
				return
			}
			if h[1] == typeData {
				if _, err := io.CopyN(io.Discard, b, int64(binary.BigEndian.Uint32(h[8:]))); err != nil {
					return
				}
			}
			select {
			case headers <- h:
			default:
			}
		}
	}()
	t.Cleanup(func() { s.Close(); b.Close() })
	return s, b, headers
}

func TestProtocolErrors(t *testing.T) {
	cases := []struct {
		name   string
		frames [][]byte
	}{
		{"bad version", [][]byte{{1, typePing, 0, flagSYN, 0, 0, 0, 0, 0, 0, 0, 1}}},
		{"unknown type", [][]byte{frame(9, 0, 0, 0)}},
		{"id of the wrong side", [][]byte{frame(typeWindowUpdate, flagSYN, 2, 0)}},
		{"id zero", [][]byte{frame(typeWindowUpdate, flagSYN, 0, 0)}},
		{"syn on an open stream", [][]byte{frame(typeWindowUpdate, flagSYN, 1, 0), frame(typeWindowUpdate, flagSYN, 1, 0)}},
		{"data beyond the window", [][]byte{frame(typeWindowUpdate, flagSYN, 1, 0), frame(typeData, 0, 1, InitialWindow+1)}},
		{"window overflow", [][]byte{frame(typeWindowUpdate, flagSYN, 1, 0), frame(typeWindowUpdate, 0, 1, 1<<32-1)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, peer, headers := rawPeer(t, Config{})
			go func() {
				for _, f := range c.frames {
					if _, err := peer.Write(f); err != nil {
						return
					}
				}
			}()
			select {
			case <-s.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("session did not end")
			}
			if !errors.Is(s.Err(), ErrProtocol) {
				t.Fatalf("ended with %v, want a protocol error", s.Err())
			}
			for h := range headers {
				if h[1] == typeGoAway {
					if code := binary.BigEndian.Uint32(h[8:]); code != CodeProtocolError {
						t.Fatalf("go away code %d", code)
					}
					return
				}
			}
			t.Fatal("no go away sent")
		})
	}
}

// TestIgnoredFrames: frames for unknown streams are dropped, as the
// format says, and the session goes on.
func TestIgnoredFrames(t *testing.T) {
	s, peer, headers := rawPeer(t, Config{})
	for _, f := range [][]byte{
		frame(typeData, 0, 41, 3, 'a', 'b', 'c'),
		frame(typeWindowUpdate, 0, 43, 100),
		frame(typeWindowUpdate, flagRST, 45, 0),
		frame(typeData, flagFIN, 47, 0),
		frame(typePing, flagSYN, 0, 77),
	} {
		if _, err := peer.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	for h := range headers {
		if h[1] == typePing {
			if binary.BigEndian.Uint16(h[2:]) == flagACK && binary.BigEndian.Uint32(h[8:]) == 77 {
				break
			}
		}
	}
	if err := s.Err(); err != nil {
		t.Fatalf("session ended: %v", err)
	}
}

// FuzzSession feeds arbitrary bytes to a session as its peer: it must end
// or go on, never panic or hang.
func FuzzSession(f *testing.F) {
	f.Add(frame(typeWindowUpdate, flagSYN, 1, 0))
	f.Add(append(frame(typeWindowUpdate, flagSYN, 1, 0), frame(typeData, flagFIN, 1, 3, 'a', 'b', 'c')...))
	f.Add(append(frame(typeData, flagSYN, 1, 2, 'h', 'i'), frame(typeWindowUpdate, flagRST, 1, 0)...))
	f.Add(frame(typePing, flagSYN, 0, 5))
	f.Add(frame(typeGoAway, 0, 0, 2))
	f.Add(append(frame(typeWindowUpdate, flagSYN|flagFIN, 3, 1<<20), frame(typeData, 0, 3, 1<<20)...))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, b := net.Pipe()
		s := Server(a, Config{MaxIncomingStreams: 4, AcceptBacklog: 2})
		go io.Copy(io.Discard, b)
		go func() {
			// Accept and read what arrives, as an application would.
			for {
				st, err := s.AcceptStream(t.Context())
				if err != nil {
					return
				}
				go func() {
					st.SetReadDeadline(time.Now().Add(time.Second))
					io.Copy(io.Discard, st)
					st.Close()
				}()
			}
		}()
		b.SetWriteDeadline(time.Now().Add(2 * time.Second))
		b.Write(data)
		b.Close()
		select {
		case <-s.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("session did not end after its connection closed")
		}
		s.Close()
	})
}
