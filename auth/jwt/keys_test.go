package jwt

import (
	"crypto/ed25519"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "identity.key")
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteKey(file, key); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	got, exposed, err := ReadKey(file)
	if err != nil || exposed || !got.Equal(key) {
		t.Fatalf("ReadKey = %v, exposed %v, %v; want the key written", got != nil, exposed, err)
	}
	other, _ := GenerateKey()
	if err := WriteKey(file, other); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("overwrite: %v, want refused", err)
	}
	if got, _, _ := ReadKey(file); !got.Equal(key) {
		t.Fatal("key overwritten")
	}
	if err := os.Chmod(file, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, exposed, err := ReadKey(file); err != nil || !exposed {
		t.Errorf("group-readable key: exposed %v, %v; want exposed", exposed, err)
	}

	for name, content := range map[string]string{
		"empty":      "",
		"not PEM":    "hello",
		"public key": "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n",
		"bad DER":    "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
		os.WriteFile(p, []byte(content), 0o600)
		if _, _, err := ReadKey(p); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %v, want an error naming the file", name, err)
		}
	}
	if _, _, err := ReadKey(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file: no error")
	}
}

// TestIdentityID checks the thumbprint against RFC 8037's example
// (appendix A.3).
func TestIdentityID(t *testing.T) {
	x, _ := base64.RawURLEncoding.DecodeString("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
	if got, want := IdentityID(ed25519.PublicKey(x)), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"; got != want {
		t.Errorf("IdentityID = %s, want %s", got, want)
	}
}

func TestPublicKeyText(t *testing.T) {
	key, _ := GenerateKey()
	pub := key.Public().(ed25519.PublicKey)
	text := EncodePublicKey(pub)
	got, err := ParsePublicKey(" " + text + "\n")
	if err != nil || !got.Equal(pub) {
		t.Fatalf("ParsePublicKey(EncodePublicKey) = %v, %v", got, err)
	}
	for _, bad := range []string{"", "ed25519:", "rsa:AAAA", text[len("ed25519:"):], text + "AA", "ed25519:" + base64.StdEncoding.EncodeToString(pub), "ed25519:" + strings.Repeat("A", 42)} {
		if _, err := ParsePublicKey(bad); err == nil {
			t.Errorf("ParsePublicKey(%q) accepted", bad)
		}
	}
}

func TestAudienceOf(t *testing.T) {
	for in, want := range map[string]string{
		"gw.example:20000": "gw.example",
		"127.0.0.1:20000":  "127.0.0.1",
		"[::1]:20000":      "::1",
		"gw.example":       "gw.example",
	} {
		if got := AudienceOf(in); got != want {
			t.Errorf("AudienceOf(%q) = %q, want %q", in, got, want)
		}
	}
}
