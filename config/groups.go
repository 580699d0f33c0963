package config

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"

	"github.com/diglett/diglett/gateway"
)

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
