// Package jwt is the authentication module of signed identity tokens.
//
// An agent holds an Ed25519 identity key (GenerateKey, WriteKey) and signs
// a short-lived JWT for each login (Signer): sub and kid are its identity
// id (IdentityID), names the names it asks for, aud the gateway. The
// gateway (Authenticator) finds the identity's public key in a Registry,
// checks the token, and lets the identity publish a name only if the name
// is in the token and, with Config.CheckOwners, the Registry says the
// identity owns it. FileRegistry is a registry kept in a YAML file.
//
// Tokens issued by an identity provider (OpenID Connect: RS256 or ES256,
// keys from a JWKS registry) go through the same Authenticator with
// Config.Issuer set; their identity is "oidc:" and their sub.
package jwt

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"strings"
	"time"

	gojwt "github.com/golang-jwt/jwt/v5"

	"github.com/diglett/diglett/gateway"
)

// Defaults of Config.
const (
	DefaultLeeway     = 30 * time.Second
	DefaultNamesClaim = "names"
	// MaxTokenSize bounds a token: a longer one is refused before parsing.
	MaxTokenSize = 8 << 10
	// oidcPrefix starts the identity of a token from an identity provider.
	oidcPrefix = "oidc:"
)

// Claims of the identities Authenticate returns.
const (
	ClaimNames   = "names" // []string: the names (or patterns) in the token
	ClaimSubject = "sub"   // string: the token's subject
	ClaimIssuer  = "iss"   // string: the token's issuer, if any
)

// Config configures an Authenticator.
type Config struct {
	// Registry gives identities' keys and names' owners. Required.
	Registry Registry
	// Audience lists the gateway's own names: a token must be for one of
	// them (its aud). Required, so a token for another gateway is refused.
	Audience []string
	// Issuer, if set, is the iss every token must carry: tokens of an
	// identity provider. Their key is looked up by kid, and their
	// identity is "oidc:" and sub. If empty, tokens are an identity's own:
	// the key is looked up by sub (kid, if present, must equal it), and
	// the identity is sub.
	Issuer string
	// Leeway is the clock skew allowed on exp, nbf and iat.
	// Default: DefaultLeeway; negative: none.
	Leeway time.Duration
	// NamesClaim is the claim that lists the names a token may publish:
	// a list of strings, or one string of names separated by spaces or
	// commas. Default: DefaultNamesClaim.
	NamesClaim string
	// CheckOwners makes Authorize ask the Registry who owns a name: only
	// its owner may publish it. Default: off (the token's names decide).
	CheckOwners bool
	// MaxTTL refuses tokens valid for longer than this (exp minus iat).
	// Default: no bound.
	MaxTTL time.Duration
	// ReplayCache remembers the tokens taken, against replays and to know
	// the sessions the gateway re-checks. Default: a cache of this
	// Authenticator's own, of DefaultReplayCacheSize; give the same one to
	// the Authenticators that replace each other on reloads.
	ReplayCache *ReplayCache
	// Logger logs at Debug the details of refusals that the agent is
	// only told in short ("malformed token"). Default: slog.Default().
	Logger *slog.Logger
}

// Authenticator checks signed tokens. Build it with New.
type Authenticator struct {
	cfg    Config
	parser *gojwt.Parser
	opts   []gojwt.ParserOption // of the validator
	log    *slog.Logger
	seen   *ReplayCache
}

var _ gateway.Authenticator = (*Authenticator)(nil)

// allowedAlgs are the only signing algorithms taken: EdDSA for identity
// keys, RS256 and ES256 for identity providers.
var allowedAlgs = []string{"EdDSA", "RS256", "ES256"}

// New checks cfg and builds an Authenticator.
func New(cfg Config) (*Authenticator, error) {
	if cfg.Registry == nil {
		return nil, errors.New("jwt: no identity registry")
	}
	if len(cfg.Audience) == 0 {
		return nil, errors.New("jwt: no audience: list the names agents reach this gateway by")
	}
	for _, a := range cfg.Audience {
		if strings.TrimSpace(a) == "" {
			return nil, errors.New("jwt: empty audience")
		}
	}
	if cfg.MaxTTL < 0 {
		return nil, fmt.Errorf("jwt: negative max_ttl %v", cfg.MaxTTL)
	}
	switch {
	case cfg.Leeway == 0:
		cfg.Leeway = DefaultLeeway
	case cfg.Leeway < 0:
		cfg.Leeway = 0
	}
	if cfg.NamesClaim == "" {
		cfg.NamesClaim = DefaultNamesClaim
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	opts := []gojwt.ParserOption{
		gojwt.WithLeeway(cfg.Leeway),
		gojwt.WithExpirationRequired(),
		gojwt.WithIssuedAt(),
		gojwt.WithAudience(cfg.Audience...),
	}
	if cfg.Issuer != "" {
		opts = append(opts, gojwt.WithIssuer(cfg.Issuer))
	}
	seen := cfg.ReplayCache
	if seen == nil {
		seen = NewReplayCache(DefaultReplayCacheSize)
	}
	return &Authenticator{
		cfg:    cfg,
		parser: gojwt.NewParser(gojwt.WithValidMethods(allowedAlgs), gojwt.WithoutClaimsValidation()),
		opts:   opts,
		log:    log,
		seen:   seen,
	}, nil
}

// refused is a refusal the agent is told: ErrUnauthorized and reason.
func refused(reason string) error {
	return fmt.Errorf("%w: %s", gateway.ErrUnauthorized, reason)
}

// refusedFor is refused(reason), logging at Debug the detail that the
// agent is not told, for the operator.
func (a *Authenticator) refusedFor(reason string, c gateway.Credentials, detail error) error {
	a.log.Debug("jwt: token refused", "remote", c.Remote, "reason", reason, "detail", detail)
	return refused(reason)
}

// header is the part of a token's header read before parsing it.
type header struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
}

// Authenticate checks the token of c, cheapest checks first, and returns
// its identity. Every refusal wraps gateway.ErrUnauthorized with a short
// reason; a failure of the registry is returned as it is.
//
// A token of an identity's own (no Issuer) with a jti logs in once:
// presented again while it is valid it is refused as replayed, so an
// agent signs a fresh one per login (Signer). Tokens without jti
// (diglett token sign), and a provider's tokens, are bearer tokens, taken
// until they expire. When the gateway checks a live session again
// (Credentials.LoginTime set), the token is judged as of its login, so a
// session outlives its short-lived token, while its key and names are
// looked up as they are now.
func (a *Authenticator) Authenticate(ctx context.Context, c gateway.Credentials) (gateway.Identity, error) {
	tok := c.Token
	switch {
	case tok == "":
		return gateway.Identity{}, refused("no token given")
	case len(tok) > MaxTokenSize:
		return gateway.Identity{}, refused("token too long")
	}
	h, err := readHeader(tok)
	if err != nil {
		return gateway.Identity{}, err
	}

	var keyErr error // the registry's, kept apart from the parser's wrapping
	claims := gojwt.MapClaims{}
	_, err = a.parser.ParseWithClaims(tok, claims, func(t *gojwt.Token) (any, error) {
		k, err := a.key(ctx, h, claims)
		keyErr = err
		return k, err
	})
	switch {
	case keyErr != nil:
		return gateway.Identity{}, keyErr
	case errors.Is(err, gojwt.ErrTokenMalformed):
		return gateway.Identity{}, a.refusedFor("malformed token", c, err)
	case errors.Is(err, gojwt.ErrTokenSignatureInvalid):
		return gateway.Identity{}, a.refusedFor("bad signature", c, err)
	case err != nil:
		return gateway.Identity{}, a.refusedFor("malformed token", c, err)
	}

	sub, _ := claims["sub"].(string)
	iss, _ := claims["iss"].(string)
	jti, _ := claims["jti"].(string)
	names, ok := namesOf(claims[a.cfg.NamesClaim])
	if !ok {
		return gateway.Identity{}, refused("malformed names claim")
	}
	exp, err := claims.GetExpirationTime()
	if err != nil || exp == nil {
		return gateway.Identity{}, refused("token has no expiry")
	}
	if !c.LoginTime.IsZero() {
		// The gateway checking a live session again: its token as of
		// its login, so that the session outlives a short-lived token;
		// its key and its names' owners were looked up as they are now.
		if err := a.validate(c, claims, exp.Time, c.LoginTime); err != nil {
			return gateway.Identity{}, err
		}
	} else {
		if err := a.validate(c, claims, exp.Time, time.Now()); err != nil {
			return gateway.Identity{}, err
		}
		// An identity's own token with a jti logs in once. A provider's
		// tokens are bearer tokens that agents present at every
		// reconnect, jti or not.
		if jti != "" && a.cfg.Issuer == "" && !a.seen.add(sub+"\x00"+jti, exp.Add(a.cfg.Leeway)) {
			return gateway.Identity{}, refused("token already used")
		}
	}

	name := sub
	if a.cfg.Issuer != "" {
		name = oidcPrefix + sub
	}
	return gateway.Identity{
		Name:   name,
		Claims: map[string]any{ClaimNames: names, ClaimSubject: sub, ClaimIssuer: iss},
	}, nil
}

// readHeader reads the header of tok, refusing unsigned tokens and
// algorithms other than allowedAlgs before anything else is parsed.
func readHeader(tok string) (header, error) {
	var h header
	seg, _, ok := strings.Cut(tok, ".")
	if !ok {
		return h, refused("malformed token")
	}
	raw, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil || json.Unmarshal(raw, &h) != nil {
		return h, refused("malformed token")
	}
	switch {
	case strings.EqualFold(h.Alg, "none"):
		return h, refused("unsigned token (alg none)")
	case !containsString(allowedAlgs, h.Alg):
		return h, refused(fmt.Sprintf("signing algorithm %q not allowed", printable(h.Alg)))
	}
	return h, nil
}

// key looks up the key that must have signed a token with header h and
// claims, and checks that it fits the token's algorithm.
func (a *Authenticator) key(ctx context.Context, h header, claims gojwt.MapClaims) (any, error) {
	sub, _ := claims["sub"].(string)
	if sub == "" {
		return nil, refused("token has no subject")
	}
	id := h.Kid
	if a.cfg.Issuer == "" {
		// An identity's own token: its key is its identity's, named by
		// sub; a kid naming another key would let one identity sign as
		// another.
		if h.Kid != "" && h.Kid != sub {
			return nil, refused("key id does not match subject")
		}
		id = sub
	} else if id == "" {
		id = sub
	}
	k, err := a.cfg.Registry.Key(ctx, id)
	switch {
	case errors.Is(err, ErrUnknownIdentity):
		return nil, refused("unknown identity key")
	case err != nil:
		return nil, fmt.Errorf("jwt: identity registry: %w", err)
	}
	fits := false
	switch k.(type) {
	case ed25519.PublicKey:
		fits = h.Alg == "EdDSA"
	case *rsa.PublicKey:
		fits = h.Alg == "RS256"
	case *ecdsa.PublicKey:
		fits = h.Alg == "ES256"
	}
	if !fits {
		return nil, refused("key does not fit the token's algorithm")
	}
	return k, nil
}

// validate checks the token's times as of now, its audience and issuer.
func (a *Authenticator) validate(c gateway.Credentials, claims gojwt.MapClaims, exp, now time.Time) error {
	if _, ok := claims["aud"]; !ok {
		return refused("token has no audience")
	}
	if _, ok := claims["iss"]; !ok && a.cfg.Issuer != "" {
		return refused("token has no issuer")
	}
	opts := append(a.opts[:len(a.opts):len(a.opts)], gojwt.WithTimeFunc(func() time.Time { return now }))
	v := gojwt.NewValidator(opts...)
	if err := v.Validate(claims); err != nil {
		for _, r := range []struct {
			err    error
			reason string
		}{
			{gojwt.ErrTokenExpired, "token expired"},
			{gojwt.ErrTokenNotValidYet, "token not yet valid"},
			{gojwt.ErrTokenUsedBeforeIssued, "token issued in the future"},
			{gojwt.ErrTokenInvalidAudience, "wrong audience"},
			{gojwt.ErrTokenInvalidIssuer, "wrong issuer"},
		} {
			if errors.Is(err, r.err) {
				return refused(r.reason)
			}
		}
		return a.refusedFor("malformed claims", c, err)
	}
	if a.cfg.MaxTTL > 0 {
		start := now
		if iat, err := claims.GetIssuedAt(); err == nil && iat != nil && iat.Before(start) {
			start = iat.Time
		}
		if exp.Sub(start) > a.cfg.MaxTTL {
			return refused(fmt.Sprintf("token valid for longer than %v", a.cfg.MaxTTL))
		}
	}
	return nil
}

// namesOf reads a names claim: a list of strings, or a string of names
// separated by spaces or commas. An absent claim is no names.
func namesOf(v any) ([]string, bool) {
	switch v := v.(type) {
	case nil:
		return nil, true
	case string:
		return strings.FieldsFunc(v, func(r rune) bool { return r == ' ' || r == ',' }), true
	case []any:
		out := make([]string, 0, len(v))
		for _, it := range v {
			s, ok := it.(string)
			if !ok {
				return nil, false
			}
			out = append(out, s)
		}
		return out, true
	}
	return nil, false
}

// Authorize allows name if it matches one of the token's names and, with
// Config.CheckOwners, the registry says id owns it.
func (a *Authenticator) Authorize(ctx context.Context, id gateway.Identity, name string) error {
	names, _ := id.Claims[ClaimNames].([]string)
	in := false
	for _, p := range names {
		if ok, _ := path.Match(p, name); ok {
			in = true
			break
		}
	}
	if !in {
		return fmt.Errorf("%w: name not in token", gateway.ErrForbidden)
	}
	if !a.cfg.CheckOwners {
		return nil
	}
	owner, err := a.cfg.Registry.Owner(ctx, name)
	switch {
	case errors.Is(err, ErrNoOwner):
		return fmt.Errorf("%w: name has no owner", gateway.ErrForbidden)
	case err != nil:
		return fmt.Errorf("jwt: name registry: %w", err)
	case owner != id.Name:
		return fmt.Errorf("%w: name owned by another identity", gateway.ErrForbidden)
	}
	return nil
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// printable bounds and cleans a value from a token for an error message.
func printable(s string) string {
	if len(s) > 16 {
		s = s[:16] + "..."
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}
