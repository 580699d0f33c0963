package jwt

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"errors"
	"testing"

	"github.com/diglett/diglett/gateway"
)

// FuzzAuthenticate feeds arbitrary tokens to an Authenticator: it must
// never panic, and never fail other than by a refusal.
func FuzzAuthenticate(f *testing.F) {
	key := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	id := IdentityID(key.Public().(ed25519.PublicKey))
	a, err := New(Config{Registry: &mapRegistry{keys: map[string]crypto.PublicKey{id: key.Public()}}, Audience: []string{"gw"}})
	if err != nil {
		f.Fatal(err)
	}
	good, err := Sign(key, Claims{Names: []string{"web"}, Audience: []string{"gw"}, Reusable: true})
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{good, "", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", "eyJhbGciOiJFZERTQSJ9.e30.AAAA", good[:len(good)-3]} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		_, err := a.Authenticate(context.Background(), gateway.Credentials{Token: tok})
		if err != nil && !errors.Is(err, gateway.ErrUnauthorized) {
			t.Fatalf("%q: %v: not a refusal", tok, err)
		}
	})
}

// FuzzParseFile feeds arbitrary registry files to ParseFile: it must never
// panic, and its errors must say where.
func FuzzParseFile(f *testing.F) {
	f.Add([]byte("identities:\n  alice: ed25519:11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\nnames:\n  web: alice\n  \"ci-*\": alice\n"))
	f.Add([]byte("identities: [\n"))
	f.Add([]byte("names: {a: b}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseFile(data)
		if err != nil {
			if err.Error() == "" || err.Error()[0] != ':' {
				t.Fatalf("error %q does not start with \":\"", err)
			}
			return
		}
		r.Owner(context.Background(), "web")
	})
}
