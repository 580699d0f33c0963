package quictransport

import (
	"crypto"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
)

// resetKeyInfo binds the derived key to its one use.
const resetKeyInfo = "diglett QUIC stateless reset key v1"

// ResetKey derives a listener's stateless reset key (ListenOptions.ResetKey)
// from the server's private key, with HKDF-SHA256 over its PKCS#8 encoding:
// the same key after a restart, as secret as the private key, and telling
// nothing about it. It fails for a key that cannot be encoded (one held in
// a hardware module, say).
func ResetKey(priv crypto.PrivateKey) (*[32]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("stateless reset key: %w", err)
	}
	b, err := hkdf.Key(sha256.New, der, nil, resetKeyInfo, 32)
	if err != nil {
		return nil, fmt.Errorf("stateless reset key: %w", err)
	}
	return (*[32]byte)(b), nil
}
