package protocol

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestUDPStreamHeaderRoundTrip(t *testing.T) {
	for _, h := range []StreamHeader{
		{Name: "dns", Visitor: "192.0.2.7:5353", UDP: true, Flow: 0},
		{Name: "wg", Visitor: "[2001:db8::1]:51820", UDP: true, Flow: 0xfedcba98},
		{Name: "web", Visitor: "192.0.2.7:80"},
	} {
		b, err := AppendStreamHeader(nil, h)
		if err != nil {
			t.Fatal(err)
		}
		r := bytes.NewReader(append(b, "after"...))
		got, err := ReadStreamHeader(r)
		if err != nil {
			t.Fatalf("%+v: %v", h, err)
		}
		if got != h {
			t.Fatalf("read %+v, wrote %+v", got, h)
		}
		rest, _ := io.ReadAll(r)
		if string(rest) != "after" {
			t.Fatalf("%+v: header read %q too far", h, rest)
		}
		if want := byte(StreamHeaderVersion); h.UDP {
			if b[0] != StreamHeaderVersionUDP {
				t.Fatalf("UDP header starts with %d", b[0])
			}
		} else if b[0] != want {
			t.Fatalf("TCP header starts with %d, want %d (agents that predate UDP read only it)", b[0], want)
		}
	}
	if _, err := AppendStreamHeader(nil, StreamHeader{Name: "web", Flow: 3}); err == nil {
		t.Fatal("a TCP header with a flow was encoded")
	}
	// Cut anywhere, a UDP header is an error, never a short success.
	full, _ := AppendStreamHeader(nil, StreamHeader{Name: "dns", Visitor: "192.0.2.7:53", UDP: true, Flow: 9})
	for i := 1; i < len(full); i++ {
		if _, err := ReadStreamHeader(bytes.NewReader(full[:i])); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("header cut at %d: %v, want unexpected EOF", i, err)
		}
	}
}

func TestDatagramFrames(t *testing.T) {
	var b []byte
	msgs := [][]byte{{}, []byte("one"), bytes.Repeat([]byte{7}, MaxDatagramSize)}
	for _, m := range msgs {
		var err error
		if b, err = AppendDatagramFrame(b, m); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := AppendDatagramFrame(nil, make([]byte, MaxDatagramSize+1)); !errors.Is(err, ErrDatagramTooLarge) {
		t.Fatalf("oversized datagram: %v", err)
	}
	r := bytes.NewReader(b)
	buf := make([]byte, MaxDatagramSize)
	for i, m := range msgs {
		n, err := ReadDatagramFrame(r, buf)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if !bytes.Equal(buf[:n], m) {
			t.Fatalf("frame %d: %d bytes, want %d", i, n, len(m))
		}
	}
	if _, err := ReadDatagramFrame(r, buf); err != io.EOF {
		t.Fatalf("after the last frame: %v, want EOF", err)
	}
	if _, err := ReadDatagramFrame(bytes.NewReader([]byte{0xff, 0xff}), buf); !errors.Is(err, ErrMalformed) {
		t.Fatalf("length 65535: %v, want malformed", err)
	}
	if _, err := ReadDatagramFrame(bytes.NewReader([]byte{0, 5, 'a'}), buf); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("cut frame: %v, want unexpected EOF", err)
	}
}

func TestFlowDatagrams(t *testing.T) {
	d := AppendFlowDatagram(nil, 42, []byte("payload"))
	if len(d) != FlowDatagramOverhead+7 {
		t.Fatalf("datagram of %d bytes", len(d))
	}
	flow, p, ok := ParseFlowDatagram(d)
	if !ok || flow != 42 || string(p) != "payload" {
		t.Fatalf("parsed %d %q %v", flow, p, ok)
	}
	for name, d := range map[string][]byte{
		"probe":        make([]byte, 32),
		"unknown kind": {9, 0, 0, 0, 1, 'x'},
		"short":        {DatagramFlow, 0, 0},
		"flow 0":       AppendFlowDatagram(nil, 0, []byte("x")),
	} {
		if _, _, ok := ParseFlowDatagram(d); ok {
			t.Fatalf("%s parsed as a flow datagram", name)
		}
	}
}

func FuzzFlowDatagram(f *testing.F) {
	f.Add([]byte{1, 0, 0, 0, 1})
	f.Add(make([]byte, 32))
	f.Fuzz(func(t *testing.T, d []byte) {
		flow, p, ok := ParseFlowDatagram(d)
		if ok && !bytes.Equal(AppendFlowDatagram(nil, flow, p), d) {
			t.Fatal("parse and append disagree")
		}
	})
}
