package httpguard

import "bytes"

// The scanner is a byte-at-a-time state machine over a visitor's side of an
// HTTP/1.x connection. It frames requests exactly as net/http's server does
// (request line and header fields as net/textproto reads them, bodies as
// net/http's transfer and chunked readers read them), because its only use
// is to tell the handler of the n-th request what that request's header
// block held. Where it cannot be sure to frame as the server does, it stops
// (pass-through): the server stays the authority and the scanner only adds
// refusals. It keeps no buffer: its memory is the fixed size of scanner.

// Limits below net/http's own (4096 bytes, its read buffer): a longer chunk
// line or trailer section fails the body in the server anyway.
const (
	maxChunkLine  = 4000 // bytes of a chunk-size line, without its CRLF
	maxTrailer    = 4000 // bytes of a trailer section, with its CRLFs
	skipAfterPOST = 4    // leading CR or LF bytes the server drops after a POST
)

type scanState uint8

const (
	stStart         scanState = iota // before a request line
	stMethod                         // request line, up to the first space
	stTarget                         // request line, up to the second space
	stProto                          // request line, the rest
	stLineStart                      // start of a header field line
	stLineCR                         // a CR at the start of a header field line
	stName                           // field name, up to the colon
	stValue                          // field value, up to LF
	stBody                           // Content-Length body
	stChunkSize                      // hex digits of a chunk-size line
	stChunkWS                        // blanks after the chunk size
	stChunkExt                       // chunk extension, after ';'
	stChunkSizeCR                    // CR ending a chunk-size line
	stChunkData                      // chunk data
	stChunkDataCR                    // CR after chunk data
	stChunkDataLF                    // LF after chunk data
	stTrailerStart                   // start of a trailer line
	stTrailerEndCR                   // CR of the empty line ending the trailer
	stTrailerLine                    // a trailer field line
	stTrailerLineCR                  // CR ending a trailer field line
	stStopped                        // pass-through: framing not followed
	stFlagged                        // a request was refused: nothing more to follow
)

// Kinds of header field.
const (
	fieldOther = iota
	fieldContentLength
	fieldTransferEncoding
)

// States of a field value's parse.
const (
	valLead  = iota // blanks before the value
	valBody         // digits of a length, or letters of "chunked"
	valTrail        // blanks (and the line's CR) after the value
	valBad          // not a plain length, or not "chunked"
)

const maxContentLength = 1<<63 - 1 // net/http parses lengths into 63 bits

// request is what the scanner learns of the request in progress.
type request struct {
	method    [7]byte // first bytes of the method
	methodLen int
	target0   byte // first byte of the request target
	targetLen int
	proto     [8]byte // first bytes of the protocol version
	protoLen  int
	protoCR   bool // the request line ended with CRLF

	post, http10, optionsStar, pri bool // from the request line

	folded  bool // an obsolete folded line
	clCount int
	clBad   bool
	clValue uint64
	teCount int
	teBad   bool // a Transfer-Encoding other than "chunked"

	// The field line in progress.
	nameLen        int
	nameCL, nameTE bool // the name so far is a prefix of Content-Length, Transfer-Encoding
	field          int
	val            int // valLead...valBad
	valNum         uint64
	valLen         int
}

type scanner struct {
	state     scanState
	skip      int  // CR or LF bytes still to drop before the request line
	lastPOST  bool // the previous request was a POST
	req       request
	remaining uint64 // bytes of body or chunk data to skip; the chunk size while parsed
	digits    int    // hex digits of the chunk size
	lineLen   int    // bytes of the chunk-size line or of the trailer so far

	headers int   // header blocks seen to their end
	visible int   // of them, requests the server hands to its Handler
	flagAt  int   // numbering of visible: the first refused request
	flagErr error // why; nil if none
}

// active reports whether the scanner still follows the framing.
func (s *scanner) active() bool { return s.state != stStopped && s.state != stFlagged }

// verdict returns the sentinel error refusing the n-th visible request, or
// nil. A refusal is sticky: it also refuses every later request.
func (s *scanner) verdict(n int) error {
	if s.flagErr == nil || n < s.flagAt {
		return nil
	}
	return s.flagErr
}

// scan follows the framing over p, the next bytes of the stream.
func (s *scanner) scan(p []byte) {
	for len(p) > 0 {
		switch s.state {
		case stStopped, stFlagged:
			return
		case stBody, stChunkData:
			n := uint64(len(p))
			if n > s.remaining {
				n = s.remaining
			}
			s.remaining -= n
			p = p[n:]
			if s.remaining == 0 {
				if s.state == stBody {
					s.startRequest()
				} else {
					s.state = stChunkDataCR
				}
			}
			continue
		case stValue:
			if s.req.field == fieldOther {
				// Most field values: nothing to learn, skip to the end of line.
				i := bytes.IndexByte(p, '\n')
				if i < 0 {
					return
				}
				p = p[i+1:]
				s.state = stLineStart
				continue
			}
		}
		s.step(p[0])
		p = p[1:]
	}
}

// step moves the state machine over one byte.
func (s *scanner) step(b byte) {
	r := &s.req
	switch s.state {
	case stStart:
		if s.skip > 0 && (b == '\r' || b == '\n') {
			s.skip--
			return
		}
		s.state = stMethod
		s.step(b)

	case stMethod:
		switch b {
		case ' ':
			s.state = stTarget
		case '\n':
			s.stop() // no request target: the server refuses it
		default:
			if r.methodLen < len(r.method) {
				r.method[r.methodLen] = b
			}
			r.methodLen++
		}

	case stTarget:
		switch b {
		case ' ':
			s.state = stProto
		case '\n':
			s.stop() // no protocol version: the server refuses it
		default:
			if r.targetLen == 0 {
				r.target0 = b
			}
			r.targetLen++
		}

	case stProto:
		if b == '\n' {
			s.endRequestLine()
			return
		}
		if r.protoLen < len(r.proto) {
			r.proto[r.protoLen] = b
		}
		r.protoLen++
		r.protoCR = b == '\r'

	case stLineStart:
		switch b {
		case '\n':
			s.endHeader()
		case '\r':
			s.state = stLineCR
		case ' ', '\t':
			// Obsolete line folding; the rest of the line does not matter.
			r.folded = true
			r.field = fieldOther
			s.state = stValue
		case ':':
			s.stop() // empty field name: the server refuses it
		default:
			c := lower(b)
			r.nameLen = 1
			r.nameCL = c == contentLength[0]
			r.nameTE = c == transferEncoding[0]
			s.state = stName
		}

	case stLineCR:
		if b == '\n' {
			s.endHeader()
			return
		}
		s.stop() // a field line starting with CR: the server refuses it

	case stName:
		switch b {
		case ':':
			r.field = fieldOther
			if r.nameCL && r.nameLen == len(contentLength) {
				r.field = fieldContentLength
			} else if r.nameTE && r.nameLen == len(transferEncoding) {
				r.field = fieldTransferEncoding
			}
			r.val, r.valNum, r.valLen = valLead, 0, 0
			s.state = stValue
		case '\n':
			s.stop() // no colon: the server refuses it
		default:
			c := lower(b)
			i := r.nameLen
			r.nameCL = r.nameCL && i < len(contentLength) && c == contentLength[i]
			r.nameTE = r.nameTE && i < len(transferEncoding) && c == transferEncoding[i]
			r.nameLen++
		}

	case stValue:
		if b == '\n' {
			s.endField()
			return
		}
		switch r.field {
		case fieldContentLength:
			s.lengthByte(b)
		case fieldTransferEncoding:
			s.codingByte(b)
		}

	case stChunkSize:
		if s.chunkLineByte() {
			return
		}
		switch {
		case hexDigit(b) >= 0:
			if s.digits == 16 {
				s.stop() // more than 64 bits: the server refuses it
				return
			}
			s.remaining = s.remaining<<4 | uint64(hexDigit(b))
			s.digits++
		case s.digits == 0:
			s.stop() // no digits: the server refuses it
		case b == ';':
			s.state = stChunkExt
		case b == ' ' || b == '\t':
			s.state = stChunkWS
		case b == '\r':
			s.state = stChunkSizeCR
		default:
			s.stop() // including a bare LF, which the server refuses
		}

	case stChunkWS:
		// The server trims blanks at the end of the line, then cuts the
		// extension: blanks may only end the line.
		if s.chunkLineByte() {
			return
		}
		switch b {
		case ' ', '\t':
		case '\r':
			s.state = stChunkSizeCR
		default:
			s.stop()
		}

	case stChunkExt:
		if s.chunkLineByte() {
			return
		}
		switch b {
		case '\r':
			s.state = stChunkSizeCR
		case '\n':
			s.stop() // bare LF: the server refuses it
		}

	case stChunkSizeCR:
		if b != '\n' {
			s.stop() // a CR inside the line: the server refuses it
			return
		}
		s.lineLen = 0
		if s.remaining == 0 {
			s.state = stTrailerStart
		} else {
			s.state = stChunkData
		}

	case stChunkDataCR:
		if b != '\r' {
			s.stop() // the server requires CRLF after the data
			return
		}
		s.state = stChunkDataLF

	case stChunkDataLF:
		if b != '\n' {
			s.stop()
			return
		}
		s.state = stChunkSize
		s.remaining, s.digits, s.lineLen = 0, 0, 0

	case stTrailerStart, stTrailerEndCR, stTrailerLine, stTrailerLineCR:
		s.trailerByte(b)
	}
}

// chunkLineByte counts a byte of a chunk-size line and reports whether the
// line grew too long, which stops the scanner.
func (s *scanner) chunkLineByte() bool {
	s.lineLen++
	if s.lineLen > maxChunkLine {
		s.stop()
		return true
	}
	return false
}

// trailerByte follows the trailer section after the last chunk. The server
// takes a lone CRLF as its end; it reads any other trailer only after
// finding a blank CRLF line within its read buffer, and with bare-LF line
// ends that depends on later bytes. So the scanner follows trailers made of
// CRLF lines only, and stops on anything else.
func (s *scanner) trailerByte(b byte) {
	s.lineLen++
	if s.lineLen > maxTrailer {
		s.stop()
		return
	}
	switch s.state {
	case stTrailerStart:
		switch b {
		case '\r':
			s.state = stTrailerEndCR
		case '\n', ' ', '\t':
			s.stop()
		default:
			s.state = stTrailerLine
		}
	case stTrailerEndCR:
		if b != '\n' {
			s.stop()
			return
		}
		s.startRequest()
	case stTrailerLine:
		switch b {
		case '\r':
			s.state = stTrailerLineCR
		case '\n':
			s.stop()
		}
	case stTrailerLineCR:
		if b != '\n' {
			s.stop()
			return
		}
		s.state = stTrailerStart
	}
}

// lengthByte parses a Content-Length value: optional blanks, decimal
// digits, optional blanks (and the CR of the line end). Anything else makes
// it not a plain length, which the server refuses too.
func (s *scanner) lengthByte(b byte) {
	r := &s.req
	switch {
	case r.val == valBad:
	case '0' <= b && b <= '9' && r.val != valTrail:
		d := uint64(b - '0')
		if r.valNum > (maxContentLength-d)/10 {
			r.val = valBad
			return
		}
		r.valNum = r.valNum*10 + d
		r.valLen++
		r.val = valBody
	case b == ' ' || b == '\t' || b == '\r':
		if r.val == valBody {
			r.val = valTrail
		}
		if r.val == valLead && b == '\r' {
			r.val = valTrail
		}
	default:
		r.val = valBad
	}
}

// codingByte parses a Transfer-Encoding value, telling "chunked" (in any
// case, between blanks) from everything else.
func (s *scanner) codingByte(b byte) {
	r := &s.req
	switch r.val {
	case valLead:
		if b == ' ' || b == '\t' {
			return
		}
		r.val = valBody
		fallthrough
	case valBody:
		if r.valLen < len(chunked) && lower(b) == chunked[r.valLen] {
			r.valLen++
		} else if r.valLen == len(chunked) && (b == ' ' || b == '\t' || b == '\r') {
			r.val = valTrail
		} else {
			r.val = valBad
		}
	case valTrail:
		if b != ' ' && b != '\t' && b != '\r' {
			r.val = valBad
		}
	}
}

// endField records the field whose line just ended.
func (s *scanner) endField() {
	r := &s.req
	switch r.field {
	case fieldContentLength:
		r.clCount++
		if r.val == valBad || r.valLen == 0 {
			r.clBad = true
		} else if r.clCount == 1 {
			r.clValue = r.valNum
		}
	case fieldTransferEncoding:
		r.teCount++
		if r.val == valBad || r.valLen != len(chunked) {
			r.teBad = true
		}
	}
	s.state = stLineStart
}

func (s *scanner) endRequestLine() {
	r := &s.req
	n := r.protoLen
	if r.protoCR {
		n--
	}
	r.http10 = n == len(r.proto) && string(r.proto[:]) == "HTTP/1.0"
	r.post = r.isMethod("POST")
	r.pri = r.isMethod("PRI")
	// The server answers OPTIONS * itself (unless told not to), so its
	// Handler never sees it; the numbering skips it.
	r.optionsStar = r.isMethod("OPTIONS") && r.targetLen == 1 && r.target0 == '*'
	s.state = stLineStart
}

// endHeader ends the header block of a request: it decides the request's
// verdict, numbers it and sets up the framing of its body.
func (s *scanner) endHeader() {
	r := &s.req
	s.headers++
	if err := r.refusal(); err != nil {
		s.flagAt = s.visible
		s.flagErr = err
		s.state = stFlagged
		return
	}
	if !r.optionsStar {
		s.visible++
	}
	s.lastPOST = r.post
	switch {
	case r.pri:
		// The HTTP/2 connection preface: what follows is not HTTP/1.
		s.stop()
	case r.teCount > 0:
		s.state = stChunkSize
		s.remaining, s.digits, s.lineLen = 0, 0, 0
	case r.clValue > 0:
		s.state = stBody
		s.remaining = r.clValue
	default:
		s.startRequest()
	}
}

// refusal returns the sentinel error for a request whose header block is a
// smuggling shape, or nil. The checks run in a fixed order so that a
// request with several faults always gets the same error.
func (r *request) refusal() error {
	switch {
	case r.folded:
		return ErrLineFolding
	case r.clCount > 0 && r.teCount > 0:
		return ErrContentLengthAndChunked
	case r.clCount > 1:
		return ErrDuplicateContentLength
	case r.clBad:
		return ErrBadContentLength
	case r.teCount > 1, r.teBad, r.teCount > 0 && r.http10:
		// net/http ignores Transfer-Encoding on HTTP/1.0; a proxy in front
		// may not, so such a request is as ambiguous as CL with TE.
		return ErrBadTransferEncoding
	}
	return nil
}

func (s *scanner) startRequest() {
	s.req = request{}
	s.state = stStart
	s.skip = 0
	if s.lastPOST {
		s.skip = skipAfterPOST
	}
}

func (s *scanner) stop() { s.state = stStopped }

func (r *request) isMethod(m string) bool {
	return r.methodLen == len(m) && string(r.method[:len(m)]) == m
}

const (
	contentLength    = "content-length"
	transferEncoding = "transfer-encoding"
	chunked          = "chunked"
)

// lower folds ASCII letters only, as header names are compared.
func lower(b byte) byte {
	if 'A' <= b && b <= 'Z' {
		return b + 'a' - 'A'
	}
	return b
}

func hexDigit(b byte) int {
	switch {
	case '0' <= b && b <= '9':
		return int(b - '0')
	case 'a' <= b && b <= 'f':
		return int(b-'a') + 10
	case 'A' <= b && b <= 'F':
		return int(b-'A') + 10
	}
	return -1
}
