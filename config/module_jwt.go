package config

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/diglett/diglett/auth/jwt"
	"github.com/diglett/diglett/auth/jwt/etcdregistry"
	"github.com/diglett/diglett/auth/jwt/httpregistry"
	"github.com/diglett/diglett/gateway"
)

// jwtSettings are the settings of the jwt module:
//
//	jwt:
//	  identities: identities.yaml  # the registry: exactly one of jwtRegistries
//	  audience: [gw.example.com]   # default: the gateway's domain
//	  issuer: ""                   # set for an identity provider's tokens
//	  leeway: 30s
//	  max_ttl: 24h                 # default: no bound
//	  names_claim: names
//	  owners: true                 # a name's owner in the registry must be the token's identity
//
// The other registries: a key set and a names lookup over HTTP
// (jwks_url, with names_url, cache: 5m, cache_size: 10000), or etcd
// (etcd: [http://127.0.0.1:2379], etcd_prefix: /diglett).
var jwtSettings = Schema{
	"identities":  Path,
	"audience":    List,
	"issuer":      String,
	"leeway":      Duration,
	"max_ttl":     Duration,
	"names_claim": String,
	"owners":      Bool,
	"jwks_url":    String,
	"names_url":   String,
	"cache":       Duration,
	"cache_size":  Int,
	"etcd":        List,
	"etcd_prefix": String,
}

// jwtRegistries are the settings that each choose the module's registry,
// of which exactly one must be given. A new registry is one more key here
// and in jwtSettings, and one more case in jwtRegistry.
var jwtRegistries = []string{"identities", "jwks_url", "etcd"}

// jwtRegistryOf names, for each setting that only a registry takes, that
// registry.
var jwtRegistryOf = map[string]string{
	"names_url": "jwks_url", "cache": "jwks_url", "cache_size": "jwks_url",
	"etcd_prefix": "etcd",
}

// jwtReplay is the one replay cache of the process's jwt modules: a token
// used once stays used across reloads (and across modules, so a second
// jwt module does not take a replay the first refused), and a session
// re-checked after a reload is still known for the one it logged in,
// after its short-lived token expired.
var jwtReplay = jwt.NewReplayCache(jwt.DefaultReplayCacheSize)

// newJWT builds the jwt module: signed identity tokens, their keys and the
// owners of names found in a registry.
func newJWT(s map[string]Setting, env Env) (gateway.Authenticator, error) {
	cfg := jwt.Config{
		Audience:    s["audience"].List,
		Issuer:      s["issuer"].Value,
		NamesClaim:  s["names_claim"].Value,
		CheckOwners: true,
		ReplayCache: jwtReplay,
		Logger:      env.logger(),
	}
	if len(cfg.Audience) == 0 {
		if env.Domain == "" {
			return nil, errors.New("no audience: list the names agents dial this gateway by, as {audience: [gw.example.com]} (the default, the gateway's domain, is not set)")
		}
		cfg.Audience = []string{env.Domain}
	}
	var err error
	if cfg.Leeway, err = durationSetting(s, "leeway"); err != nil {
		return nil, err
	}
	if cfg.MaxTTL, err = durationSetting(s, "max_ttl"); err != nil {
		return nil, err
	}
	if o, ok := s["owners"]; ok {
		cfg.CheckOwners, _ = strconv.ParseBool(o.Value) // checked by its kind
	}
	reg, err := jwtRegistry(s, env)
	if err != nil {
		return nil, err
	}
	cfg.Registry = reg
	a, err := jwt.New(cfg)
	if err != nil {
		if c, ok := reg.(io.Closer); ok {
			c.Close()
		}
		return nil, err
	}
	if c, ok := reg.(io.Closer); ok {
		// The chain closes the module, and so the registry, on reload and
		// shutdown.
		return closingAuth{a, c}, nil
	}
	return a, nil
}

// jwtRegistry builds the registry the settings choose: exactly one of
// jwtRegistries.
func jwtRegistry(s map[string]Setting, env Env) (jwt.Registry, error) {
	var given []string
	for _, k := range jwtRegistries {
		if _, ok := s[k]; ok {
			given = append(given, k)
		}
	}
	if len(given) != 1 {
		return nil, fmt.Errorf("want exactly one registry of identities: one of %s (as {identities: identities.yaml}), got %d", strings.Join(jwtRegistries, ", "), len(given))
	}
	for _, k := range slices.Sorted(maps.Keys(jwtRegistryOf)) {
		if _, ok := s[k]; ok && jwtRegistryOf[k] != given[0] {
			return nil, fmt.Errorf("%s goes with %s, not %s", k, jwtRegistryOf[k], given[0])
		}
	}
	switch k := given[0]; k {
	case "identities":
		return jwt.LoadFile(s[k].Value)
	case "jwks_url":
		return newHTTPRegistry(s, env)
	case "etcd":
		return etcdregistry.New(context.Background(), etcdregistry.Config{
			Endpoints: s[k].List,
			Prefix:    s["etcd_prefix"].Value,
			OnChange:  env.changed,
			Logger:    env.logger(),
		})
	default:
		return nil, fmt.Errorf("registry %s: not built in", k)
	}
}

// newHTTPRegistry builds the registry of jwks_url and names_url. Without
// names_url no registry says who owns a name, so owners must be off.
func newHTTPRegistry(s map[string]Setting, env Env) (jwt.Registry, error) {
	owners, _ := strconv.ParseBool(s["owners"].Value) // checked by its kind
	if _, ok := s["names_url"]; !ok && (owners || s["owners"].Value == "") {
		return nil, errors.New("jwks_url without names_url: no registry says who owns a name; give names_url, or set owners: false (an identity provider's tokens, whose names claim decides)")
	}
	c := httpregistry.Config{
		JWKSURL:  s["jwks_url"].Value,
		NamesURL: s["names_url"].Value,
		Logger:   env.logger(),
	}
	var err error
	if c.TTL, err = durationSetting(s, "cache"); err != nil {
		return nil, err
	}
	if v, ok := s["cache_size"]; ok {
		if c.MaxEntries, err = strconv.Atoi(v.Value); err != nil {
			return nil, fmt.Errorf("cache_size: %w", err)
		}
	}
	return httpregistry.New(c)
}

// closingAuth is an Authenticator whose registry must be closed with it.
type closingAuth struct {
	gateway.Authenticator
	io.Closer
}

func durationSetting(s map[string]Setting, key string) (time.Duration, error) {
	v, ok := s[key]
	if !ok {
		return 0, nil
	}
	d, err := time.ParseDuration(v.Value)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", key, err)
	}
	return d, nil
}
