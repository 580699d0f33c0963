package config

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/diglett/diglett/gateway"
	regexec "github.com/diglett/diglett/register/exec"
	"github.com/diglett/diglett/register/webhook"
)

// execSettings are the settings of the exec module:
//
//	exec:
//	  command: [/etc/diglett/hook, --verbose]  # no shell: [sh, -c, "..."] for one
//	  timeout: 10s                             # default 10s
//	  dir: /var/lib/diglett                    # default the gateway's
var execSettings = Schema{
	"command": List,
	"timeout": Duration,
	"dir":     Path,
}

// newExec builds the exec module: a command run for each event.
func newExec(s map[string]Setting, env Env) (gateway.Registerer, error) {
	c := regexec.Config{Command: s["command"].List, Dir: s["dir"].Value, Logger: env.logger()}
	if len(c.Command) == 0 {
		return nil, errors.New("no command: give it as {command: [/etc/diglett/hook, ARG...]}")
	}
	var err error
	if c.Timeout, err = hookDuration(s, "timeout"); err != nil {
		return nil, err
	}
	return regexec.New(c)
}

// webhookSettings are the settings of the webhook module:
//
//	webhook:
//	  url: https://hooks.internal/diglett
//	  secret_file: webhook.key  # HMAC-SHA256 key; default no signature
//	  timeout: 10s              # default 10s
//	  ca_file: ca.pem           # default: the system roots
var webhookSettings = Schema{
	"url":         String,
	"secret_file": Path,
	"timeout":     Duration,
	"ca_file":     Path,
}

// newWebhook builds the webhook module: each event POSTed to a URL.
func newWebhook(s map[string]Setting, env Env) (gateway.Registerer, error) {
	u, ok := s["url"]
	if !ok {
		return nil, errors.New("no url: give it as {url: https://hooks.internal/diglett}")
	}
	c := webhook.Config{URL: u.Value, Logger: env.logger()}
	var err error
	if c.Timeout, err = hookDuration(s, "timeout"); err != nil {
		return nil, err
	}
	if v, ok := s["secret_file"]; ok {
		key, err := os.ReadFile(v.Value)
		if err != nil {
			return nil, fmt.Errorf("secret_file: %w", err)
		}
		// The key is the file's content less its final line ending.
		key = bytes.TrimSuffix(bytes.TrimSuffix(key, []byte("\n")), []byte("\r"))
		if len(key) == 0 {
			return nil, fmt.Errorf("secret_file %s: empty", v.Value)
		}
		c.Secret = key
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
	return webhook.New(c)
}

// hookDuration is the duration setting key, above zero, or zero when
// it is not set.
func hookDuration(s map[string]Setting, key string) (time.Duration, error) {
	v, ok := s[key]
	if !ok {
		return 0, nil
	}
	d, err := time.ParseDuration(v.Value)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%s: want a duration above zero such as 10s, got %q", key, v.Value)
	}
	return d, nil
}
