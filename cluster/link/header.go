package link

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/diglett/diglett/internal/protocol"
)

// HeaderVersion is the version byte of the stream header this package
// writes and reads.
const HeaderVersion = 1

// MaxHeaderSize bounds an encoded stream header, its length prefix
// included: a longer one is refused before its body is read.
const MaxHeaderSize = 4 << 10

// ErrMalformedHeader is a stream header that is not one this package
// writes: a wrong version, a length over MaxHeaderSize, a field that does
// not fit, a bad tunnel name.
var ErrMalformedHeader = errors.New("malformed link header")

// Header is what a forwarded stream is for: it is the first thing on
// every stream a peer opens.
type Header struct {
	Tunnel  string // the tunnel's name
	Visitor string // the visitor's address, host:port
}

// The encoding:
//
//	length (2, big endian: the bytes after it, at most MaxHeaderSize-2)
//	version (1) | tunnel length (2) | tunnel | visitor length (2) | visitor
//
// Every field is bounded by the length; nothing may follow the visitor.

func (h Header) validate() error {
	if err := protocol.ValidateName(h.Tunnel); err != nil {
		return fmt.Errorf("tunnel: %w", err)
	}
	if len(h.Visitor) > protocol.MaxAddrLen {
		return fmt.Errorf("visitor address longer than %d bytes", protocol.MaxAddrLen)
	}
	return nil
}

// AppendHeader appends the encoding of h to b.
func AppendHeader(b []byte, h Header) ([]byte, error) {
	if err := h.validate(); err != nil {
		return b, fmt.Errorf("link header: %w", err)
	}
	n := 1 + 2 + len(h.Tunnel) + 2 + len(h.Visitor)
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	b = append(b, HeaderVersion)
	b = binary.BigEndian.AppendUint16(b, uint16(len(h.Tunnel)))
	b = append(b, h.Tunnel...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(h.Visitor)))
	b = append(b, h.Visitor...)
	return b, nil
}

// ReadHeader reads one header written by AppendHeader, exactly its bytes
// and no more. A header that is not well formed is an error wrapping
// ErrMalformedHeader; one cut short is io.ErrUnexpectedEOF (io.EOF when
// nothing came at all).
func ReadHeader(r io.Reader) (Header, error) {
	var pre [2]byte
	if _, err := io.ReadFull(r, pre[:]); err != nil {
		return Header{}, err
	}
	n := int(binary.BigEndian.Uint16(pre[:]))
	if n > MaxHeaderSize-2 {
		return Header{}, fmt.Errorf("%w: %d bytes, more than %d", ErrMalformedHeader, n+2, MaxHeaderSize)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Header{}, err
	}
	return parseBody(body)
}

// parseBody decodes what follows the length prefix.
func parseBody(b []byte) (Header, error) {
	if len(b) < 1 {
		return Header{}, fmt.Errorf("%w: empty", ErrMalformedHeader)
	}
	if b[0] != HeaderVersion {
		return Header{}, fmt.Errorf("%w: version %d, want %d", ErrMalformedHeader, b[0], HeaderVersion)
	}
	b = b[1:]
	tunnel, b, ok := field(b)
	if !ok {
		return Header{}, fmt.Errorf("%w: tunnel field does not fit", ErrMalformedHeader)
	}
	visitor, b, ok := field(b)
	if !ok {
		return Header{}, fmt.Errorf("%w: visitor field does not fit", ErrMalformedHeader)
	}
	if len(b) != 0 {
		return Header{}, fmt.Errorf("%w: %d bytes after the last field", ErrMalformedHeader, len(b))
	}
	h := Header{Tunnel: string(tunnel), Visitor: string(visitor)}
	if err := h.validate(); err != nil {
		return Header{}, fmt.Errorf("%w: %v", ErrMalformedHeader, err)
	}
	return h, nil
}

// field splits a length-prefixed field off b.
func field(b []byte) (value, rest []byte, ok bool) {
	if len(b) < 2 {
		return nil, nil, false
	}
	n := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if n > len(b) {
		return nil, nil, false
	}
	return b[:n], b[n:], true
}
