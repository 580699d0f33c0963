package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// MaxDatagramSize is the largest datagram a UDP flow carries: the largest
// UDP payload over IPv4 (65,535 bytes less the IP and UDP headers).
const MaxDatagramSize = 65507

// DatagramFrameHeaderLen is the length prefix of a datagram in a frame on
// a flow's stream.
const DatagramFrameHeaderLen = 2

// ErrDatagramTooLarge is a datagram longer than MaxDatagramSize.
var ErrDatagramTooLarge = errors.New("datagram larger than 65507 bytes")

// AppendDatagramFrame appends p as one frame of a flow's stream: its
// length (2 bytes, big endian), then its bytes. A frame always carries a
// whole datagram, possibly an empty one.
func AppendDatagramFrame(b, p []byte) ([]byte, error) {
	if len(p) > MaxDatagramSize {
		return b, ErrDatagramTooLarge
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(p)))
	return append(b, p...), nil
}

// ReadDatagramFrame reads one frame written by AppendDatagramFrame into
// buf, which must hold MaxDatagramSize bytes, and returns the datagram's
// length. io.EOF means the stream ended cleanly between frames; a frame
// cut short is io.ErrUnexpectedEOF, and a length above MaxDatagramSize is
// malformed.
func ReadDatagramFrame(r io.Reader, buf []byte) (int, error) {
	n, err := ReadDatagramFrameLen(r)
	if err != nil {
		return 0, err
	}
	if len(buf) < n {
		return 0, fmt.Errorf("datagram frame of %d bytes does not fit a buffer of %d", n, len(buf))
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		return 0, unexpected(err)
	}
	return n, nil
}

// ReadDatagramFrameLen reads the length prefix of the next frame: the
// datagram's length, which the caller reads next. io.EOF means the stream
// ended cleanly between frames; a length above MaxDatagramSize is
// malformed.
func ReadDatagramFrameLen(r io.Reader) (int, error) {
	var h [DatagramFrameHeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, err
	}
	n := int(binary.BigEndian.Uint16(h[:]))
	if n > MaxDatagramSize {
		return 0, fmt.Errorf("%w: datagram frame of %d bytes", ErrMalformed, n)
	}
	return n, nil
}

// Kinds of QUIC datagram, the first byte of each. A probe is what an
// agent sends every keepalive interval (32 zero bytes); a flow datagram
// carries one datagram of a UDP flow.
const (
	DatagramProbe byte = 0
	DatagramFlow  byte = 1
)

// FlowDatagramOverhead is what a flow datagram adds to the UDP payload:
// its kind and its flow.
const FlowDatagramOverhead = 5

// AppendFlowDatagram appends the QUIC datagram carrying p for flow: kind
// DatagramFlow (1 byte), the flow (4 bytes, big endian), then p.
func AppendFlowDatagram(b []byte, flow uint32, p []byte) []byte {
	b = append(b, DatagramFlow)
	b = binary.BigEndian.AppendUint32(b, flow)
	return append(b, p...)
}

// ParseFlowDatagram splits a QUIC datagram into its flow and payload. ok
// is false for anything else (a probe, a kind this version does not know,
// a datagram too short or for flow 0), which the receiver drops.
func ParseFlowDatagram(d []byte) (flow uint32, payload []byte, ok bool) {
	if len(d) < FlowDatagramOverhead || d[0] != DatagramFlow {
		return 0, nil, false
	}
	flow = binary.BigEndian.Uint32(d[1:5])
	if flow == 0 {
		return 0, nil, false
	}
	return flow, d[FlowDatagramOverhead:], true
}
