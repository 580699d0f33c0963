package jwt

import (
	"context"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFileRegistry(t *testing.T) {
	alice, aliceID := mustKey(t)
	bot, botID := mustKey(t)
	file := filepath.Join(t.TempDir(), "identities.yaml")
	os.WriteFile(file, []byte(`identities:
  alice: "`+EncodePublicKey(alice.Public().(ed25519.PublicKey))+`"
  build-bot: `+EncodePublicKey(bot.Public().(ed25519.PublicKey))+`
names:
  example: alice
  "ci-*": build-bot
  ci-main: `+aliceID+`
  "*": build-bot
`), 0o600)
	r, err := LoadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if k, err := r.Key(ctx, aliceID); err != nil || !alice.Public().(ed25519.PublicKey).Equal(k) {
		t.Errorf("Key(alice) = %v, %v", k, err)
	}
	if _, err := r.Key(ctx, "alice"); !errors.Is(err, ErrUnknownIdentity) {
		t.Errorf("Key by label: %v, want ErrUnknownIdentity (tokens carry ids)", err)
	}
	for name, want := range map[string]string{"example": aliceID, "ci-7": botID, "ci-main": aliceID, "other": botID} {
		if got, err := r.Owner(ctx, name); err != nil || got != want {
			t.Errorf("Owner(%s) = %q, %v; want %q", name, got, err, want)
		}
	}
	if l, ok := r.Label(botID); !ok || l != "build-bot" {
		t.Errorf("Label = %q, %v", l, ok)
	}

	only, err := ParseFile([]byte("identities:\n  alice: " + EncodePublicKey(alice.Public().(ed25519.PublicKey)) + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := only.Owner(ctx, "example"); !errors.Is(err, ErrNoOwner) {
		t.Errorf("Owner of an unlisted name: %v, want ErrNoOwner", err)
	}
}

func TestFileRegistryErrors(t *testing.T) {
	alice, _ := mustKey(t)
	pub := EncodePublicKey(alice.Public().(ed25519.PublicKey))
	for _, tc := range []struct {
		name, src, want string
	}{
		{"empty", "", ": empty file"},
		{"not YAML", "identities: [", ": not valid YAML"},
		{"a list", "- a\n", ":1: want a mapping with identities and names, got a list"},
		{"unknown key", "identities:\n  a: " + pub + "\nowners: {}\n", `:3: unknown key "owners"`},
		{"twice", "identities:\n  a: " + pub + "\nidentities:\n  b: " + pub + "\n", ":3: identities given twice"},
		{"no identities", "names:\n  web: a\n", ":1: no identities"},
		{"identities a list", "identities:\n  - " + pub + "\n", ":2: identities: want a mapping, got a list"},
		{"bad key", "identities:\n  alice: ed25519:AAAA\n", ":2: identities: alice: public key: want 32 bytes"},
		{"no prefix", "identities:\n  alice: abc\n", `:2: identities: alice: public key: want "ed25519:"`},
		{"key nothing", "identities:\n  alice:\n", ":2: identities: alice: want a string, got nothing"},
		{"same key twice", "identities:\n  a: " + pub + "\n  b: " + pub + "\n", ":3: identities: b: same key as a"},
		{"label twice", "identities:\n  a: " + pub + "\n  a: " + pub + "\n", `:3: identities: "a" given twice (first on line 2)`},
		{"label with space", "identities:\n  \"a b\": " + pub + "\n", `:2: identities: label "a b"`},
		{"unknown owner", "identities:\n  a: " + pub + "\nnames:\n  web: bob\n", `:4: names: web: owner "bob" is not under identities`},
		{"bad name", "identities:\n  a: " + pub + "\nnames:\n  Web_1: a\n", `:4: names: name "Web_1"`},
		{"bad pattern", "identities:\n  a: " + pub + "\nnames:\n  \"[x\": a\n", `:4: names: name pattern "[x"`},
		{"name twice", "identities:\n  a: " + pub + "\nnames:\n  web: a\n  web: a\n", `:5: names: "web" given twice`},
		{"owner a list", "identities:\n  a: " + pub + "\nnames:\n  web: [a]\n", ":4: names: web: want a string, got a list"},
	} {
		_, err := ParseFile([]byte(tc.src))
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q...", tc.name, err, tc.want)
		}
	}
	if _, err := LoadFile(filepath.Join(t.TempDir(), "none.yaml")); err == nil || !strings.HasPrefix(err.Error(), "identities file: ") {
		t.Errorf("missing file: %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("identities: {}\n"), 0o600)
	if _, err := LoadFile(bad); err == nil || err.Error() != "identities file "+bad+":1: no identities: list them as identities: {LABEL: \"ed25519:...\"}" {
		t.Errorf("bad file: %v, want the file and line", err)
	}
}
