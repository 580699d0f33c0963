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
