package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
)

func TestMessageRoundTrip(t *testing.T) {
	msgs := []Message{
		&Hello{Version: Version, Software: "diglett test"},
		&Login{Token: "s3cret"},
		&Login{},
		&LoginOK{Identity: "token-abcd"},
		&Register{Name: "example", Port: 33605},
		&Register{Name: "demo-1", PreferPort: 30001},
		&Register{Name: "web", BasicAuth: &BasicAuth{User: "alice", Password: "pa:ss word"}, AllowIPs: []string{"10.0.0.0/8", "192.0.2.7", "2001:db8::/32"}, H2C: true},
		&Registered{Name: "example", Port: 33605},
		&Registered{Name: "web", Port: 33606, HTTPURL: "http://web.gw.example:8080", HTTPSURL: "https://web.gw.example"},
		&Error{Code: CodeNameTaken, Message: `name "example" is taken`},
		&Drain{},
	}
	for i, m := range msgs {
		t.Run(fmt.Sprintf("%d-%s", i, m.Type()), func(t *testing.T) {
			var buf bytes.Buffer
			if err := WriteMessage(&buf, m); err != nil {
				t.Fatal(err)
			}
			got, err := ReadMessage(&buf)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, m) {
				t.Fatalf("got %#v, want %#v", got, m)
			}
			if buf.Len() != 0 {
				t.Fatalf("%d bytes left over", buf.Len())
			}
		})
	}
}

func frame(t Type, payload string) []byte {
	b := []byte{byte(t), 0, 0}
	binary.BigEndian.PutUint16(b[1:], uint16(len(payload)))
	return append(b, payload...)
}

func TestReadMessageRejects(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want error // nil: any error wrapping ErrMalformed
	}{
		{"unknown type", frame(99, `{}`), nil},
		{"zero type", frame(0, `{}`), nil},
		{"not json", frame(TypeHello, `hello`), nil},
		{"wrong json type", frame(TypeHello, `{"version":"1"}`), nil},
		{"version zero", frame(TypeHello, `{"version":0}`), nil},
		{"bad name", frame(TypeRegister, `{"name":"Bad_Name"}`), nil},
		{"empty name", frame(TypeRegister, `{"name":""}`), nil},
		{"port out of range", frame(TypeRegister, `{"name":"a","port":70000}`), nil},
		{"negative port", frame(TypeRegister, `{"name":"a","port":-1}`), nil},
		{"basic auth without password", frame(TypeRegister, `{"name":"a","basic_auth":{"user":"u"}}`), nil},
		{"basic auth user with colon", frame(TypeRegister, `{"name":"a","basic_auth":{"user":"u:v","password":"p"}}`), nil},
		{"basic auth user too long", frame(TypeRegister, `{"name":"a","basic_auth":{"user":"`+strings.Repeat("u", MaxCredLen+1)+`","password":"p"}}`), nil},
		{"bad allowed address", frame(TypeRegister, `{"name":"a","allow_ips":["10.0.0.0/33"]}`), nil},
		{"too many allowed addresses", frame(TypeRegister, `{"name":"a","allow_ips":[`+strings.Repeat(`"10.0.0.1",`, MaxAllowIPs)+`"10.0.0.1"]}`), nil},
		{"URL too long", frame(TypeRegistered, `{"name":"a","port":1,"http_url":"`+strings.Repeat("h", MaxURLLen+1)+`"}`), nil},
		{"token too long", frame(TypeLogin, `{"token":"`+strings.Repeat("x", MaxTokenLen+1)+`"}`), nil},
		{"error without code", frame(TypeError, `{"message":"x"}`), nil},
		{"oversized length", []byte{byte(TypeHello), 0xff, 0xff}, nil},
		{"truncated header", []byte{byte(TypeHello), 0}, io.ErrUnexpectedEOF},
		{"truncated payload", frame(TypeHello, `{"version":1}`)[:8], io.ErrUnexpectedEOF},
		{"empty", nil, io.EOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadMessage(bytes.NewReader(tt.in))
			if err == nil {
				t.Fatal("no error")
			}
			want := tt.want
			if want == nil {
				want = ErrMalformed
			}
			if !errors.Is(err, want) {
				t.Fatalf("err = %v, want %v", err, want)
			}
		})
	}
}

func TestReadMessageReadsNoMoreThanBound(t *testing.T) {
	// A peer announcing a huge payload must not make us read it.
	in := append([]byte{byte(TypeHello), 0xff, 0xff}, make([]byte, 1<<20)...)
	r := bytes.NewReader(in)
	if _, err := ReadMessage(r); !errors.Is(err, ErrMalformed) {
		t.Fatalf("err = %v", err)
	}
	if read := len(in) - r.Len(); read > 3 {
		t.Fatalf("read %d bytes of an oversized frame", read)
	}
}

func TestWriteMessageRejectsOversize(t *testing.T) {
	err := WriteMessage(io.Discard, &Login{Token: strings.Repeat("x", MaxMessageSize)})
	if err == nil {
		t.Fatal("oversized message written")
	}
}

func TestValidateName(t *testing.T) {
	good := []string{"a", "example", "demo-1", "0x", strings.Repeat("a", 63)}
	bad := []string{"", "-a", "a-", "A", "a.b", "a_b", "é", strings.Repeat("a", 64), "a b"}
	for _, n := range good {
		if err := ValidateName(n); err != nil {
			t.Errorf("ValidateName(%q) = %v", n, err)
		}
	}
	for _, n := range bad {
		if err := ValidateName(n); err == nil {
			t.Errorf("ValidateName(%q) accepted", n)
		}
	}
}

func TestStreamHeaderRoundTrip(t *testing.T) {
	for _, h := range []StreamHeader{
		{Name: "example", Visitor: "203.0.113.7:51234"},
		{Name: "x", Visitor: "[2001:db8::1]:443"},
		{Name: strings.Repeat("a", 63), Visitor: ""},
	} {
		b, err := AppendStreamHeader(nil, h)
		if err != nil {
			t.Fatal(err)
		}
		// Trailing data must be left for the stream.
		r := bytes.NewReader(append(b, "payload"...))
		got, err := ReadStreamHeader(r)
		if err != nil {
			t.Fatal(err)
		}
		if got != h {
			t.Fatalf("got %+v, want %+v", got, h)
		}
		rest, _ := io.ReadAll(r)
		if string(rest) != "payload" {
			t.Fatalf("header consumed stream data: rest %q", rest)
		}
	}
}

func TestStreamHeaderRejects(t *testing.T) {
	tests := map[string][]byte{
		"bad version":     {2, 1, 'a', 0},
		"zero name":       {1, 0, 0},
		"long name":       {1, 64},
		"bad name":        {1, 1, 'A', 0},
		"long addr":       {1, 1, 'a', 65},
		"truncated name":  {1, 5, 'a'},
		"truncated addr":  {1, 1, 'a', 5, '1'},
		"missing addrlen": {1, 1, 'a'},
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := ReadStreamHeader(bytes.NewReader(in)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	if _, err := AppendStreamHeader(nil, StreamHeader{Name: "a", Visitor: strings.Repeat("1", 65)}); err == nil {
		t.Fatal("AppendStreamHeader accepted a long address")
	}
}

func TestReadStatus(t *testing.T) {
	for s := StatusOK; s <= StatusBusy; s++ {
		got, err := ReadStatus(bytes.NewReader([]byte{byte(s)}))
		if err != nil || got != s {
			t.Fatalf("ReadStatus(%d) = %v, %v", s, got, err)
		}
	}
	if _, err := ReadStatus(bytes.NewReader([]byte{200})); !errors.Is(err, ErrMalformed) {
		t.Fatalf("unknown status: err = %v", err)
	}
}

// TestSplitFrame finds whole frames in gathered bytes, waits for the rest
// of a partial one, and refuses an oversized one from its header alone.
func TestSplitFrame(t *testing.T) {
	var b bytes.Buffer
	if err := WriteMessage(&b, &Register{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	if err := WriteMessage(&b, &Drain{}); err != nil {
		t.Fatal(err)
	}
	all := b.Bytes()
	for cut := 0; cut < len(all); cut++ {
		_, _, _, ok, err := SplitFrame(all[:cut])
		first := int(all[1])<<8 | int(all[2])
		if err != nil || ok != (cut >= 3+first) {
			t.Fatalf("%d bytes: ok %v, err %v", cut, ok, err)
		}
	}
	typ, payload, rest, ok, err := SplitFrame(all)
	if err != nil || !ok || typ != TypeRegister {
		t.Fatalf("first frame: %v %v %v", typ, ok, err)
	}
	if m, err := DecodeMessage(typ, payload); err != nil || m.(*Register).Name != "a" {
		t.Fatalf("first frame decodes to %v, %v", m, err)
	}
	typ, _, rest, ok, err = SplitFrame(rest)
	if err != nil || !ok || typ != TypeDrain || len(rest) != 0 {
		t.Fatalf("second frame: %v %v %v, %d bytes left", typ, ok, err, len(rest))
	}
	big := []byte{byte(TypeRegister), byte((MaxMessageSize + 1) >> 8), byte((MaxMessageSize + 1) & 0xff)}
	if _, _, _, _, err := SplitFrame(big); !errors.Is(err, ErrMalformed) {
		t.Fatalf("oversized header: %v, want ErrMalformed", err)
	}
}
