// Package tokens is the authentication module of static tokens: a YAML
// file of tokens, each allowed to publish the names that match its
// patterns, each belonging to an identity, with optional quotas.
package tokens

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/yamlerr"
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
	entries, err := decode(data)
	if err != nil {
		return nil, fmt.Errorf("tokens file %s%w", file, err)
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
			if err := ValidatePattern(p); err != nil {
				return nil, fmt.Errorf("entry %d: %w", i+1, err)
			}
		}
		if err := ValidQuota(e.Quota); err != nil {
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

// ValidQuota refuses quota values below -1; the other modules that give
// identities quotas share it.
func ValidQuota(q gateway.Quota) error {
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

// ValidatePattern checks a name pattern: a valid name in which each * stands
// for any run of name characters, or "*" alone for every name. The other
// modules that scope identities to names (basic, bearer, external) share it.
func ValidatePattern(p string) error {
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
		return gateway.Identity{}, gateway.ErrNoCredentials
	}
	e, ok := t.byHash[sha256.Sum256([]byte(c.Token))]
	if !ok {
		return gateway.Identity{}, fmt.Errorf("%w: unknown token", gateway.ErrUnauthorized)
	}
	return gateway.Identity{Name: e.Identity, Quota: e.Quota}, nil
}

// Authorize allows name if one of the identity's patterns matches it.
func (t *Tokens) Authorize(_ context.Context, id gateway.Identity, name string) error {
	if Match(t.byID[id.Name], name) {
		return nil
	}
	return fmt.Errorf("%w: %q", gateway.ErrForbidden, name)
}

// Match reports whether one of patterns (checked by ValidatePattern)
// matches name.
func Match(patterns []string, name string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}

// decode reads the entries of a tokens file with errors in plain words:
// ":LINE: what is wrong", naming the key.
func decode(data []byte) ([]Entry, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf(": not valid YAML: %s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if len(doc.Content) == 0 {
		return nil, errors.New(": empty file: want a list of entries such as \"- token: s3cret\"")
	}
	root := doc.Content[0]
	if root.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf(":%d: want a list of entries such as \"- token: s3cret\", got %s", root.Line, yamlerr.Describe(root))
	}
	entries := make([]Entry, 0, len(root.Content))
	for _, n := range root.Content {
		if n.Kind != yaml.MappingNode {
			return nil, fmt.Errorf(":%d: want an entry (token, names, identity, quota), got %s", n.Line, yamlerr.Describe(n))
		}
		var e Entry
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			var err error
			switch k.Value {
			case "token":
				e.Token, err = scalar(k.Value, v)
			case "identity":
				e.Identity, err = scalar(k.Value, v)
			case "names":
				e.Names, err = strList(k.Value, v)
			case "quota":
				e.Quota, err = quota(v)
			default:
				err = fmt.Errorf(":%d: unknown key %q (known: token, names, identity, quota)", k.Line, k.Value)
			}
			if err != nil {
				return nil, err
			}
		}
		entries = append(entries, e)
	}
	return entries, nil
}

func scalar(key string, v *yaml.Node) (string, error) {
	if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
		return "", fmt.Errorf(":%d: %s: want a string, got %s", v.Line, key, yamlerr.Describe(v))
	}
	return v.Value, nil
}

func strList(key string, v *yaml.Node) ([]string, error) {
	if v.Kind == yaml.ScalarNode && v.Tag != "!!null" {
		return []string{v.Value}, nil
	}
	if v.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf(":%d: %s: want a list such as [\"example\", \"demo-*\"], got %s", v.Line, key, yamlerr.Describe(v))
	}
	out := make([]string, 0, len(v.Content))
	for _, it := range v.Content {
		s, err := scalar(key, it)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func quota(v *yaml.Node) (gateway.Quota, error) {
	var q gateway.Quota
	if v.Kind != yaml.MappingNode {
		return q, fmt.Errorf(":%d: quota: want a mapping such as {names: 10}, got %s", v.Line, yamlerr.Describe(v))
	}
	for i := 0; i+1 < len(v.Content); i += 2 {
		k, n := v.Content[i], v.Content[i+1]
		var dst *int
		switch k.Value {
		case "names":
			dst = &q.Names
		case "ports":
			dst = &q.Ports
		case "sessions":
			dst = &q.Sessions
		case "cert_orders_per_hour":
			dst = &q.CertOrdersPerHour
		default:
			return q, fmt.Errorf(":%d: quota: unknown key %q (known: names, ports, sessions, cert_orders_per_hour)", k.Line, k.Value)
		}
		x, err := strconv.Atoi(n.Value)
		if n.Kind != yaml.ScalarNode || err != nil {
			return q, fmt.Errorf(":%d: quota %s: want a whole number, got %s", n.Line, k.Value, yamlerr.Describe(n))
		}
		*dst = x
	}
	return q, nil
}
