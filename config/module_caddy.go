package config

import (
	"fmt"
	"time"

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/register/caddy"
)

// caddySettings are the settings of the caddy module (register/caddy):
//
//	caddy:
//	  admin: http://127.0.0.1:2019  # caddy's admin API (the default)
//	  server: srv0                  # the HTTP server the routes go to (the default)
//	  listen: [":443"]              # where that server listens if the module creates it; default [":80"]
//	  upstream: 127.0.0.1           # the host caddy reaches the gateway's ports on (the default)
//	  id_prefix: diglett-           # starts the @id of our routes (the default)
//	  check: 10s                    # how often lost routes are put back (the default)
var caddySettings = Schema{
	"admin":     String,
	"server":    String,
	"listen":    List,
	"upstream":  String,
	"id_prefix": String,
	"check":     Duration,
}

// newCaddy builds the caddy module. It does not contact caddy.
func newCaddy(s map[string]Setting, env Env) (gateway.Registerer, error) {
	c := caddy.Config{
		Admin:    s["admin"].Value,
		Server:   s["server"].Value,
		Listen:   s["listen"].List,
		Upstream: s["upstream"].Value,
		IDPrefix: s["id_prefix"].Value,
		Logger:   env.logger(),
	}
	if v, ok := s["check"]; ok {
		var err error
		if c.Check, err = time.ParseDuration(v.Value); err != nil || c.Check <= 0 {
			return nil, fmt.Errorf("check: want a duration above zero such as 10s, got %q", v.Value)
		}
	}
	return caddy.New(c)
}
