package config

import (
	"errors"
	"strconv"

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/register/traefik"
)

// traefikSettings are the settings of the traefik module (register/traefik):
//
//	traefik:
//	  dir: /etc/traefik/dynamic        # required: the file provider's directory
//	  entry_points: [websecure]        # default: the proxy's default entry points
//	  middlewares: [auth@file]         # default: none
//	  cert_resolver: le                # default: no tls section
//	  upstream: 127.0.0.1              # where the proxy reaches the tunnels' ports
//	  tls_passthrough: false           # true: TCP routers on HostSNI, TLS passed through
//	  http_provider: 127.0.0.1:8081    # default: off; serves the JSON at /traefik
var traefikSettings = Schema{
	"dir":             Path,
	"entry_points":    List,
	"middlewares":     List,
	"cert_resolver":   String,
	"upstream":        String,
	"tls_passthrough": Bool,
	"http_provider":   String,
}

// newTraefik builds the traefik module. It neither touches the directory
// nor listens: that waits for the gateway's first Sweep or Register.
func newTraefik(s map[string]Setting, env Env) (gateway.Registerer, error) {
	if s["dir"].Value == "" {
		return nil, errors.New("no dir: give the directory the proxy's file provider watches, as {dir: /etc/traefik/dynamic}")
	}
	passthrough := false
	if v, ok := s["tls_passthrough"]; ok {
		// Checked as a Bool already.
		passthrough, _ = strconv.ParseBool(v.Value)
	}
	return traefik.New(traefik.Config{
		Dir:            s["dir"].Value,
		EntryPoints:    s["entry_points"].List,
		Middlewares:    s["middlewares"].List,
		CertResolver:   s["cert_resolver"].Value,
		Upstream:       s["upstream"].Value,
		TLSPassthrough: passthrough,
		HTTPProvider:   s["http_provider"].Value,
		Logger:         env.logger(),
	})
}
