package catalog

import (
	"slices"
	"strings"
	"testing"
)

func TestParseTag(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		tag     string
		keyword string
		want    []Port
		ok      bool
		err     string
	}{
		{tag: "(diglett (tcp_port 25) (udp_port 53))", want: []Port{tcp(25, ""), udp(53, "")}, ok: true},
		{tag: "(diglett (tcp_port 25 465 587))", want: []Port{tcp(25, ""), tcp(465, ""), tcp(587, "")}, ok: true},
		{tag: "  ( diglett\t(tcp_port   80 )(udp_port 443) )  ", want: []Port{tcp(80, ""), udp(443, "")}, ok: true},
		{tag: "(diglett)", want: []Port{}, ok: true},
		{tag: "(other (tcp_port 25))", keyword: "other", want: []Port{tcp(25, "")}, ok: true},
		{tag: "(other (tcp_port 25))"},
		{tag: "web"},
		{tag: ""},
		{tag: "diglett (tcp_port 25)"},
		{tag: "(diglettx (tcp_port 25))"},
		{tag: "(proxy.enable=true)"},
		{tag: "(diglett (tcp_port 25)", ok: true, err: "missing )"},
		{tag: "(diglett (tcp_port 25", ok: true, err: "missing )"},
		{tag: "(diglett (", ok: true, err: "missing )"},
		{tag: "(diglett", ok: true, err: "missing )"},
		{tag: "(diglett (tcp_port 0))", ok: true, err: `"0"`},
		{tag: "(diglett (tcp_port 65536))", ok: true, err: `"65536"`},
		{tag: "(diglett (tcp_port -1))", ok: true, err: `"-1"`},
		{tag: "(diglett (tcp_port +25))", ok: true, err: `"+25"`},
		{tag: "(diglett (tcp_port http))", ok: true, err: `"http"`},
		{tag: "(diglett (tcp_port))", ok: true, err: "without a port"},
		{tag: "(diglett (sctp_port 25))", ok: true, err: `unknown item "sctp_port"`},
		{tag: "(diglett tcp_port 25)", ok: true, err: `unexpected "tcp_port"`},
		{tag: "(diglett (tcp_port 25)) extra", ok: true, err: `unexpected "extra"`},
		{tag: "(diglett (tcp_port 25)))", ok: true, err: `unexpected ")"`},
		{tag: "(diglett ((tcp_port 25)))", ok: true, err: `unknown item "("`},
	} {
		kw := tc.keyword
		if kw == "" {
			kw = DefaultTagKeyword
		}
		got, ok, err := ParseTag(tc.tag, kw)
		if ok != tc.ok {
			t.Errorf("ParseTag(%q, %q) ok = %v; want %v", tc.tag, kw, ok, tc.ok)
		}
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseTag(%q) = %v, %v; want an error with %q", tc.tag, got, err, tc.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ParseTag(%q) = %v, %v; want %v", tc.tag, got, err, tc.want)
		}
	}
	t.Log("checked: tags with one or more tcp_port/udp_port items, free whitespace, another keyword; other tools' tags ignored (ok=false); malformed tags with the keyword refused with a reason")
}

func TestParseTagBound(t *testing.T) {
	t.Parallel()
	tag := "(diglett (tcp_port" + strings.Repeat(" 80", maxTagPorts+1) + "))"
	if _, ok, err := ParseTag(tag, DefaultTagKeyword); !ok || err == nil {
		t.Fatalf("a tag with %d ports: ok=%v err=%v; want an error", maxTagPorts+1, ok, err)
	}
	t.Logf("checked: a tag asking for more than %d ports is refused", maxTagPorts)
}

func FuzzParseTag(f *testing.F) {
	for _, s := range []string{
		"(diglett (tcp_port 25) (udp_port 53))", "(diglett (tcp_port 25 587))", "(diglett)",
		"(diglett (tcp_port", "web", "(other (tcp_port 1))", "(diglett ((", ")))", "(diglett (udp_port 65535))",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tag string) {
		ports, ok, err := ParseTag(tag, DefaultTagKeyword)
		if !ok && (err != nil || ports != nil) {
			t.Fatalf("ParseTag(%q): ok=false with %v, %v", tag, ports, err)
		}
		if err != nil && ports != nil {
			t.Fatalf("ParseTag(%q): ports %v with error %v", tag, ports, err)
		}
		for _, p := range ports {
			if p.Port == 0 || (p.Proto != TCP && p.Proto != UDP) || p.Service != "" {
				t.Fatalf("ParseTag(%q): bad port %+v", tag, p)
			}
		}
		if ok && err == nil && !strings.Contains(tag, DefaultTagKeyword) {
			t.Fatalf("ParseTag(%q): ok without the keyword", tag)
		}
	})
}
