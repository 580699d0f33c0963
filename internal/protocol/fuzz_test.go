package protocol

import (
	"bytes"
	"reflect"
	"testing"
)

// FuzzReadMessage feeds arbitrary bytes to the control-message decoder: it
// must never panic, never accept an invalid message, and what it accepts
// must survive a re-encode.
func FuzzReadMessage(f *testing.F) {
	for _, m := range []Message{
		&Hello{Version: 1, Software: "diglett"},
		&Login{Token: "s3cret"},
		&LoginOK{Identity: "anonymous"},
		&Register{Name: "example", Port: 30000, PreferPort: 30001},
		&Registered{Name: "example", Port: 30000, HTTPURL: "http://example.gw.example"},
		&Register{Name: "web", BasicAuth: &BasicAuth{User: "u", Password: "p"}, AllowIPs: []string{"10.0.0.0/8"}, H2C: true},
		&Drain{},
		&Error{Code: CodeUnauthorized, Message: "token refused"},
	} {
		var buf bytes.Buffer
		if err := WriteMessage(&buf, m); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
	}
	f.Add([]byte{byte(TypeHello), 0xff, 0xff})
	f.Add([]byte{byte(TypeRegister), 0, 2, '{', '}'})
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := ReadMessage(bytes.NewReader(in))
		if err != nil {
			return
		}
		if err := m.validate(); err != nil {
			t.Fatalf("accepted invalid message: %v", err)
		}
		var buf bytes.Buffer
		if err := WriteMessage(&buf, m); err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		m2, err := ReadMessage(&buf)
		if err != nil {
			t.Fatalf("decode of re-encoded message: %v", err)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("round trip changed the message: %#v != %#v", m, m2)
		}
	})
}

// FuzzReadStreamHeader feeds arbitrary bytes to the stream-header decoder.
func FuzzReadStreamHeader(f *testing.F) {
	b, _ := AppendStreamHeader(nil, StreamHeader{Name: "example", Visitor: "127.0.0.1:4000"})
	f.Add(b)
	f.Add([]byte{1, 1, 'a', 0})
	f.Add([]byte{1, 63})
	b, _ = AppendStreamHeader(nil, StreamHeader{Name: "dns", Visitor: "127.0.0.1:53", UDP: true, Flow: 7})
	f.Add(b)
	f.Add([]byte{2, 0, 0, 0, 0, 1, 'a', 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		h, err := ReadStreamHeader(r)
		if err != nil {
			return
		}
		if err := ValidateName(h.Name); err != nil {
			t.Fatalf("accepted bad name: %v", err)
		}
		enc, err := AppendStreamHeader(nil, h)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		if consumed := len(in) - r.Len(); !bytes.Equal(enc, in[:consumed]) {
			t.Fatalf("re-encoding differs: %x vs %x", enc, in[:consumed])
		}
	})
}
