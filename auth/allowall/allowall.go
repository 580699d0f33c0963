// Package allowall is the authentication module for development: every
// agent is the same anonymous identity and may publish any name. Anyone
// who can reach a gateway using it can publish anything.
package allowall

import (
	"context"

	"github.com/diglett/diglett/gateway"
)

// Authenticator authenticates every agent as Anonymous and allows every
// name.
type Authenticator struct{}

// Anonymous is the identity every agent gets.
var Anonymous = gateway.Identity{Name: "anonymous"}

// Authenticate accepts any credentials.
func (Authenticator) Authenticate(context.Context, gateway.Credentials) (gateway.Identity, error) {
	return Anonymous, nil
}

// Authorize allows any name.
func (Authenticator) Authorize(context.Context, gateway.Identity, string) error { return nil }

var _ gateway.Authenticator = Authenticator{}
