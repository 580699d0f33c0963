package ingress

// Finding the end of a chunked body without decoding it, so that the
// forwarding path of fast.go can pass the encoding through verbatim.

import "errors"

// Limits of what chunkScanner accepts; net/http's own readers refuse a
// chunk-size line or a trailer section longer than their 4 KiB buffer.
const (
	maxChunkLine   = 4000 // bytes of a chunk-size line, with its CRLF
	maxChunkDigits = 15   // hex digits of a chunk size: below 2^60
	maxTrailer     = 4000 // bytes of the trailer section, with its CRLFs
)

// errBadChunk is a chunked body chunkScanner refuses.
var errBadChunk = errors.New("malformed chunked encoding")

type chunkState uint8

const (
	csSize         chunkState = iota // hex digits of a chunk size
	csSizeWS                         // blanks after the size
	csExt                            // a chunk extension, after ';'
	csSizeLF                         // the LF ending a chunk-size line
	csData                           // chunk data
	csDataCR                         // the CR after chunk data
	csDataLF                         // the LF after chunk data
	csTrailerStart                   // the start of a trailer line
	csTrailerName                    // a trailer field name
	csTrailerValue                   // a trailer field value
	csTrailerLF                      // the LF ending a trailer line
	csEndLF                          // the LF of the empty line ending the body
	csDone                           // the body has ended
)

// chunkScanner follows a chunked body (RFC 9112, section 7.1) to its end:
// chunks, the last chunk and the trailer section. It is stricter than
// net/http's readers (every line ends with CRLF, sizes have at most 15 hex
// digits, trailer lines are "name: value"), so that a body it accepts is
// framed the same way by anything downstream. Its memory is fixed.
type chunkScanner struct {
	state  chunkState
	left   uint64 // bytes of chunk data left; the size while its line is read
	digits int
	line   int   // bytes of the chunk-size line, or of the trailer section
	data   int64 // bytes of chunk data seen
}

// done reports whether the body has ended.
func (s *chunkScanner) done() bool { return s.state == csDone }

// dataLeft is how many bytes of the current chunk's data are still to
// come: bytes scan takes as a whole.
func (s *chunkScanner) dataLeft() uint64 {
	if s.state == csData {
		return s.left
	}
	return 0
}

// scan follows p, the next bytes of the body. It returns how many of them
// belong to the body: all of p, or fewer if the body ends in p. After an
// error the scanner is unusable.
func (s *chunkScanner) scan(p []byte) (int, error) {
	i := 0
	for i < len(p) {
		if s.state == csData {
			n := uint64(len(p) - i)
			if n > s.left {
				n = s.left
			}
			i += int(n)
			s.left -= n
			s.data += int64(n)
			if s.left == 0 {
				s.state = csDataCR
			}
			continue
		}
		b := p[i]
		i++
		switch s.state {
		case csSize, csSizeWS, csExt, csSizeLF:
			s.line++
			if s.line > maxChunkLine {
				return i, errBadChunk
			}
		case csTrailerStart, csTrailerName, csTrailerValue, csTrailerLF, csEndLF:
			s.line++
			if s.line > maxTrailer {
				return i, errBadChunk
			}
		}
		switch s.state {
		case csSize:
			if v, ok := hexDigit(b); ok {
				if s.digits == maxChunkDigits {
					return i, errBadChunk
				}
				s.left = s.left<<4 | uint64(v)
				s.digits++
				continue
			}
			if s.digits == 0 {
				return i, errBadChunk
			}
			switch b {
			case ' ', '\t':
				s.state = csSizeWS
			case ';':
				s.state = csExt
			case '\r':
				s.state = csSizeLF
			default:
				return i, errBadChunk
			}
		case csSizeWS:
			switch b {
			case ' ', '\t':
			case ';':
				s.state = csExt
			case '\r':
				s.state = csSizeLF
			default:
				return i, errBadChunk
			}
		case csExt:
			switch {
			case b == '\r':
				s.state = csSizeLF
			case (b < ' ' && b != '\t') || b == 0x7f:
				return i, errBadChunk
			}
		case csSizeLF:
			if b != '\n' {
				return i, errBadChunk
			}
			s.line = 0
			if s.left == 0 {
				s.state = csTrailerStart
			} else {
				s.state = csData
			}
		case csDataCR:
			if b != '\r' {
				return i, errBadChunk
			}
			s.state = csDataLF
		case csDataLF:
			if b != '\n' {
				return i, errBadChunk
			}
			s.state, s.digits, s.left = csSize, 0, 0
		case csTrailerStart:
			switch {
			case b == '\r':
				s.state = csEndLF
			case isTokenByte(b):
				s.state = csTrailerName
			default:
				return i, errBadChunk
			}
		case csTrailerName:
			switch {
			case b == ':':
				s.state = csTrailerValue
			case !isTokenByte(b):
				return i, errBadChunk
			}
		case csTrailerValue:
			switch {
			case b == '\r':
				s.state = csTrailerLF
			case (b < ' ' && b != '\t') || b == 0x7f:
				return i, errBadChunk
			}
		case csTrailerLF:
			if b != '\n' {
				return i, errBadChunk
			}
			s.state = csTrailerStart
		case csEndLF:
			if b != '\n' {
				return i, errBadChunk
			}
			s.state = csDone
			return i, nil
		case csDone:
			return i - 1, nil
		}
	}
	return i, nil
}

func hexDigit(b byte) (byte, bool) {
	switch {
	case '0' <= b && b <= '9':
		return b - '0', true
	case 'a' <= b && b <= 'f':
		return b - 'a' + 10, true
	case 'A' <= b && b <= 'F':
		return b - 'A' + 10, true
	}
	return 0, false
}

// isTokenByte reports whether b may appear in a field name (RFC 9110,
// section 5.6.2).
func isTokenByte(b byte) bool {
	switch {
	case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		return true
	}
	switch b {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}
