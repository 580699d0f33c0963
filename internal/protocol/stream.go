package protocol

import (
	"errors"
	"fmt"
	"io"
)

// StreamHeaderVersion is the first byte of every data stream header.
const StreamHeaderVersion = 1

// StreamHeader starts every data stream the gateway opens to an agent: the
// tunnel the visitor reached and the visitor's address.
type StreamHeader struct {
	Name    string // tunnel name
	Visitor string // visitor address, host:port
}

// maxStreamHeader is the largest encoded header.
const maxStreamHeader = 3 + MaxNameLen + MaxAddrLen

// AppendStreamHeader appends the encoding of h to b:
// version (1) | name length (1) | name | addr length (1) | addr.
func AppendStreamHeader(b []byte, h StreamHeader) ([]byte, error) {
	if err := ValidateName(h.Name); err != nil {
		return b, err
	}
	if len(h.Visitor) > MaxAddrLen {
		return b, fmt.Errorf("visitor address longer than %d bytes", MaxAddrLen)
	}
	b = append(b, StreamHeaderVersion, byte(len(h.Name)))
	b = append(b, h.Name...)
	b = append(b, byte(len(h.Visitor)))
	b = append(b, h.Visitor...)
	return b, nil
}

// ReadStreamHeader reads a header written by AppendStreamHeader. It reads
// exactly the header's bytes and no more.
func ReadStreamHeader(r io.Reader) (StreamHeader, error) {
	var buf [maxStreamHeader]byte
	if _, err := io.ReadFull(r, buf[:2]); err != nil {
		return StreamHeader{}, err
	}
	if buf[0] != StreamHeaderVersion {
		return StreamHeader{}, fmt.Errorf("%w: stream header version %d", ErrMalformed, buf[0])
	}
	nl := int(buf[1])
	if nl == 0 || nl > MaxNameLen {
		return StreamHeader{}, fmt.Errorf("%w: stream header name length %d", ErrMalformed, nl)
	}
	if _, err := io.ReadFull(r, buf[2:2+nl+1]); err != nil {
		return StreamHeader{}, unexpected(err)
	}
	name := string(buf[2 : 2+nl])
	if err := ValidateName(name); err != nil {
		return StreamHeader{}, fmt.Errorf("%w: stream header: %v", ErrMalformed, err)
	}
	al := int(buf[2+nl])
	if al > MaxAddrLen {
		return StreamHeader{}, fmt.Errorf("%w: stream header address length %d", ErrMalformed, al)
	}
	addr := buf[3+nl : 3+nl+al]
	if _, err := io.ReadFull(r, addr); err != nil {
		return StreamHeader{}, unexpected(err)
	}
	return StreamHeader{Name: name, Visitor: string(addr)}, nil
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
