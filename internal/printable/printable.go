// Package printable makes text received from a peer safe to print on a
// terminal or in a plain-text log: control characters, terminal escapes,
// bidirectional overrides and invalid UTF-8 are shown escaped, and the
// length is bounded.
package printable

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxRunes is the length String cuts text to by default.
const MaxRunes = 300

// ellipsis ends text that was cut.
const ellipsis = "…"

// String returns s with every rune that is not printable (control
// characters such as ESC, newline or tab; format characters such as
// U+202E; line separators) written as a Go escape (\x1b, \n, \u202e), every
// invalid byte as \xNN, and the result cut to maxRunes runes (MaxRunes if
// maxRunes <= 0), ending with "…" when cut. Printable text, non-ASCII
// letters included, is unchanged, and String(String(s)) == String(s).
func String(s string, maxRunes int) string {
	if maxRunes <= 0 {
		maxRunes = MaxRunes
	}
	if clean(s, maxRunes) {
		return s
	}
	var b strings.Builder
	n := 0
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		var piece string
		switch {
		case r == utf8.RuneError && size == 1:
			piece = `\x` + strconv.FormatUint(uint64(s[i])|0x100, 16)[1:]
		case r == ' ' || unicode.IsPrint(r):
			piece = s[i : i+size]
		default:
			q := strconv.QuoteRune(r)
			piece = q[1 : len(q)-1]
		}
		pn := utf8.RuneCountInString(piece)
		if n+pn > maxRunes-1 && (i+size < len(s) || n+pn > maxRunes) {
			b.WriteString(ellipsis)
			return b.String()
		}
		b.WriteString(piece)
		n += pn
		i += size
	}
	return b.String()
}

// clean reports whether s is printable as is and short enough.
func clean(s string, maxRunes int) bool {
	n := 0
	for _, r := range s {
		n++
		if n > maxRunes || r == utf8.RuneError || (r != ' ' && !unicode.IsPrint(r)) {
			return false
		}
	}
	return true
}
