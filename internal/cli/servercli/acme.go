package servercli

import (
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/caddyserver/certmagic"

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/autotls"
	"github.com/diglett/diglett/internal/metrics"
)

// acmeManager obtains certificates for the hosts of srv's tunnels, and only
// for those, keeping them under the data dir. Challenges are answered on the
// gateway's own HTTP (hl) and HTTPS (tl) listeners; a nil one turns its
// challenge type off. Each order that ends is counted in mtr.
//
// dns, when set, answers the DNS-01 challenge through the dns section's
// name server, and a certificate for *.DOMAIN and DOMAIN is obtained at
// start: the tunnels' hosts under DOMAIN are served it, with no order of
// their own and nothing asked of port 80.
//
// storage, when set, keeps the account and certificates instead of the
// data dir: a cluster's nodes share them there, so one orders and all
// serve.
func (c *serverCmd) acmeManager(dataDir string, srv *gateway.Server, hl, tl net.Listener, dns *dnsACME, storage certmagic.Storage, mtr *metrics.Metrics, log *slog.Logger) (*autotls.Manager, error) {
	cfg := autotls.Config{
		Email:   c.ACMEEmail,
		CA:      c.ACMECA,
		Staging: c.ACMEStaging,
		Dir:     filepath.Join(dataDir, "certs"),
		Allow:   srv.HostAllowed,
		Logger:  log,

		OnCertificate: mtr.CertificateOrdered,
	}
	if storage != nil {
		cfg.Storage, cfg.Dir = storage, ""
	}
	if hl != nil {
		cfg.HTTPAddr = hl.Addr().String()
	} else {
		cfg.DisableHTTP01 = true
	}
	if tl != nil {
		cfg.HTTPSAddr = tl.Addr().String()
	} else {
		cfg.DisableTLSALPN01 = true
	}
	if dns != nil {
		domain := strings.ToLower(strings.TrimSuffix(c.Domain, "."))
		cfg.DNS01 = dns.provider
		cfg.DNSResolvers = dns.resolvers
		cfg.Names = []string{"*." + domain, domain}
	}
	if c.ACMECARoot != "" {
		pem, err := os.ReadFile(c.ACMECARoot)
		if err != nil {
			return nil, fmt.Errorf("--acme-ca-root: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--acme-ca-root %s: no PEM certificates in the file", c.ACMECARoot)
		}
	}
	return autotls.New(cfg)
}

// dnsACME is how the dns section answers the DNS-01 challenge.
type dnsACME struct {
	provider  certmagic.DNSProvider
	resolvers []string // where propagation is checked; nil: the system's
}
