package printable

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func TestString(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain text, é and 日本", "plain text, é and 日本"},
		{"\x1b[31mred\nforged log line", `\x1b[31mred\nforged log line`},
		{"tab\there\r\x00\x7f", `tab\there\r\x00\x7f`},
		{"bidi \u202eevil\u2028next\u0085", `bidi \u202eevil\u2028next\u0085`},
		{"bad \xff\xfe utf8", `bad \xff\xfe utf8`},
		{strings.Repeat("a", 300), strings.Repeat("a", 300)},
		{strings.Repeat("a", 301), strings.Repeat("a", 299) + "…"},
		{strings.Repeat("\n", 200), strings.Repeat(`\n`, 149) + "…"},
	} {
		got := String(tc.in, 0)
		if got != tc.want {
			t.Errorf("String(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if String(got, 0) != got {
			t.Errorf("String is not idempotent on %q", got)
		}
	}
}

func FuzzString(f *testing.F) {
	f.Add("\x1b[31mred\nforged log line", 300)
	f.Add("é\u202e\xff", 3)
	f.Fuzz(func(t *testing.T, s string, max int) {
		max = max%1000 + 1
		if max < 1 {
			max = -max + 1
		}
		got := String(s, max)
		if !utf8.ValidString(got) {
			t.Fatalf("String(%q) = %q: invalid UTF-8", s, got)
		}
		if n := utf8.RuneCountInString(got); n > max {
			t.Fatalf("String(%q, %d) is %d runes", s, max, n)
		}
		for _, r := range got {
			if r != ' ' && !unicode.IsPrint(r) {
				t.Fatalf("String(%q) = %q holds %U", s, got, r)
			}
		}
	})
}
