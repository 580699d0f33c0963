package jwt

import (
	"context"
	"crypto"
	"errors"
)

// Registry says which public key an identity signs its tokens with and
// which identity owns a name. The module asks it on every login and every
// registration, from many goroutines at once: implementations must be safe
// for concurrent use, answer within ctx, and bound whatever they cache.
type Registry interface {
	// Key returns the public key of identity id (a token's kid, else its
	// sub), or an error wrapping ErrUnknownIdentity if it has none.
	Key(ctx context.Context, id string) (crypto.PublicKey, error)
	// Owner returns the identity that owns name, or an error wrapping
	// ErrNoOwner if no identity does.
	Owner(ctx context.Context, name string) (string, error)
}

// Errors of registries. Any other error is a failure of the registry
// itself (unreachable, say), which refuses the login without counting it
// as the agent's fault.
var (
	ErrUnknownIdentity = errors.New("unknown identity key")
	ErrNoOwner         = errors.New("name has no owner")
)
