package configfile

import (
	"net/netip"

	"go.yaml.in/yaml/v3"

	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/yamlerr"
)

// The proxy_protocol section names the load balancers in front of the
// gateway, which send a PROXY protocol header on every connection to the
// public ports and the HTTP(S) ports:
//
//	proxy_protocol:
//	  from: [10.0.0.0/24, 192.0.2.7]
var proxyProtocolSchema = Schema{"from": List}

// ProxyProtocol is the proxy_protocol section of a file.
type ProxyProtocol struct {
	// From are the sources that must send a PROXY header, and the only
	// ones that may: an address alone is a /32 (IPv4) or /128 (IPv6).
	From []netip.Prefix
	Line int
}

// parseProxyProtocol checks the proxy_protocol section into
// f.ProxyProtocol.
func parseProxyProtocol(errs *errorList, v *yaml.Node, f *File) {
	if v.Kind != yaml.MappingNode {
		errs.add(v.Line, "proxy_protocol: want a mapping such as {from: [10.0.0.0/24]}, got %s", yamlerr.Describe(v))
		return
	}
	before := len(errs.errs)
	s := parseSettings(errs, "", "proxy_protocol", proxyProtocolSchema, v)
	if len(errs.errs) > before {
		return
	}
	from, ok := s["from"]
	if !ok || len(from.List) == 0 {
		errs.add(v.Line, "proxy_protocol: no from: give the addresses or CIDRs of the load balancers in front of the gateway, such as [10.0.0.0/24]")
		return
	}
	pp := &ProxyProtocol{Line: v.Line}
	lines := itemLines(v, "from")
	for i, item := range from.List {
		line := from.Line
		if i < len(lines) {
			line = lines[i]
		}
		p, err := protocol.ParsePrefixes([]string{item})
		if err != nil {
			errs.add(line, "proxy_protocol.from: %s", err.Error())
			continue
		}
		pp.From = append(pp.From, p...)
	}
	f.ProxyProtocol = pp
}

// itemLines are the lines of the items of the list under key in the
// mapping m.
func itemLines(m *yaml.Node, key string) []int {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value != key {
			continue
		}
		var lines []int
		for _, it := range m.Content[i+1].Content {
			lines = append(lines, it.Line)
		}
		return lines
	}
	return nil
}
