package jwt

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"time"

	gojwt "github.com/golang-jwt/jwt/v5"
)

// DefaultTTL is how long a token signed for one login stays valid.
const DefaultTTL = 5 * time.Minute

// Claims is what Sign puts in a token besides the identity.
type Claims struct {
	// Names are the names (or patterns with *, as in "demo-*") the token
	// lets its identity publish.
	Names []string
	// Audience are the gateways the token is for (their host names or
	// addresses, without the port); at least one.
	Audience []string
	// TTL is how long the token is valid from now. Default: DefaultTTL.
	TTL time.Duration
	// Reusable leaves out jti: the gateway then takes the token as often
	// as it is presented until it expires, as a bearer token (diglett
	// token sign). Default: a random jti, so the token logs in once.
	Reusable bool
}

// Sign makes a token of the identity of key: an EdDSA JWT with header kid
// and claims sub (both the identity id), names, aud, iat, nbf, exp and,
// unless c.Reusable, a random jti.
func Sign(key ed25519.PrivateKey, c Claims) (string, error) {
	if len(key) != ed25519.PrivateKeySize {
		return "", errors.New("sign token: not an Ed25519 private key")
	}
	if len(c.Audience) == 0 {
		return "", errors.New("sign token: no audience: name the gateway the token is for")
	}
	if c.TTL < 0 {
		return "", fmt.Errorf("sign token: negative time to live %v", c.TTL)
	}
	ttl := c.TTL
	if ttl == 0 {
		ttl = DefaultTTL
	}
	id := IdentityID(key.Public().(ed25519.PublicKey))
	now := time.Now()
	claims := gojwt.MapClaims{
		"sub":   id,
		"names": nonNil(c.Names),
		"aud":   c.Audience,
		"iat":   now.Unix(),
		"nbf":   now.Unix(),
		"exp":   now.Add(ttl).Unix(),
	}
	if len(c.Audience) == 1 {
		claims["aud"] = c.Audience[0]
	}
	if !c.Reusable {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", fmt.Errorf("sign token: %w", err)
		}
		claims["jti"] = base64.RawURLEncoding.EncodeToString(b[:])
	}
	t := gojwt.NewWithClaims(gojwt.SigningMethodEdDSA, claims)
	t.Header["kid"] = id
	s, err := t.SignedString(key)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return s, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// Signer signs a fresh token for every login of an agent. Its Token method
// is a diglett.Config.TokenFunc.
type Signer struct {
	// Key is the identity's key.
	Key ed25519.PrivateKey
	// TTL is how long each token stays valid. Default: DefaultTTL.
	TTL time.Duration
}

// Token signs a token for one login to gateway (HOST:PORT, or a bare
// host) with names: its audience is the gateway's host, its jti random.
func (s *Signer) Token(_ context.Context, gateway string, names []string) (string, error) {
	return Sign(s.Key, Claims{Names: names, Audience: []string{AudienceOf(gateway)}, TTL: s.TTL})
}

// AudienceOf is the audience a token for gateway (HOST:PORT or a bare
// host) carries: the host, without brackets or port.
func AudienceOf(gateway string) string {
	if host, _, err := net.SplitHostPort(gateway); err == nil {
		return host
	}
	return gateway
}
