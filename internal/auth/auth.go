// Package auth holds the Authenticator extension point of the gateway and
// its built-in modules: allow-all (development only) and static tokens
// scoped to name patterns.
package auth

import (
	"context"
	"errors"
	"net"
)

// Identity is who an agent authenticated as. Names belong to identities.
type Identity struct {
	// Name is stable across reconnects and restarts of the gateway.
	Name string
	// Quota overrides the gateway's default quotas for this identity,
	// field by field; its zero value takes every default.
	Quota Quota
}

// Quota bounds what one identity may hold on a gateway at once. A zero
// field takes the gateway's default; a negative one means no limit.
type Quota struct {
	// Names is how many names the identity may hold, live or leased.
	Names int `yaml:"names,omitempty"`
	// Ports is how many public TCP ports its tunnels may hold.
	Ports int `yaml:"ports,omitempty"`
	// Sessions is how many agent sessions it may have logged in at once.
	Sessions int `yaml:"sessions,omitempty"`
	// CertOrdersPerHour is how many hosts of its tunnels may have a
	// certificate ordered (ACME) in any hour.
	CertOrdersPerHour int `yaml:"cert_orders_per_hour,omitempty"`
}

// Or returns q with its zero fields taken from def.
func (q Quota) Or(def Quota) Quota {
	pick := func(a, b int) int {
		if a != 0 {
			return a
		}
		return b
	}
	return Quota{
		Names:             pick(q.Names, def.Names),
		Ports:             pick(q.Ports, def.Ports),
		Sessions:          pick(q.Sessions, def.Sessions),
		CertOrdersPerHour: pick(q.CertOrdersPerHour, def.CertOrdersPerHour),
	}
}

// Credentials is what an agent presents at login.
type Credentials struct {
	Token  string
	Remote net.Addr
}

// Authenticator decides who an agent is and which names it may publish.
type Authenticator interface {
	// Authenticate maps credentials to an identity, or returns an error
	// wrapping ErrUnauthorized.
	Authenticate(ctx context.Context, c Credentials) (Identity, error)
	// Authorize returns nil if id may publish name, or an error wrapping
	// ErrForbidden.
	Authorize(ctx context.Context, id Identity, name string) error
}

// Sentinel errors of authenticators.
var (
	ErrUnauthorized = errors.New("token refused")
	ErrForbidden    = errors.New("name not allowed for this identity")
)

// Funcs adapts two functions to an Authenticator.
type Funcs struct {
	AuthenticateFunc func(ctx context.Context, c Credentials) (Identity, error)
	AuthorizeFunc    func(ctx context.Context, id Identity, name string) error
}

// Authenticate calls f.AuthenticateFunc.
func (f Funcs) Authenticate(ctx context.Context, c Credentials) (Identity, error) {
	return f.AuthenticateFunc(ctx, c)
}

// Authorize calls f.AuthorizeFunc.
func (f Funcs) Authorize(ctx context.Context, id Identity, name string) error {
	return f.AuthorizeFunc(ctx, id, name)
}

var _ Authenticator = Funcs{}

// AllowAll authenticates every agent as the same anonymous identity and
// allows every name. It is meant for development: anyone who can reach the
// gateway can publish any name.
type AllowAll struct{}

// Anonymous is the identity AllowAll gives every agent.
var Anonymous = Identity{Name: "anonymous"}

// Authenticate accepts any credentials.
func (AllowAll) Authenticate(context.Context, Credentials) (Identity, error) { return Anonymous, nil }

// Authorize allows any name.
func (AllowAll) Authorize(context.Context, Identity, string) error { return nil }

var _ Authenticator = AllowAll{}
