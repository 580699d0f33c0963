// Package bearer is the authentication module of one static token given in
// the gateway's configuration, in clear, as its SHA-256 or in a file of
// its own, which lets one identity publish the names that match its
// patterns.
package bearer

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/diglett/diglett/auth/tokens"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/protocol"
)

// Config is the token and what it allows. Exactly one of Token, SHA256
// and TokenFile gives the token.
type Config struct {
	// Token is the token in clear.
	Token string
	// SHA256 is the SHA-256 of the token, in hex (sha256sum's output), so
	// that the configuration does not hold the token itself.
	SHA256 string
	// TokenFile is a file holding the token; surrounding white space is
	// trimmed.
	TokenFile string
	// Identity is the identity an agent with the token gets; required.
	Identity string
	// Names are the names (or patterns with *, as in "demo-*") the
	// identity may publish; at least one.
	Names []string
}

// Bearer authenticates agents presenting one static token.
type Bearer struct {
	sum      [sha256.Size]byte
	identity string
	names    []string
}

var _ gateway.Authenticator = (*Bearer)(nil)

// New checks c and builds its Bearer.
func New(c Config) (*Bearer, error) {
	given := 0
	for _, s := range []string{c.Token, c.SHA256, c.TokenFile} {
		if s != "" {
			given++
		}
	}
	if given != 1 {
		return nil, errors.New("give the token as exactly one of token, sha256 or token_file")
	}
	if c.Identity == "" {
		return nil, errors.New("no identity: name the identity the token's agents get")
	}
	if len(c.Names) == 0 {
		return nil, errors.New("no names: list the names the token may publish (patterns like \"demo-*\" work)")
	}
	for _, p := range c.Names {
		if err := tokens.ValidatePattern(p); err != nil {
			return nil, err
		}
	}
	b := &Bearer{identity: c.Identity, names: c.Names}
	token := c.Token
	switch {
	case c.TokenFile != "":
		data, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("token_file: %w", err)
		}
		token = strings.TrimSpace(string(data))
		if token == "" {
			return nil, fmt.Errorf("token_file %s: empty", c.TokenFile)
		}
	case c.SHA256 != "":
		sum, err := hex.DecodeString(c.SHA256)
		if err != nil || len(sum) != sha256.Size {
			return nil, fmt.Errorf("sha256: want %d hex digits, as sha256sum prints", 2*sha256.Size)
		}
		copy(b.sum[:], sum)
		return b, nil
	}
	if len(token) > protocol.MaxTokenLen {
		return nil, fmt.Errorf("token longer than %d bytes", protocol.MaxTokenLen)
	}
	b.sum = sha256.Sum256([]byte(token))
	return b, nil
}

// Authenticate compares the SHA-256 of the presented token with the
// configured one in constant time. Credentials with no token are refused
// at once, so that a chain of modules moves on.
func (b *Bearer) Authenticate(_ context.Context, c gateway.Credentials) (gateway.Identity, error) {
	if c.Token == "" {
		return gateway.Identity{}, fmt.Errorf("%w: no token given", gateway.ErrUnauthorized)
	}
	sum := sha256.Sum256([]byte(c.Token))
	if subtle.ConstantTimeCompare(sum[:], b.sum[:]) != 1 {
		return gateway.Identity{}, fmt.Errorf("%w: unknown token", gateway.ErrUnauthorized)
	}
	return gateway.Identity{Name: b.identity}, nil
}

// Authorize allows the token's identity the names that match its
// patterns.
func (b *Bearer) Authorize(_ context.Context, id gateway.Identity, name string) error {
	if id.Name == b.identity && tokens.Match(b.names, name) {
		return nil
	}
	return fmt.Errorf("%w: %q", gateway.ErrForbidden, name)
}
