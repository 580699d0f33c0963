package protocol_test

import (
	"fmt"
	"go/ast"
	"go/constant"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/wstransport"
)

// The spec, PROTOCOL.md, sits beside the code. These tests read its
// tables marked "checked" and compare them with the constants both ways:
// every constant is documented, every documented value exists and has the
// constant's value. The sets of constants (error codes, message types,
// statuses, session codes, limits) are read from the Go source itself, so
// that a constant added without a row fails too.

const specFile = "PROTOCOL.md"

// goConsts are the constants the spec documents.
type goConsts struct {
	codes    map[string]string // error code value -> constant name
	types    map[int]string    // message type -> its name on the wire (Type.String)
	statuses map[int]string    // status byte -> constant name
	sessions map[int]string    // session error code -> constant name
	// limits maps "protocol.Name" to the value of every exported untyped
	// integer constant of the protocol package; a name read from the
	// source and missing here is "?".
	limits map[string]string
	// defaults maps "pkg.Name" to the value of the transport and gateway
	// defaults the spec lists, as the spec writes them.
	defaults map[string]string
}

// sourceConsts reads the constants of the given files, by the name of
// their type ("" for untyped ones), each with its literal value.
func sourceConsts(t *testing.T, files ...string) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	fset := token.NewFileSet()
	for _, f := range files {
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range file.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				typ := ""
				if id, ok := vs.Type.(*ast.Ident); ok {
					typ = id.Name
				}
				for i, name := range vs.Names {
					if !name.IsExported() || i >= len(vs.Values) {
						continue
					}
					c := eval(vs.Values[i])
					var v string
					switch c.Kind() {
					case constant.String:
						v = constant.StringVal(c)
					case constant.Int:
						v = c.ExactString()
					default:
						continue // not a plain number or string (a duration, say)
					}
					if out[typ] == nil {
						out[typ] = map[string]string{}
					}
					out[typ][name.Name] = v
				}
			}
		}
	}
	return out
}

// eval evaluates a constant expression of literals (16 << 10, say);
// anything else is unknown.
func eval(e ast.Expr) constant.Value {
	switch e := e.(type) {
	case *ast.BasicLit:
		return constant.MakeFromLiteral(e.Value, e.Kind, 0)
	case *ast.ParenExpr:
		return eval(e.X)
	case *ast.BinaryExpr:
		x, y := eval(e.X), eval(e.Y)
		if x.Kind() != constant.Int || y.Kind() != constant.Int {
			return constant.MakeUnknown()
		}
		switch e.Op {
		case token.SHL, token.SHR:
			n, ok := constant.Uint64Val(y)
			if !ok {
				return constant.MakeUnknown()
			}
			return constant.Shift(x, e.Op, uint(n))
		case token.ADD, token.SUB, token.MUL:
			return constant.BinaryOp(x, e.Op, y)
		}
	}
	return constant.MakeUnknown()
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.ParseInt(s, 0, 64)
	if err != nil {
		t.Fatalf("constant value %q: %v", s, err)
	}
	return int(n)
}

// loadConsts gathers the constants from the source and the compiled
// packages.
func loadConsts(t *testing.T) goConsts {
	t.Helper()
	src := sourceConsts(t, "protocol.go", "stream.go", "datagram.go")
	tr := sourceConsts(t, filepath.Join("..", "transport", "transport.go"))
	g := goConsts{
		codes:    map[string]string{},
		types:    map[int]string{},
		statuses: map[int]string{},
		sessions: map[int]string{},
		limits:   map[string]string{},
	}
	for name, v := range src["Code"] {
		g.codes[v] = name
	}
	for _, v := range src["Type"] {
		n := atoi(t, v)
		g.types[n] = protocol.Type(n).String()
	}
	for name, v := range src["Status"] {
		g.statuses[atoi(t, v)] = name
	}
	for name, v := range tr["ErrorCode"] {
		g.sessions[atoi(t, v)] = name
	}
	compiled := map[string]int{
		"Version":                protocol.Version,
		"MaxMessageSize":         protocol.MaxMessageSize,
		"MaxNameLen":             protocol.MaxNameLen,
		"MaxTokenLen":            protocol.MaxTokenLen,
		"MaxAddrLen":             protocol.MaxAddrLen,
		"MaxNames":               protocol.MaxNames,
		"MaxAllowIPs":            protocol.MaxAllowIPs,
		"MaxURLLen":              protocol.MaxURLLen,
		"MaxCredLen":             protocol.MaxCredLen,
		"MaxInstanceLen":         protocol.MaxInstanceLen,
		"MaxFeatures":            protocol.MaxFeatures,
		"MaxFeatureLen":          protocol.MaxFeatureLen,
		"StreamHeaderVersion":    protocol.StreamHeaderVersion,
		"StreamHeaderVersionUDP": protocol.StreamHeaderVersionUDP,
		"MaxDatagramSize":        protocol.MaxDatagramSize,
		"DatagramFrameHeaderLen": protocol.DatagramFrameHeaderLen,
		"FlowDatagramOverhead":   protocol.FlowDatagramOverhead,
	}
	for name, v := range src[""] {
		if _, err := strconv.ParseInt(v, 0, 64); err != nil {
			continue // a string, such as ALPN: in the defaults
		}
		val := "?"
		if c, ok := compiled[name]; ok {
			val = strconv.Itoa(c)
		}
		g.limits["protocol."+name] = val
	}
	d := func(v time.Duration) string { return v.String() }
	q := func(s string) string { return "`" + s + "`" }
	g.defaults = map[string]string{
		"protocol.ALPN":                         q(protocol.ALPN),
		"wstransport.ALPN":                      q(wstransport.ALPN),
		"wstransport.Path":                      q(wstransport.Path),
		"transport.DefaultKeepAlivePeriod":      d(transport.DefaultKeepAlivePeriod),
		"transport.DefaultMaxIdleTimeout":       d(transport.DefaultMaxIdleTimeout),
		"transport.MinMaxIdleTimeout":           d(transport.MinMaxIdleTimeout),
		"transport.DefaultMaxIncomingStreams":   strconv.Itoa(transport.DefaultMaxIncomingStreams),
		"transport.DefaultStreamWindow":         strconv.Itoa(transport.DefaultStreamWindow),
		"gateway.DefaultHandshakeTimeout":       d(gateway.DefaultHandshakeTimeout),
		"gateway.DefaultFirstByteTimeout":       d(gateway.DefaultFirstByteTimeout),
		"gateway.DefaultMaxHandshakes":          strconv.Itoa(gateway.DefaultMaxHandshakes),
		"gateway.DefaultMaxHandshakesPerSource": strconv.Itoa(gateway.DefaultMaxHandshakesPerSource),
		"gateway.DefaultLoginFailureLimit":      strconv.Itoa(gateway.DefaultLoginFailureLimit),
		"gateway.DefaultLoginFailureWindow":     d(gateway.DefaultLoginFailureWindow),
		"gateway.DefaultLoginLockout":           d(gateway.DefaultLoginLockout),
		"gateway.DefaultLoginFailureDelay":      d(gateway.DefaultLoginFailureDelay),
		"gateway.DefaultStatusTimeout":          d(gateway.DefaultStatusTimeout),
		"gateway.DefaultLease":                  d(gateway.DefaultLease),
	}
	return g
}

// table returns the rows of the Markdown table whose header row is
// header, each as its trimmed cells; nil if there is none.
func table(doc, header string) [][]string {
	lines := strings.Split(doc, "\n")
	for i, l := range lines {
		if strings.TrimSpace(l) != header {
			continue
		}
		var rows [][]string
		for _, r := range lines[i+2:] { // skip the | --- | line
			r = strings.TrimSpace(r)
			if !strings.HasPrefix(r, "|") {
				break
			}
			cells := strings.Split(strings.Trim(r, "|"), "|")
			for j := range cells {
				cells[j] = strings.TrimSpace(cells[j])
			}
			rows = append(rows, cells)
		}
		return rows
	}
	return nil
}

// checkSpec lists every difference between doc and g.
func checkSpec(doc string, g goConsts) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	rows := func(header string) [][]string {
		r := table(doc, header)
		if r == nil {
			bad("no table %q", header)
		}
		return r
	}
	number := func(what, s string) (int, bool) {
		n, err := strconv.Atoi(s)
		if err != nil {
			bad("%s %q: not a number", what, s)
		}
		return n, err == nil
	}

	// Error codes.
	seen := map[string]bool{}
	for _, r := range rows("| code | meaning | agent |") {
		code := strings.Trim(r[0], "`")
		if _, ok := g.codes[code]; !ok {
			bad("error code %q is documented but is no protocol.Code constant", code)
		}
		seen[code] = true
	}
	for code, name := range g.codes {
		if !seen[code] {
			bad("error code %q (protocol.%s) is not documented", code, name)
		}
	}

	// Message types.
	seenN := map[int]bool{}
	for _, r := range rows("| type | name | direction | payload |") {
		n, ok := number("message type", r[0])
		if !ok {
			continue
		}
		seenN[n] = true
		if name, ok := g.types[n]; !ok {
			bad("message type %d (%s) is documented but is no protocol.Type constant", n, r[1])
		} else if name != r[1] {
			bad("message type %d is documented as %q, the code calls it %q", n, r[1], name)
		}
	}
	for n, name := range g.types {
		if !seenN[n] {
			bad("message type %d (%s) is not documented", n, name)
		}
	}

	// Status bytes and session codes: numbers both ways.
	for _, set := range []struct {
		what, header string
		consts       map[int]string
	}{
		{"status byte", "| status | meaning | gateway |", g.statuses},
		{"session error code", "| session code | name | meaning |", g.sessions},
	} {
		seen := map[int]bool{}
		for _, r := range rows(set.header) {
			n, ok := number(set.what, r[0])
			if !ok {
				continue
			}
			seen[n] = true
			if _, ok := set.consts[n]; !ok {
				bad("%s %d (%s) is documented but no constant has that value", set.what, n, r[1])
			}
		}
		for n, name := range set.consts {
			if !seen[n] {
				bad("%s %d (%s) is not documented", set.what, n, name)
			}
		}
	}

	// Named values: limits and defaults.
	for _, set := range []struct {
		what, header string
		consts       map[string]string
	}{
		{"limit", "| limit | value | constant |", g.limits},
		{"default", "| setting | default | constant |", g.defaults},
	} {
		seen := map[string]bool{}
		for _, r := range rows(set.header) {
			name := strings.Trim(r[2], "`")
			seen[name] = true
			want, ok := set.consts[name]
			switch {
			case !ok:
				bad("%s %s is documented but no such constant is known", set.what, name)
			case want == "?":
				bad("%s %s: add it to the compiled constants of loadConsts", set.what, name)
			case r[1] != want:
				bad("%s %s is documented as %s, the constant is %s", set.what, name, r[1], want)
			}
		}
		for name := range set.consts {
			if !seen[name] {
				bad("%s %s is not documented", set.what, name)
			}
		}
	}

	// The wire layouts name the limits too.
	if !slices.ContainsFunc(table(doc, "| bytes | field |"), func(r []string) bool {
		return strings.HasSuffix(r[1], "at most "+g.limits["protocol.MaxMessageSize"])
	}) {
		bad("the frame layout does not bound the payload by protocol.MaxMessageSize (%s)", g.limits["protocol.MaxMessageSize"])
	}
	for _, want := range []string{
		"name length N (1 to " + g.limits["protocol.MaxNameLen"] + ")",
		"address length M (0 to " + g.limits["protocol.MaxAddrLen"] + ")",
	} {
		if !strings.Contains(doc, "| "+want+" |") {
			bad("the stream header layout lacks %q", want)
		}
	}
	slices.Sort(problems)
	return problems
}

func readSpec(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(specFile)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestSpec checks the spec's tables against the constants.
func TestSpec(t *testing.T) {
	for _, p := range checkSpec(readSpec(t), loadConsts(t)) {
		t.Errorf("%s: %s", specFile, p)
	}
}

// TestSpecSourceConsts checks that the constants read from the source are
// the compiled ones, so that TestSpec compares the spec with the code.
func TestSpecSourceConsts(t *testing.T) {
	g := loadConsts(t)
	codes := []protocol.Code{
		protocol.CodeBadRequest, protocol.CodeVersion, protocol.CodeUnauthorized, protocol.CodeForbidden,
		protocol.CodeNameTaken, protocol.CodePortUnavailable, protocol.CodeTooManyNames, protocol.CodeInternal,
		protocol.CodeShuttingDown, protocol.CodeQuotaExceeded, protocol.CodeTooManyFailures, protocol.CodeUnavailable,
	}
	for _, c := range codes {
		if _, ok := g.codes[string(c)]; !ok {
			t.Errorf("code %q not read from the source", c)
		}
	}
	statuses := []protocol.Status{protocol.StatusOK, protocol.StatusRefused, protocol.StatusTimeout, protocol.StatusUnknownTunnel, protocol.StatusBusy}
	for _, s := range statuses {
		if _, ok := g.statuses[int(s)]; !ok {
			t.Errorf("status %d not read from the source", s)
		}
	}
	// Every status read is accepted by ReadStatus, the next one is not.
	top := 0
	for n := range g.statuses {
		if _, err := protocol.ReadStatus(strings.NewReader(string([]byte{byte(n)}))); err != nil {
			t.Errorf("ReadStatus(%d): %v", n, err)
		}
		top = max(top, n)
	}
	if _, err := protocol.ReadStatus(strings.NewReader(string([]byte{byte(top + 1)}))); err == nil {
		t.Errorf("ReadStatus(%d) accepted a status beyond the last constant", top+1)
	}
	sessions := []transport.ErrorCode{transport.CodeNone, transport.CodeProtocol, transport.CodeShuttingDown, transport.CodeIdle, transport.CodeBusy}
	for _, c := range sessions {
		if _, ok := g.sessions[int(c)]; !ok {
			t.Errorf("session code %d not read from the source", c)
		}
	}
	for n := range g.types {
		if strings.HasPrefix(protocol.Type(n).String(), "type(") {
			t.Errorf("message type %d read from the source has no name", n)
		}
	}
}

// TestSpecDetectsDrift: a spec that differs from the code in any checked
// table fails.
func TestSpecDetectsDrift(t *testing.T) {
	doc, g := readSpec(t), loadConsts(t)
	for _, tc := range []struct {
		name, old, new string
	}{
		{"limit changed", "| payload of one control message, bytes | 16384 |", "| payload of one control message, bytes | 16385 |"},
		{"code missing", "| `internal` | the gateway failed | retries |\n", ""},
		{"code unknown", "| `internal` |", "| `internal_error` |"},
		{"type renamed", "| 7 | drain |", "| 7 | stop |"},
		{"type missing", "| 7 | drain | agent → gateway | `{}` |\n", ""},
		{"status unknown", "| 4 | the agent's accept queue is full |", "| 5 | the agent's accept queue is full |"},
		{"session code missing", "| 4 | busy |", "| 5 | busy |"},
		{"default changed", "| handshake timeout | 10s |", "| handshake timeout | 15s |"},
		{"ALPN changed", "| WebSocket ALPN | `diglett-ws` |", "| WebSocket ALPN | `diglett-websocket` |"},
		{"frame bound changed", "payload length N, big endian, at most 16384", "payload length N, big endian, at most 65535"},
		{"header bound changed", "address length M (0 to 64)", "address length M (0 to 255)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(doc, tc.old) {
				t.Fatalf("the spec has no %q", tc.old)
			}
			if got := checkSpec(strings.Replace(doc, tc.old, tc.new, 1), g); len(got) == 0 {
				t.Error("no problem found")
			}
		})
	}
	// A constant the spec does not know of fails the same way.
	g.codes["revoked"] = "CodeRevoked"
	g.limits["protocol.MaxSomething"] = "9"
	if got := checkSpec(doc, g); len(got) != 2 {
		t.Errorf("undocumented constants: got problems %q; want 2", got)
	}
}
