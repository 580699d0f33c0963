// Package tokens is the authentication module of static tokens: a YAML
// file of tokens, each allowed to publish the names that match its
// patterns, each belonging to an identity, with optional quotas.
package tokens

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/protocol"
)

// Entry is one entry of a tokens file.
type Entry struct {
	// Token is the secret an agent presents with --token.
	Token string `yaml:"token"`
	// Names are the names (or patterns with *, as in "demo-*") the token
	// may publish.
	Names []string `yaml:"names"`
	// Identity names the owner; names belong to identities. Default: a
	// short hash of the token, so it is stable across restarts.
	Identity string `yaml:"identity,omitempty"`
	// Quota overrides the gateway's default quotas for this entry's
	// identity: 0 or absent takes the default, -1 means no limit.
	Quota gateway.Quota `yaml:"quota,omitempty"`
}

// Tokens authenticates agents by static tokens, each scoped to name
// patterns. Build it with New or Load.
type Tokens struct {
	byHash map[[sha256.Size]byte]*Entry
	byID   map[string][]string      // identity -> patterns
	quotas map[string]gateway.Quota // identity -> its quota overrides
}

var _ gateway.Authenticator = (*Tokens)(nil)

// Load reads a YAML tokens file:
//
//   - token: "s3cret"
//     names: ["example", "demo-*"]
func Load(file string) (*Tokens, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("tokens file: %w", err)
	}
	var entries []Entry
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&entries); err != nil {
		return nil, fmt.Errorf("tokens file %s: %w", file, err)
	}
	t, err := New(entries)
	if err != nil {
		return nil, fmt.Errorf("tokens file %s: %w", file, err)
	}
	return t, nil
}

// New builds a Tokens authenticator from entries.
func New(entries []Entry) (*Tokens, error) {
	if len(entries) == 0 {
		return nil, errors.New("no tokens")
	}
	t := &Tokens{byHash: make(map[[sha256.Size]byte]*Entry), byID: make(map[string][]string), quotas: make(map[string]gateway.Quota)}
	for i := range entries {
		e := entries[i]
		if e.Token == "" {
			return nil, fmt.Errorf("entry %d: empty token", i+1)
		}
		if len(e.Token) > protocol.MaxTokenLen {
			return nil, fmt.Errorf("entry %d: token longer than %d bytes", i+1, protocol.MaxTokenLen)
		}
		if len(e.Names) == 0 {
			return nil, fmt.Errorf("entry %d: no names: list the names this token may publish (patterns like \"demo-*\" work)", i+1)
		}
		for _, p := range e.Names {
			if err := validatePattern(p); err != nil {
				return nil, fmt.Errorf("entry %d: %w", i+1, err)
			}
		}
		if err := validQuota(e.Quota); err != nil {
			return nil, fmt.Errorf("entry %d: %w", i+1, err)
		}
		h := sha256.Sum256([]byte(e.Token))
		if _, dup := t.byHash[h]; dup {
			return nil, fmt.Errorf("entry %d: duplicate token", i+1)
		}
		if e.Identity == "" {
			e.Identity = "token-" + hex.EncodeToString(h[:4])
		}
		if prev, ok := t.quotas[e.Identity]; ok && prev != e.Quota {
			return nil, fmt.Errorf("entry %d: identity %q already has a different quota in an earlier entry: give it one quota", i+1, e.Identity)
		}
		t.byHash[h] = &e
		t.byID[e.Identity] = append(t.byID[e.Identity], e.Names...)
		t.quotas[e.Identity] = e.Quota
	}
	return t, nil
}

// validQuota refuses quota values below -1.
func validQuota(q gateway.Quota) error {
	for _, f := range []struct {
		name string
		v    int
	}{{"names", q.Names}, {"ports", q.Ports}, {"sessions", q.Sessions}, {"cert_orders_per_hour", q.CertOrdersPerHour}} {
		if f.v < -1 {
			return fmt.Errorf("quota %s: %d: want a count, 0 for the gateway's default or -1 for no limit", f.name, f.v)
		}
	}
	return nil
}

func validatePattern(p string) error {
	if p == "*" {
		return nil
	}
	if _, err := path.Match(p, ""); err != nil {
		return fmt.Errorf("name pattern %q: %w", p, err)
	}
	if err := protocol.ValidateName(strings.ReplaceAll(p, "*", "x")); err != nil {
		return fmt.Errorf("name pattern %q: %w", p, err)
	}
	return nil
}

// Authenticate looks the token up. The lookup is by SHA-256 of the token, so
// its timing does not depend on how much of a guess matches.
func (t *Tokens) Authenticate(_ context.Context, c gateway.Credentials) (gateway.Identity, error) {
	if c.Token == "" {
		return gateway.Identity{}, fmt.Errorf("%w: no token given", gateway.ErrUnauthorized)
	}
	e, ok := t.byHash[sha256.Sum256([]byte(c.Token))]
	if !ok {
		return gateway.Identity{}, gateway.ErrUnauthorized
	}
	return gateway.Identity{Name: e.Identity, Quota: e.Quota}, nil
}

// Authorize allows name if one of the identity's patterns matches it.
func (t *Tokens) Authorize(_ context.Context, id gateway.Identity, name string) error {
	for _, p := range t.byID[id.Name] {
		if ok, _ := path.Match(p, name); ok {
			return nil
		}
	}
	return fmt.Errorf("%w: %q", gateway.ErrForbidden, name)
}
