package config

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/diglett/diglett/gateway"
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
func parseGroups(errs *errorList, domain string, n *yaml.Node) []Group {
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
			if err := gateway.ValidateHost(h); err != nil {
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
			g.Auth = parseModules(errs, "auth", auth)
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

// Hosts maps the groups' further hosts to their tunnels.
func (f *File) Hosts() gateway.Hosts {
	h := gateway.Hosts{}
	if f == nil {
		return h
	}
	for _, g := range f.Groups {
		for _, host := range g.Hosts {
			h[host] = g.Name
		}
	}
	return h
}

// GroupAuth is a group's name and the chain of auth modules that let
// agents join it.
type GroupAuth struct {
	Name string
	Auth Chain
}

// GroupAuthenticators builds each group's auth modules, in file order;
// every problem is reported with its line.
func (f *File) GroupAuthenticators(env Env) ([]GroupAuth, error) {
	var out []GroupAuth
	var errs []error
	for _, g := range f.Groups {
		auths, err := buildModules(f, "auth", g.Auth, func(_ Module, mod module, s map[string]Setting) (gateway.Authenticator, error) {
			return mod.auth(s, env)
		})
		if err != nil {
			errs = append(errs, err)
			Chain(auths).Close()
			continue
		}
		out = append(out, GroupAuth{Name: g.Name, Auth: auths})
	}
	if len(errs) > 0 {
		for _, g := range out {
			g.Auth.Close()
		}
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// Claims a Grouped authenticator sets on the identity of an agent that
// joined a group: the group's name, and the identity its module gave.
const (
	ClaimGroup  = "diglett.group"
	ClaimMember = "diglett.member"
)

// GroupIdentityPrefix starts the identity of a group's members: they all
// share "group:NAME", so that they serve the group's tunnel together as
// one name's members.
const GroupIdentityPrefix = "group:"

// Grouped authenticates the agents of tunnel groups by each group's own
// modules, and every other agent by Global. A group's name is the group's
// alone: an agent that joined a group publishes its name and nothing
// else, and no other agent may publish it.
type Grouped struct {
	// Global is the authenticator of agents that join no group; nil lets
	// only groups' agents in.
	Global gateway.Authenticator
	Groups []GroupAuth
}

var (
	_ gateway.Authenticator = Grouped{}
	_ io.Closer             = Grouped{}
)

// Authenticate tries, for each group the agent named at login, the
// group's modules; the first group that takes the agent's credentials
// makes it a member. Otherwise Global decides: an agent it lets in may
// not publish a group's name (Authorize says so); one it refuses that
// named only groups is told why the groups refused it.
func (g Grouped) Authenticate(ctx context.Context, c gateway.Credentials) (gateway.Identity, error) {
	var refused error
	asked := 0 // the groups named at login
	for _, gr := range g.Groups {
		if !slices.Contains(c.Names, gr.Name) {
			continue
		}
		asked++
		id, err := gr.Auth.Authenticate(ctx, c)
		if err == nil {
			return gateway.Identity{
				Name:   GroupIdentityPrefix + gr.Name,
				Claims: map[string]any{ClaimGroup: gr.Name, ClaimMember: id.Name},
				Quota:  id.Quota,
			}, nil
		}
		if !errors.Is(err, gateway.ErrUnauthorized) {
			return gateway.Identity{}, err
		}
		if refused == nil || errors.Is(refused, gateway.ErrNoCredentials) {
			refused = err
		}
	}
	if g.Global == nil {
		if refused != nil {
			return gateway.Identity{}, refused
		}
		return gateway.Identity{}, fmt.Errorf("%w: this gateway lets in only the agents of its tunnel groups", gateway.ErrUnauthorized)
	}
	id, err := g.Global.Authenticate(ctx, c)
	if err != nil {
		if refused != nil && asked == len(c.Names) && errors.Is(err, gateway.ErrUnauthorized) {
			// The agent asked for groups only: why they refused it
			// says more than why the other modules did.
			return gateway.Identity{}, refused
		}
		return gateway.Identity{}, err
	}
	if _, ok := id.Claims[ClaimGroup]; ok {
		// Only a group's modules make a member, never a claim of a
		// module's own (a token's, say).
		claims := maps.Clone(id.Claims)
		delete(claims, ClaimGroup)
		id.Claims = claims
	}
	return id, nil
}

// Authorize lets a group's member publish the group's name only, and
// everyone else what Global allows, except the groups' names.
func (g Grouped) Authorize(ctx context.Context, id gateway.Identity, name string) error {
	if grp, ok := id.Claims[ClaimGroup].(string); ok {
		if name == grp {
			return nil
		}
		return fmt.Errorf("%w: this agent joined tunnel group %q, which publishes %q only", gateway.ErrForbidden, grp, grp)
	}
	for _, gr := range g.Groups {
		if gr.Name == name {
			return fmt.Errorf("%w: %q is a tunnel group's: join it with the group's credentials", gateway.ErrForbidden, name)
		}
	}
	if g.Global == nil {
		return gateway.ErrForbidden
	}
	return g.Global.Authorize(ctx, id, name)
}

// Close closes Global and the groups' modules that hold resources.
func (g Grouped) Close() error {
	errs := make([]error, 0, len(g.Groups)+1)
	if c, ok := g.Global.(io.Closer); ok {
		errs = append(errs, c.Close())
	}
	for _, gr := range g.Groups {
		errs = append(errs, gr.Auth.Close())
	}
	return errors.Join(errs...)
}
