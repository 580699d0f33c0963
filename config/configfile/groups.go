package configfile

import (
	"fmt"
	"maps"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/yamlerr"
)

// Group is one tunnel group of a gateway's file: a tunnel name, the
// further hosts it answers on, and the auth modules that let agents join
// it (any one of them suffices).
//
//	groups:
//	  - name: web
//	    hosts: [www.example.org]
//	    auth:
//	      - tokens: {file: web-tokens.yaml}
type Group struct {
	Name  string
	Hosts []string
	Auth  []Module
	Line  int
}

// groupSchema is the plain settings of a group; auth is a module list.
var groupSchema = Schema{"name": String, "hosts": List}

// parseGroups checks the groups section.
func parseGroups(errs *errorList, checks *Checks, domain string, n *yaml.Node) []Group {
	if n.Kind != yaml.SequenceNode {
		errs.add(n.Line, "groups: want a list such as [{name: web, hosts: [www.example.org], auth: [...]}], got %s", yamlerr.Describe(n))
		return nil
	}
	var gs []Group
	names := map[string]int{}
	hosts := map[string]int{}
	for i, it := range n.Content {
		where := fmt.Sprintf("groups[%d]", i+1)
		if it.Kind != yaml.MappingNode {
			errs.add(it.Line, "%s: want a mapping such as {name: web, auth: [...]}, got %s", where, yamlerr.Describe(it))
			continue
		}
		// auth is a module list, not a plain setting: take it out before
		// the plain settings are checked.
		plain := &yaml.Node{Kind: yaml.MappingNode, Line: it.Line}
		var auth *yaml.Node
		for j := 0; j+1 < len(it.Content); j += 2 {
			if it.Content[j].Value == "auth" {
				auth = it.Content[j+1]
				continue
			}
			plain.Content = append(plain.Content, it.Content[j], it.Content[j+1])
		}
		before := len(errs.errs)
		s := parseSettings(errs, "", where, withAuth(groupSchema), plain)
		g := Group{Name: s["name"].Value, Hosts: s["hosts"].List, Line: it.Line}
		switch {
		case g.Name == "":
			errs.add(it.Line, "%s: want a name, the group's tunnel name", where)
		case protocol.ValidateName(g.Name) != nil:
			errs.add(s["name"].Line, "%s: name: %v", where, protocol.ValidateName(g.Name))
		}
		if line, dup := names[g.Name]; dup && g.Name != "" {
			errs.add(it.Line, "%s: group %q given twice (first on line %d)", where, g.Name, line)
		}
		names[g.Name] = it.Line
		for _, h := range g.Hosts {
			if err := checks.validateHost(h); err != nil {
				errs.add(s["hosts"].Line, "%s: hosts: %v", where, err)
				continue
			}
			if domain != "" && strings.HasSuffix(h, "."+domain) {
				errs.add(s["hosts"].Line, "%s: hosts: %q is under the domain %s, where it is tunnel %q's already", where, h, domain, strings.TrimSuffix(h, "."+domain))
				continue
			}
			if line, dup := hosts[h]; dup {
				errs.add(s["hosts"].Line, "%s: hosts: %q is another group's already (line %d)", where, h, line)
				continue
			}
			hosts[h] = s["hosts"].Line
		}
		if auth == nil {
			errs.add(it.Line, "%s: want an auth list: the modules that let agents join the group", where)
		} else {
			g.Auth = parseModules(errs, checks, "auth", auth)
			if len(g.Auth) == 0 && len(errs.errs) == before {
				errs.add(auth.Line, "%s: auth: want at least one module", where)
			}
		}
		if len(errs.errs) == before {
			gs = append(gs, g)
		}
	}
	return gs
}

// withAuth is schema with auth among the keys that the message about an
// unknown key lists (auth itself was taken out of the block checked).
func withAuth(schema Schema) Schema {
	s := maps.Clone(schema)
	s["auth"] = List
	return s
}

// validateHost checks a group's further host with ValidateHost, if any.
func (c *Checks) validateHost(h string) error {
	if c == nil || c.ValidateHost == nil {
		return nil
	}
	return c.ValidateHost(h)
}
