// Package identity holds the gateway's persistent key, the self-signed
// certificate made from it, key fingerprints, and the agent's known_gateways
// file that pins gateways on first use.
package identity

import (
	"bytes"
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
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/diglett/diglett/internal/statefile"
)

// KeyFile is the name of the gateway key inside its data dir.
const KeyFile = "gateway.key"

// Key is the gateway key as OpenKey found or made it.
type Key struct {
	Signer  crypto.Signer
	File    string // where it is kept
	Created bool   // made by this call
	// Warning, when not empty, says that other users may read the file,
	// and how to fix it.
	Warning string
}

// createAttempts bounds the rounds of OpenKey's read/create race: the file
// is missing, another process creates it before we do, then it is gone
// again before we read it, and so on.
const createAttempts = 3

// OpenKey loads the gateway key from dir, creating dir and a new ECDSA
// P-256 key (mode 0600) when there is none. A key file that is there but
// cannot be read or parsed (a symbolic link to nothing, a directory, no
// permission, garbage) is an error naming the file and the fix; it is never
// replaced.
func OpenKey(dir string) (Key, error) {
	file := filepath.Join(dir, KeyFile)
	for range createAttempts {
		data, warning, err := statefile.ReadPrivate(file)
		if err == nil {
			s, err := parseKey(data)
			if err != nil {
				return Key{}, fmt.Errorf("gateway key %s: %w: restore it from a backup, or move it away to make a new key "+
					"(agents that pinned the old key then refuse the gateway until told the new one)", file, err)
			}
			return Key{Signer: s, File: file, Warning: warning}, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return Key{}, fmt.Errorf("gateway key: %w", err)
		}
		s, err := createKey(dir, file)
		if err == nil {
			return Key{Signer: s, File: file, Created: true}, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return Key{}, err
		}
		// Another gateway on this data dir created it first: use its.
	}
	return Key{}, fmt.Errorf("gateway key %s: created and removed again %d times while this gateway started: is another program changing the data dir?", file, createAttempts)
}

// LoadOrCreateKey is OpenKey for callers that need only the key.
func LoadOrCreateKey(dir string) (key crypto.Signer, created bool, err error) {
	k, err := OpenKey(dir)
	return k.Signer, k.Created, err
}

// createKey makes a new key and writes it to file, whole, unless something
// is there already (an error wrapping fs.ErrExist).
func createKey(dir, file string) (crypto.Signer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate gateway key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("encode gateway key: %w", err)
	}
	pemData := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	// Exclusive: two gateways starting on one data dir must not both
	// write, and neither may read a half-written key.
	if err := statefile.CreateExclusive(file, pemData, 0o600); err != nil {
		return nil, fmt.Errorf("write gateway key: %w", err)
	}
	return k, nil
}

func parseKey(data []byte) (crypto.Signer, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("the file is empty")
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("not a PEM private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("not a PEM private key: %w", err)
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
