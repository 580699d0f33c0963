// Package identity holds the gateway's persistent key, the self-signed
// certificate made from it, key fingerprints, and the agent's known_gateways
// file that pins gateways on first use.
package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// KeyFile is the name of the gateway key inside its data dir.
const KeyFile = "gateway.key"

// LoadOrCreateKey loads the gateway key from dir, creating dir and a new
// ECDSA P-256 key (mode 0600) when there is none.
func LoadOrCreateKey(dir string) (key crypto.Signer, created bool, err error) {
	file := filepath.Join(dir, KeyFile)
	data, err := os.ReadFile(file)
	if err == nil {
		key, err := parseKey(data)
		if err != nil {
			return nil, false, fmt.Errorf("gateway key %s: %w", file, err)
		}
		return key, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, fmt.Errorf("gateway key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("data dir: %w", err)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, false, fmt.Errorf("generate gateway key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, false, fmt.Errorf("encode gateway key: %w", err)
	}
	pemData := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	// O_EXCL: two gateways starting on one data dir must not both write.
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return LoadOrCreateKey(dir)
		}
		return nil, false, fmt.Errorf("write gateway key: %w", err)
	}
	if _, err := f.Write(pemData); err != nil {
		f.Close()
		return nil, false, fmt.Errorf("write gateway key: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, false, fmt.Errorf("write gateway key: %w", err)
	}
	return k, true, nil
}

func parseKey(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported key type %T", k)
	}
	return s, nil
}

// SelfSigned makes a self-signed certificate for key, valid for hosts (DNS
// names or IPs). Agents pin the key, not the certificate, so a new
// certificate for the same key keeps the fingerprint.
func SelfSigned(key crypto.Signer, hosts ...string) (tls.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "diglett gateway"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("self-signed certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// Fingerprint is "SHA256:" followed by the unpadded base64 SHA-256 of the
// key's SubjectPublicKeyInfo, the form SSH users know.
func Fingerprint(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("fingerprint: %w", err)
	}
	sum := sha256.Sum256(der)
	return "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:]), nil
}

// CertFingerprint is the Fingerprint of a certificate's public key.
func CertFingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])
}

// ValidFingerprint reports whether s has the form Fingerprint produces.
func ValidFingerprint(s string) error {
	const prefix = "SHA256:"
	if len(s) <= len(prefix) || s[:len(prefix)] != prefix {
		return fmt.Errorf("fingerprint %q: want SHA256:<base64>", s)
	}
	b, err := base64.RawStdEncoding.DecodeString(s[len(prefix):])
	if err != nil || len(b) != sha256.Size {
		return fmt.Errorf("fingerprint %q: want SHA256: followed by 43 base64 characters", s)
	}
	return nil
}
