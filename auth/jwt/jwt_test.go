package jwt

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	gojwt "github.com/golang-jwt/jwt/v5"

	"github.com/diglett/diglett/gateway"
)

// mapRegistry is a Registry in memory; fail makes every answer an error.
type mapRegistry struct {
	keys   map[string]crypto.PublicKey
	owners map[string]string
	fail   error
}

func (r *mapRegistry) Key(_ context.Context, id string) (crypto.PublicKey, error) {
	if r.fail != nil {
		return nil, r.fail
	}
	k, ok := r.keys[id]
	if !ok {
		return nil, ErrUnknownIdentity
	}
	return k, nil
}

func (r *mapRegistry) Owner(_ context.Context, name string) (string, error) {
	if r.fail != nil {
		return "", r.fail
	}
	o, ok := r.owners[name]
	if !ok {
		return "", ErrNoOwner
	}
	return o, nil
}

func mustKey(t *testing.T) (ed25519.PrivateKey, string) {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k, IdentityID(k.Public().(ed25519.PublicKey))
}

// mint signs claims with key by method, with kid in the header if set.
func mint(t *testing.T, method gojwt.SigningMethod, key any, kid string, claims gojwt.MapClaims) string {
	t.Helper()
	tok := gojwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var remote1 = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40001}
var remote2 = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40002}

func TestAuthenticate(t *testing.T) {
	alice, aliceID := mustKey(t)
	stranger, strangerID := mustKey(t)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	reg := &mapRegistry{keys: map[string]crypto.PublicKey{
		aliceID: alice.Public(),
		"rsa-1": &rsaKey.PublicKey,
		"ec-1":  &ecKey.PublicKey,
	}}
	own, err := New(Config{Registry: reg, Audience: []string{"gw.example", "127.0.0.1"}, MaxTTL: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	oidc, err := New(Config{Registry: reg, Audience: []string{"diglett"}, Issuer: "https://idp.example", NamesClaim: "diglett_names"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	base := func(mod func(gojwt.MapClaims)) gojwt.MapClaims {
		c := gojwt.MapClaims{"sub": aliceID, "names": []string{"web"}, "aud": "gw.example",
			"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(5 * time.Minute).Unix()}
		if mod != nil {
			mod(c)
		}
		return c
	}
	edsa := gojwt.SigningMethodEdDSA
	pubBytes := []byte(alice.Public().(ed25519.PublicKey))
	none := mint(t, gojwt.SigningMethodNone, gojwt.UnsafeAllowNoneSignatureType, aliceID, base(nil))

	for _, tc := range []struct {
		name   string
		a      *Authenticator
		token  string
		reason string // "" for success
	}{
		{"own token", own, mint(t, edsa, alice, aliceID, base(nil)), ""},
		{"no kid", own, mint(t, edsa, alice, "", base(nil)), ""},
		{"second audience", own, mint(t, edsa, alice, aliceID, base(func(c gojwt.MapClaims) { c["aud"] = []string{"other", "127.0.0.1"} })), ""},
		{"oidc RS256", oidc, mint(t, gojwt.SigningMethodRS256, rsaKey, "rsa-1", gojwt.MapClaims{"sub": "u1", "iss": "https://idp.example", "aud": "diglett", "exp": now.Add(time.Hour).Unix(), "diglett_names": "web api"}), ""},
		{"oidc ES256", oidc, mint(t, gojwt.SigningMethodES256, ecKey, "ec-1", gojwt.MapClaims{"sub": "u2", "iss": "https://idp.example", "aud": "diglett", "exp": now.Add(time.Hour).Unix(), "diglett_names": []string{"web"}}), ""},

		{"empty", own, "", "no token given"},
		{"one megabyte", own, strings.Repeat("a", 1<<20), "token too long"},
		{"just over the bound", own, strings.Repeat("a", MaxTokenSize+1), "token too long"},
		{"not a JWT", own, "s3cret", "malformed token"},
		{"garbage header", own, "!!!.e30.", "malformed token"},
		{"garbage payload", own, "eyJhbGciOiJFZERTQSJ9.!!!.xx", "malformed token"},
		{"alg none", own, none, "unsigned token (alg none)"},
		{"HS256 with the public key", own, mint(t, gojwt.SigningMethodHS256, pubBytes, aliceID, base(nil)), `signing algorithm "HS256" not allowed`},
		{"PS256", own, mint(t, gojwt.SigningMethodPS256, rsaKey, "rsa-1", base(nil)), `signing algorithm "PS256" not allowed`},
		{"unknown key", own, mint(t, edsa, stranger, strangerID, base(func(c gojwt.MapClaims) { c["sub"] = strangerID })), "unknown identity key"},
		{"kid of another identity", own, mint(t, edsa, alice, aliceID, base(func(c gojwt.MapClaims) { c["sub"] = strangerID })), "key id does not match subject"},
		{"no subject", own, mint(t, edsa, alice, aliceID, base(func(c gojwt.MapClaims) { delete(c, "sub") })), "token has no subject"},
		{"bad signature", own, mint(t, edsa, stranger, aliceID, base(nil)), "bad signature"},
		{"RS256 on an Ed25519 identity", own, mint(t, gojwt.SigningMethodRS256, rsaKey, aliceID, base(nil)), "key does not fit the token's algorithm"},
		{"expired", own, mint(t, edsa, alice, aliceID, base(func(c gojwt.MapClaims) { c["exp"] = now.Add(-time.Minute).Unix() })), "token expired"},
		{"not yet valid", own, mint(t, edsa, alice, aliceID, base(func(c gojwt.MapClaims) { c["nbf"] = now.Add(time.Minute).Unix() })), "token not yet valid"},
		{"issued in the future", own, mint(t, edsa, alice, aliceID, base(func(c gojwt.MapClaims) { c["iat"] = now.Add(time.Minute).Unix() })), "token issued in the future"},
		{"no expiry", own, mint(t, edsa, alice, aliceID, base(func(c gojwt.MapClaims) { delete(c, "exp") })), "token has no expiry"},
		{"wrong audience", own, mint(t, edsa, alice, aliceID, base(func(c gojwt.MapClaims) { c["aud"] = "other.example" })), "wrong audience"},
		{"no audience", own, mint(t, edsa, alice, aliceID, base(func(c gojwt.MapClaims) { delete(c, "aud") })), "token has no audience"},
		{"valid for too long", own, mint(t, edsa, alice, aliceID, base(func(c gojwt.MapClaims) { c["exp"] = now.Add(72 * time.Hour).Unix() })), "token valid for longer than 48h0m0s"},
		{"names not strings", own, mint(t, edsa, alice, aliceID, base(func(c gojwt.MapClaims) { c["names"] = []int{1} })), "malformed names claim"},
		{"wrong issuer", oidc, mint(t, gojwt.SigningMethodRS256, rsaKey, "rsa-1", gojwt.MapClaims{"sub": "u1", "iss": "https://evil.example", "aud": "diglett", "exp": now.Add(time.Hour).Unix()}), "wrong issuer"},
		{"no issuer", oidc, mint(t, gojwt.SigningMethodRS256, rsaKey, "rsa-1", gojwt.MapClaims{"sub": "u1", "aud": "diglett", "exp": now.Add(time.Hour).Unix()}), "token has no issuer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := tc.a.Authenticate(context.Background(), gateway.Credentials{Token: tc.token, Remote: remote1})
			if tc.reason == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if id.Name == "" || len(id.Claims[ClaimNames].([]string)) == 0 {
					t.Fatalf("identity %+v: want a name and names", id)
				}
				return
			}
			if !errors.Is(err, gateway.ErrUnauthorized) {
				t.Fatalf("err = %v, want ErrUnauthorized", err)
			}
			if got := err.Error(); got != gateway.ErrUnauthorized.Error()+": "+tc.reason {
				t.Fatalf("err = %q, want reason %q", got, tc.reason)
			}
		})
	}
}

func TestIdentities(t *testing.T) {
	alice, aliceID := mustKey(t)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	reg := &mapRegistry{keys: map[string]crypto.PublicKey{aliceID: alice.Public(), "rsa-1": &rsaKey.PublicKey}}
	own, _ := New(Config{Registry: reg, Audience: []string{"gw.example"}})
	s := &Signer{Key: alice}
	tok, err := s.Token(context.Background(), "gw.example:20000", []string{"web", "api"})
	if err != nil {
		t.Fatal(err)
	}
	id, err := own.Authenticate(context.Background(), gateway.Credentials{Token: tok, Remote: remote1})
	if err != nil {
		t.Fatal(err)
	}
	if id.Name != aliceID || id.Claims[ClaimSubject] != aliceID || strings.Join(id.Claims[ClaimNames].([]string), ",") != "web,api" {
		t.Errorf("identity %+v, want %s with names web,api", id, aliceID)
	}

	oidc, _ := New(Config{Registry: reg, Audience: []string{"diglett"}, Issuer: "https://idp.example", NamesClaim: "groups"})
	tok = mint(t, gojwt.SigningMethodRS256, rsaKey, "rsa-1", gojwt.MapClaims{"sub": "system:serviceaccount:ci:bot",
		"iss": "https://idp.example", "aud": []string{"diglett"}, "exp": time.Now().Add(time.Hour).Unix(), "groups": "web,ci-1"})
	id, err = oidc.Authenticate(context.Background(), gateway.Credentials{Token: tok, Remote: remote1})
	if err != nil {
		t.Fatal(err)
	}
	if id.Name != "oidc:system:serviceaccount:ci:bot" || strings.Join(id.Claims[ClaimNames].([]string), ",") != "web,ci-1" || id.Claims[ClaimIssuer] != "https://idp.example" {
		t.Errorf("identity %+v", id)
	}
}

func TestReplay(t *testing.T) {
	alice, aliceID := mustKey(t)
	reg := &mapRegistry{keys: map[string]crypto.PublicKey{aliceID: alice.Public()}}
	a, _ := New(Config{Registry: reg, Audience: []string{"127.0.0.1"}})
	ctx := context.Background()
	login := func(tok string, remote net.Addr) error {
		_, err := a.Authenticate(ctx, gateway.Credentials{Token: tok, Remote: remote})
		return err
	}

	once, err := Sign(alice, Claims{Names: []string{"web"}, Audience: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := login(once, remote1); err != nil {
		t.Fatal(err)
	}
	if err := login(once, remote2); err == nil || err.Error() != gateway.ErrUnauthorized.Error()+": token already used" {
		t.Fatalf("replay from another address: %v, want token already used", err)
	}
	if err := login(once, nil); err == nil || !errors.Is(err, gateway.ErrUnauthorized) {
		t.Fatalf("replay with no address: %v, want refused", err)
	}
	// The gateway re-checking the session: its credentials, with the
	// time it logged in.
	if _, err := a.Authenticate(ctx, gateway.Credentials{Token: once, Remote: remote1, LoginTime: time.Now()}); err != nil {
		t.Fatalf("re-check of the session: %v", err)
	}
	fresh, _ := Sign(alice, Claims{Names: []string{"web"}, Audience: []string{"127.0.0.1"}})
	if err := login(fresh, remote2); err != nil {
		t.Fatalf("fresh token: %v", err)
	}

	bearer, _ := Sign(alice, Claims{Names: []string{"web"}, Audience: []string{"127.0.0.1"}, TTL: time.Hour, Reusable: true})
	for i, r := range []net.Addr{remote1, remote2, remote1, nil} {
		if err := login(bearer, r); err != nil {
			t.Fatalf("bearer token, login %d: %v", i+1, err)
		}
	}
}

// TestRecheckAfterExpiry: a session whose token expired since it logged
// in is kept by a re-check, while a new login with the token is refused.
func TestRecheckAfterExpiry(t *testing.T) {
	alice, aliceID := mustKey(t)
	reg := &mapRegistry{keys: map[string]crypto.PublicKey{aliceID: alice.Public()}}
	a, _ := New(Config{Registry: reg, Audience: []string{"127.0.0.1"}, Leeway: -1})
	now := time.Now()
	tok := mint(t, gojwt.SigningMethodEdDSA, alice, aliceID, gojwt.MapClaims{"sub": aliceID, "aud": "127.0.0.1",
		"names": []string{"web"}, "iat": now.Unix(), "exp": now.Add(2 * time.Second).Unix(), "jti": "j1"})
	ctx := context.Background()
	if _, err := a.Authenticate(ctx, gateway.Credentials{Token: tok, Remote: remote1}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := a.Authenticate(ctx, gateway.Credentials{Token: tok, Remote: remote2})
		if err != nil && err.Error() == gateway.ErrUnauthorized.Error()+": token expired" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("token never expired: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // waiting for the clock itself
	}
	recheck := gateway.Credentials{Token: tok, Remote: remote1, LoginTime: now}
	if _, err := a.Authenticate(ctx, recheck); err != nil {
		t.Fatalf("re-check of the session after expiry: %v", err)
	}
	// After a reload, a new Authenticator knows the session by its login
	// time alone; it still checks the audience: a reload that changed it
	// refuses the session.
	other, _ := New(Config{Registry: reg, Audience: []string{"127.0.0.1"}, Leeway: -1})
	if _, err := other.Authenticate(ctx, recheck); err != nil {
		t.Fatalf("re-check after a reload: %v", err)
	}
	moved, _ := New(Config{Registry: reg, Audience: []string{"gw.example"}})
	if _, err := moved.Authenticate(ctx, recheck); err == nil || !strings.HasSuffix(err.Error(), "wrong audience") {
		t.Fatalf("re-check after the audience changed: %v, want wrong audience", err)
	}
	// A token that was already expired at its login stays refused.
	late := recheck
	late.LoginTime = now.Add(time.Minute)
	if _, err := a.Authenticate(ctx, late); err == nil {
		t.Fatal("a re-check took a token that had expired when its session logged in")
	}
}

// A provider's tokens are bearer tokens: the same one, jti and all, logs
// in at every reconnect.
func TestProviderTokensReusable(t *testing.T) {
	alice, aliceID := mustKey(t)
	reg := &mapRegistry{keys: map[string]crypto.PublicKey{aliceID: alice.Public()}}
	a, _ := New(Config{Registry: reg, Audience: []string{"gw"}, Issuer: "https://idp.example"})
	now := time.Now()
	tok := mint(t, gojwt.SigningMethodEdDSA, alice, aliceID, gojwt.MapClaims{"sub": "bot", "aud": "gw", "iss": "https://idp.example",
		"names": []string{"web"}, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(), "jti": "k8s-1"})
	for i := range 3 {
		if _, err := a.Authenticate(context.Background(), gateway.Credentials{Token: tok, Remote: remote1}); err != nil {
			t.Fatalf("login %d: %v", i+1, err)
		}
	}
}

func TestRegistryFailure(t *testing.T) {
	alice, aliceID := mustKey(t)
	down := errors.New("registry down")
	reg := &mapRegistry{fail: down}
	a, _ := New(Config{Registry: reg, Audience: []string{"gw"}, CheckOwners: true})
	tok, _ := Sign(alice, Claims{Names: []string{"web"}, Audience: []string{"gw"}})
	_, err := a.Authenticate(context.Background(), gateway.Credentials{Token: tok})
	if !errors.Is(err, down) || errors.Is(err, gateway.ErrUnauthorized) {
		t.Fatalf("Authenticate: %v, want the registry's failure, not a refusal", err)
	}
	err = a.Authorize(context.Background(), gateway.Identity{Name: aliceID, Claims: map[string]any{ClaimNames: []string{"web"}}}, "web")
	if !errors.Is(err, down) || errors.Is(err, gateway.ErrForbidden) {
		t.Fatalf("Authorize: %v, want the registry's failure, not a refusal", err)
	}
}

func TestAuthorize(t *testing.T) {
	reg := &mapRegistry{owners: map[string]string{"web": "alice", "demo-1": "alice", "api": "bob"}}
	owners, _ := New(Config{Registry: reg, Audience: []string{"gw"}, CheckOwners: true})
	names, _ := New(Config{Registry: reg, Audience: []string{"gw"}})
	alice := gateway.Identity{Name: "alice", Claims: map[string]any{ClaimNames: []string{"web", "api", "demo-*", "free"}}}
	for _, tc := range []struct {
		a      *Authenticator
		name   string
		reason string
	}{
		{owners, "web", ""},
		{owners, "demo-1", ""},
		{owners, "api", "name owned by another identity"},
		{owners, "free", "name has no owner"},
		{owners, "other", "name not in token"},
		{names, "api", ""},
		{names, "free", ""},
		{names, "demo-2", ""},
		{names, "other", "name not in token"},
	} {
		err := tc.a.Authorize(context.Background(), alice, tc.name)
		if tc.reason == "" {
			if err != nil {
				t.Errorf("%s (owners %v): %v", tc.name, tc.a.cfg.CheckOwners, err)
			}
			continue
		}
		if !errors.Is(err, gateway.ErrForbidden) || !strings.HasSuffix(err.Error(), ": "+tc.reason) {
			t.Errorf("%s (owners %v): %v, want ErrForbidden: %s", tc.name, tc.a.cfg.CheckOwners, err, tc.reason)
		}
	}
	if err := owners.Authorize(context.Background(), gateway.Identity{Name: "alice"}, "web"); !errors.Is(err, gateway.ErrForbidden) {
		t.Errorf("identity without names: %v, want ErrForbidden", err)
	}
}

func TestNewRefuses(t *testing.T) {
	reg := &mapRegistry{}
	for name, cfg := range map[string]Config{
		"no registry":    {Audience: []string{"gw"}},
		"no audience":    {Registry: reg},
		"empty audience": {Registry: reg, Audience: []string{" "}},
		"negative ttl":   {Registry: reg, Audience: []string{"gw"}, MaxTTL: -time.Second},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
