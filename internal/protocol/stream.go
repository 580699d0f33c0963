package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// StreamHeaderVersion is the first byte of every data stream header of a
// TCP visitor; StreamHeaderVersionUDP starts the header of a UDP flow.
// Agents that predate UDP read only the first: the gateway sends the
// second only to agents that registered a UDP tunnel.
const (
	StreamHeaderVersion    = 1
	StreamHeaderVersionUDP = 2
)

// StreamHeader starts every data stream the gateway opens to an agent: the
// tunnel the visitor reached and the visitor's address.
type StreamHeader struct {
	Name    string // tunnel name
	Visitor string // visitor address, host:port
	// UDP says the stream carries one UDP flow: the datagrams of one
	// visitor address, each in a frame (AppendDatagramFrame) on the
	// stream, or, when Flow is not 0, in QUIC datagrams of the session
	// marked with Flow (AppendFlowDatagram).
	UDP  bool
	Flow uint32
}

// maxStreamHeader is the largest encoded header.
const maxStreamHeader = 3 + 4 + MaxNameLen + MaxAddrLen

// AppendStreamHeader appends the encoding of h to b. A TCP visitor's:
// version 1 | name length (1) | name | addr length (1) | addr. A UDP
// flow's: version 2 | flow (4, big endian) | name length | name | addr
// length | addr.
func AppendStreamHeader(b []byte, h StreamHeader) ([]byte, error) {
	if err := ValidateName(h.Name); err != nil {
		return b, err
	}
	if len(h.Visitor) > MaxAddrLen {
		return b, fmt.Errorf("visitor address longer than %d bytes", MaxAddrLen)
	}
	if !h.UDP && h.Flow != 0 {
		return b, errors.New("a TCP stream header has no flow")
	}
	if h.UDP {
		b = append(b, StreamHeaderVersionUDP)
		b = binary.BigEndian.AppendUint32(b, h.Flow)
	} else {
		b = append(b, StreamHeaderVersion)
	}
	b = append(b, byte(len(h.Name)))
	b = append(b, h.Name...)
	b = append(b, byte(len(h.Visitor)))
	b = append(b, h.Visitor...)
	return b, nil
}

// ReadStreamHeader reads a header written by AppendStreamHeader. It reads
// exactly the header's bytes and no more.
func ReadStreamHeader(r io.Reader) (StreamHeader, error) {
	var buf [maxStreamHeader]byte
	if _, err := io.ReadFull(r, buf[:1]); err != nil {
		return StreamHeader{}, err
	}
	var h StreamHeader
	switch buf[0] {
	case StreamHeaderVersion:
	case StreamHeaderVersionUDP:
		if _, err := io.ReadFull(r, buf[:4]); err != nil {
			return StreamHeader{}, unexpected(err)
		}
		h.UDP, h.Flow = true, binary.BigEndian.Uint32(buf[:4])
	default:
		return StreamHeader{}, fmt.Errorf("%w: stream header version %d", ErrMalformed, buf[0])
	}
	if _, err := io.ReadFull(r, buf[:1]); err != nil {
		return StreamHeader{}, unexpected(err)
	}
	nl := int(buf[0])
	if nl == 0 || nl > MaxNameLen {
		return StreamHeader{}, fmt.Errorf("%w: stream header name length %d", ErrMalformed, nl)
	}
	if _, err := io.ReadFull(r, buf[:nl+1]); err != nil {
		return StreamHeader{}, unexpected(err)
	}
	name := string(buf[:nl])
	if err := ValidateName(name); err != nil {
		return StreamHeader{}, fmt.Errorf("%w: stream header: %v", ErrMalformed, err)
	}
	al := int(buf[nl])
	if al > MaxAddrLen {
		return StreamHeader{}, fmt.Errorf("%w: stream header address length %d", ErrMalformed, al)
	}
	addr := buf[:al]
	if _, err := io.ReadFull(r, addr); err != nil {
		return StreamHeader{}, unexpected(err)
	}
	h.Name, h.Visitor = name, string(addr)
	return h, nil
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Status is the one byte an agent sends first on a data stream: whether it
// could reach the backend.
type Status byte

// Stream statuses.
const (
	StatusOK            Status = 0
	StatusRefused       Status = 1 // backend refused the connection or is unreachable
	StatusTimeout       Status = 2 // backend did not answer in time
	StatusUnknownTunnel Status = 3 // the agent does not serve this name
	StatusBusy          Status = 4 // the agent's accept queue is full
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusRefused:
		return "backend refused"
	case StatusTimeout:
		return "backend timeout"
	case StatusUnknownTunnel:
		return "unknown tunnel"
	case StatusBusy:
		return "agent busy"
	}
	return fmt.Sprintf("status(%d)", byte(s))
}

// ReadStatus reads the status byte of a data stream.
func ReadStatus(r io.Reader) (Status, error) {
	var b [1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, err
	}
	if b[0] > byte(StatusBusy) {
		return 0, fmt.Errorf("%w: stream status %d", ErrMalformed, b[0])
	}
	return Status(b[0]), nil
}
