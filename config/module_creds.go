package config

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/diglett/diglett/auth/basic"
	"github.com/diglett/diglett/auth/bearer"
	"github.com/diglett/diglett/auth/external"
	"github.com/diglett/diglett/gateway"
)

// basicSettings are the settings of the basic module:
//
//	basic: {file: users.yaml}  # users with hashed passwords (auth/basic)
var basicSettings = Schema{"file": Path}

// newBasic builds the basic module: users and hashed passwords.
func newBasic(s map[string]Setting, _ Env) (gateway.Authenticator, error) {
	f, ok := s["file"]
	if !ok {
		return nil, errors.New("no file: give the users file as {file: users.yaml}")
	}
	return basic.Load(f.Value)
}

// bearerSettings are the settings of the bearer module:
//
//	bearer:
//	  sha256: 9f86d0...   # or token: s3cret, or token_file: ci.token
//	  identity: ci
//	  names: [ci-*]
var bearerSettings = Schema{
	"token":      String,
	"sha256":     String,
	"token_file": Path,
	"identity":   String,
	"names":      List,
}

// newBearer builds the bearer module: one static token.
func newBearer(s map[string]Setting, _ Env) (gateway.Authenticator, error) {
	return bearer.New(bearer.Config{
		Token:     s["token"].Value,
		SHA256:    s["sha256"].Value,
		TokenFile: s["token_file"].Value,
		Identity:  s["identity"].Value,
		Names:     s["names"].List,
	})
}

// externalSettings are the settings of the external module:
//
//	external:
//	  url: https://auth.internal/check
//	  scheme: Bearer     # Authorization: Bearer TOKEN
//	  timeout: 2s        # default 5s
//	  cache: 30s         # default 30s; 0s caches nothing
//	  cache_size: 4096
//	  ca_file: ca.pem    # default: the system roots
var externalSettings = Schema{
	"url":        String,
	"scheme":     String,
	"timeout":    Duration,
	"cache":      Duration,
	"cache_size": Int,
	"ca_file":    Path,
}

// defaultExternalCache is how long the external module keeps answers
// when the file does not say.
const defaultExternalCache = 30 * time.Second

// newExternal builds the external module: an authentication webhook.
func newExternal(s map[string]Setting, env Env) (gateway.Authenticator, error) {
	u, ok := s["url"]
	if !ok {
		return nil, errors.New("no url: give the webhook as {url: https://auth.internal/check}")
	}
	c := external.Config{URL: u.Value, Scheme: s["scheme"].Value, CacheTTL: defaultExternalCache, Logger: env.logger()}
	var err error
	if v, ok := s["timeout"]; ok {
		if c.Timeout, err = time.ParseDuration(v.Value); err != nil || c.Timeout <= 0 {
			return nil, fmt.Errorf("timeout: want a duration above zero such as 2s, got %q", v.Value)
		}
	}
	if v, ok := s["cache"]; ok {
		if c.CacheTTL, err = time.ParseDuration(v.Value); err != nil || c.CacheTTL < 0 {
			return nil, fmt.Errorf("cache: want a duration such as 30s, or 0s for none, got %q", v.Value)
		}
	}
	if v, ok := s["cache_size"]; ok {
		if c.CacheSize, err = strconv.Atoi(v.Value); err != nil || c.CacheSize < 1 {
			return nil, fmt.Errorf("cache_size: want a count above zero, got %q", v.Value)
		}
	}
	if v, ok := s["ca_file"]; ok {
		pem, err := os.ReadFile(v.Value)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no PEM certificates in the file", v.Value)
		}
	}
	return external.New(c)
}
