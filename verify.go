package diglett

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/diglett/diglett/internal/identity"
	"github.com/diglett/diglett/internal/protocol"
)

// tlsConfig builds the agent's TLS configuration for gateway (its address
// as configured, whatever port a transport reaches). The gateway is always
// authenticated, in this order:
//  1. an explicit Fingerprint must match the gateway's key;
//  2. a certificate that verifies against RootCAs (or the system roots) is
//     trusted as is;
//  3. with no RootCAs configured, a self-signed gateway is pinned on first
//     use in the known_gateways file and must keep the same key.
func (c *Config) tlsConfig(gateway string, log *slog.Logger) (*tls.Config, error) {
	host, _, err := net.SplitHostPort(gateway)
	if err != nil {
		return nil, fmt.Errorf("gateway address %q: %w", gateway, err)
	}
	known := identity.KnownGateways{Path: c.KnownGateways}
	if known.Path == "" {
		p, err := identity.DefaultKnownGatewaysPath()
		if err != nil {
			return nil, err
		}
		known.Path = p
	}
	verify := func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("gateway sent no certificate")
		}
		leaf := cs.PeerCertificates[0]
		got := identity.CertFingerprint(leaf)
		if c.Fingerprint != "" {
			if got != c.Fingerprint {
				return &trustError{ErrGatewayKeyMismatch, fmt.Sprintf("gateway key mismatch: gateway %s presented key %s, but the configured fingerprint is %s", gateway, got, c.Fingerprint)}
			}
			return nil
		}
		inter := x509.NewCertPool()
		for _, ic := range cs.PeerCertificates[1:] {
			inter.AddCert(ic)
		}
		_, verr := leaf.Verify(x509.VerifyOptions{Roots: c.RootCAs, DNSName: host, Intermediates: inter})
		if verr == nil {
			return nil
		}
		if c.RootCAs != nil {
			return &trustError{ErrGatewayUntrusted, fmt.Sprintf("gateway certificate not trusted: %v", verr)}
		}
		e, ok, err := known.Lookup(gateway)
		if err != nil {
			return knownGatewaysError(err)
		}
		if !ok {
			// Another session, or another agent process, may have
			// pinned the gateway since the lookup: Add then returns
			// that entry, checked like any other.
			var added bool
			if e, added, err = known.Add(gateway, got); err != nil {
				return knownGatewaysError(err)
			}
			if added {
				log.Warn("pinned the key of a new gateway", "gateway", gateway, "fingerprint", got, "file", known.Path)
				return nil
			}
		}
		if e.Fingerprint != got {
			return &trustError{ErrGatewayKeyMismatch, fmt.Sprintf("gateway key mismatch: the key of gateway %s has CHANGED.\n"+
				"  pinned:    %s (%s line %d)\n"+
				"  presented: %s\n"+
				"Someone may be intercepting the connection, or the gateway was given a new key.\n"+
				"If the change is expected, delete line %d of %s, or run with --fingerprint %s",
				gateway, e.Fingerprint, known.Path, e.Line, got, e.Line, known.Path, got)}
		}
		return nil
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{protocol.ALPN},
		ServerName:         host,
		InsecureSkipVerify: true, // replaced by VerifyConnection above
		VerifyConnection:   verify,
		// Full-size records from the first: the gateway's TLS keeps its
		// record buffer for the session's life, and records that grow
		// a little at a time make it double past one record.
		DynamicRecordSizingDisabled: true,
	}, nil
}

// trustError is a verdict of our gateway verification.
type trustError struct {
	sentinel error
	msg      string
}

func (e *trustError) Error() string { return e.msg }
func (e *trustError) Unwrap() error { return e.sentinel }

// knownGatewaysError makes a fatal trust error of a known_gateways file
// that cannot be used: the agent must not connect (nor pin the gateway
// again) until the user fixes it.
func knownGatewaysError(err error) error {
	var me *identity.MalformedError
	if errors.As(err, &me) {
		return &trustError{ErrGatewayUntrusted, fmt.Sprintf("known_gateways %v\n"+
			"Fix or delete line %d of %s (a deleted gateway is pinned again on first use), or run with --fingerprint.",
			err, me.Line, me.Path)}
	}
	return &trustError{ErrGatewayUntrusted, err.Error()}
}
