package jwt

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// publicKeyPrefix starts the text form of an identity's public key.
const publicKeyPrefix = "ed25519:"

// GenerateKey makes a new Ed25519 identity key.
func GenerateKey() (ed25519.PrivateKey, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate identity key: %w", err)
	}
	return key, nil
}

// WriteKey writes key to file as a PEM "PRIVATE KEY" (PKCS #8) readable
// by its owner only (mode 0600). It never overwrites: an existing file is
// an error, so a key in use is not lost by mistake.
func WriteKey(file string, key ed25519.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("identity key: %w", err)
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("identity key %s: the file exists; move it away or choose another file (a key in use is never overwritten)", file)
		}
		return fmt.Errorf("identity key: %w", err)
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		os.Remove(file)
		return fmt.Errorf("identity key %s: %w", file, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(file)
		return fmt.Errorf("identity key %s: %w", file, err)
	}
	return nil
}

// ReadKey reads an identity key written by WriteKey. exposed reports that
// users other than the file's owner may read it (its group or others have
// read permission), which a command line should warn about.
func ReadKey(file string) (key ed25519.PrivateKey, exposed bool, err error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, false, fmt.Errorf("identity key: %w", err)
	}
	st, err := os.Stat(file)
	if err != nil {
		return nil, false, fmt.Errorf("identity key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, false, fmt.Errorf("identity key %s: not a PEM private key (make one with \"diglett keygen\")", file)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, false, fmt.Errorf("identity key %s: %w", file, err)
	}
	key, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, false, fmt.Errorf("identity key %s: a %T, want an Ed25519 key (make one with \"diglett keygen\")", file, k)
	}
	return key, st.Mode().Perm()&0o044 != 0, nil
}

// IdentityID is the identity id of pub: its RFC 7638 JWK thumbprint
// (SHA-256, base64url without padding). Tokens carry it as sub and kid.
func IdentityID(pub ed25519.PublicKey) string {
	// The members of an OKP key's JWK, in lexical order, with no spaces.
	jwk := `{"crv":"Ed25519","kty":"OKP","x":"` + base64.RawURLEncoding.EncodeToString(pub) + `"}`
	sum := sha256.Sum256([]byte(jwk))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// EncodePublicKey is the one-line text form of pub that identity
// registries take: "ed25519:" and the key in base64url without padding.
func EncodePublicKey(pub ed25519.PublicKey) string {
	return publicKeyPrefix + base64.RawURLEncoding.EncodeToString(pub)
}

// ParsePublicKey reads the text form of EncodePublicKey.
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	b64, ok := strings.CutPrefix(strings.TrimSpace(s), publicKeyPrefix)
	if !ok {
		return nil, errors.New(`public key: want "ed25519:" and the key, as printed by "diglett keygen"`)
	}
	raw, err := base64.RawURLEncoding.DecodeString(b64)
	if err != nil || len(raw) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("public key: want %d bytes in base64url without padding after \"ed25519:\"", ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(raw), nil
}
