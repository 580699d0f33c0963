package catalog

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// DefaultTagKeyword is the default first word of the tags ParseTag reads.
const DefaultTagKeyword = "diglett"

// maxTagPorts bounds how many ports one tag may ask for.
const maxTagPorts = 1024

// ParseTag reads a service tag of the form
//
//	(KEYWORD (tcp_port 25 587) (udp_port 53))
//
// whose items are tcp_port or udp_port followed by one or more port
// numbers; whitespace between words is free. It returns ok=false, and no
// error, for a tag that does not start with "(KEYWORD" (another tool's),
// and an error for a malformed tag that does. The ports have no Service.
func ParseTag(tag, keyword string) (ports []Port, ok bool, err error) {
	toks := tokenize(tag)
	if len(toks) < 2 || toks[0] != "(" || toks[1] != keyword || keyword == "" {
		return nil, false, nil
	}
	ports, err = parseItems(toks[2:])
	if err != nil {
		return nil, true, fmt.Errorf("malformed tag: %w", err)
	}
	return ports, true, nil
}

// parseItems parses what follows "(KEYWORD": items, then ")" and nothing
// after.
func parseItems(toks []string) ([]Port, error) {
	ports := []Port{}
	for {
		if len(toks) == 0 {
			return nil, errors.New("missing )")
		}
		if toks[0] == ")" {
			if len(toks) > 1 {
				return nil, fmt.Errorf("unexpected %q after the closing )", toks[1])
			}
			return ports, nil
		}
		if toks[0] != "(" {
			return nil, fmt.Errorf("unexpected %q: want (tcp_port N...) or (udp_port N...)", toks[0])
		}
		if len(toks) < 2 {
			return nil, errors.New("missing )")
		}
		var proto string
		switch toks[1] {
		case "tcp_port":
			proto = TCP
		case "udp_port":
			proto = UDP
		default:
			return nil, fmt.Errorf("unknown item %q: want tcp_port or udp_port", toks[1])
		}
		toks = toks[2:]
		n := 0
		for len(toks) > 0 && toks[0] != ")" {
			p, err := strconv.ParseUint(toks[0], 10, 16)
			if err != nil || p == 0 {
				return nil, fmt.Errorf("%s_port %q: want a port number 1-65535", proto, toks[0])
			}
			if len(ports) >= maxTagPorts {
				return nil, fmt.Errorf("more than %d ports", maxTagPorts)
			}
			ports = append(ports, Port{Proto: proto, Port: uint16(p)})
			toks = toks[1:]
			n++
		}
		if len(toks) == 0 {
			return nil, errors.New("missing )")
		}
		if n == 0 {
			return nil, fmt.Errorf("%s_port without a port", proto)
		}
		toks = toks[1:]
	}
}

// tokenize splits s into "(", ")" and the words between, dropping
// whitespace.
func tokenize(s string) []string {
	var toks []string
	start := -1
	for i, r := range s {
		switch {
		case r == '(' || r == ')' || isSpace(r):
			if start >= 0 {
				toks = append(toks, s[start:i])
				start = -1
			}
			if !isSpace(r) {
				toks = append(toks, string(r))
			}
		case start < 0:
			start = i
		}
	}
	if start >= 0 {
		toks = append(toks, s[start:])
	}
	return toks
}

func isSpace(r rune) bool { return r == ' ' || r == '\t' || r == '\n' || r == '\r' }

// shorten cuts a tag quoted in an error.
func shorten(s string) string {
	const max = 200
	if len(s) <= max {
		return s
	}
	return strings.ToValidUTF8(s[:max], "") + "..."
}

// validKeyword reports whether k can start a tag: one word, no
// parenthesis or whitespace.
func validKeyword(k string) bool {
	return k != "" && !strings.ContainsAny(k, "() \t\n\r")
}
