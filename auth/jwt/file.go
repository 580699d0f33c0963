package jwt

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/yamlerr"
)

// FileRegistry is a Registry kept in a YAML file: the identities, each a
// label of the operator's choice with the public key printed by
// "diglett keygen", and the names, each with the identity that owns it:
//
//	identities:
//	  alice: "ed25519:6c0Ea3..."
//	  build-bot: "ed25519:Qx9v1k..."
//	names:
//	  example: alice
//	  "ci-*": build-bot
//
// An identity's id, which its tokens carry and the gateway records as the
// owner of its names, is the thumbprint of its key (IdentityID); the label
// only names it in the file. An owner is a label or an identity id. A name
// may be a pattern with *: a name is owned by its own entry, else by the
// first pattern, in file order, that matches it.
type FileRegistry struct {
	keys     map[string]ed25519.PublicKey // identity id -> key
	labels   map[string]string            // identity id -> label
	exact    map[string]string            // name -> owner's id
	patterns []ownedPattern               // in file order
}

type ownedPattern struct {
	pattern, owner string
}

var _ Registry = (*FileRegistry)(nil)

// LoadFile reads a registry file. Errors name the file and the line.
func LoadFile(file string) (*FileRegistry, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("identities file: %w", err)
	}
	r, err := ParseFile(data)
	if err != nil {
		return nil, fmt.Errorf("identities file %s%w", file, err)
	}
	return r, nil
}

// ParseFile reads the text of a registry file. Its errors start with
// ":LINE: ", for the caller to put the file's name before.
func ParseFile(data []byte) (*FileRegistry, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf(": not valid YAML: %s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if len(doc.Content) == 0 {
		return nil, errors.New(": empty file: want identities: {LABEL: \"ed25519:...\"} and names: {NAME: LABEL}")
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf(":%d: want a mapping with identities and names, got %s", root.Line, yamlerr.Describe(root))
	}
	r := &FileRegistry{
		keys:   map[string]ed25519.PublicKey{},
		labels: map[string]string{},
		exact:  map[string]string{},
	}
	var names *yaml.Node
	seen := map[string]bool{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if seen[k.Value] {
			return nil, fmt.Errorf(":%d: %s given twice", k.Line, k.Value)
		}
		seen[k.Value] = true
		switch k.Value {
		case "identities":
			if err := r.readIdentities(v); err != nil {
				return nil, err
			}
		case "names":
			names = v // read once every identity is known
		default:
			return nil, fmt.Errorf(":%d: unknown key %q (known: identities, names)", k.Line, k.Value)
		}
	}
	if len(r.keys) == 0 {
		return nil, fmt.Errorf(":%d: no identities: list them as identities: {LABEL: \"ed25519:...\"}", root.Line)
	}
	if names != nil {
		if err := r.readNames(names); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// entries checks that n is a mapping of strings to strings and returns
// its key and value nodes, refusing a key given twice.
func entries(what string, n *yaml.Node) ([][2]*yaml.Node, error) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil, nil
	}
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf(":%d: %s: want a mapping, got %s", n.Line, what, yamlerr.Describe(n))
	}
	var out [][2]*yaml.Node
	first := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.Value == "" {
			return nil, fmt.Errorf(":%d: %s: want a non-empty key, got %s", k.Line, what, yamlerr.Describe(k))
		}
		if line, dup := first[k.Value]; dup {
			return nil, fmt.Errorf(":%d: %s: %q given twice (first on line %d)", k.Line, what, k.Value, line)
		}
		first[k.Value] = k.Line
		if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
			return nil, fmt.Errorf(":%d: %s: %s: want a string, got %s", v.Line, what, k.Value, yamlerr.Describe(v))
		}
		out = append(out, [2]*yaml.Node{k, v})
	}
	return out, nil
}

func (r *FileRegistry) readIdentities(n *yaml.Node) error {
	es, err := entries("identities", n)
	if err != nil {
		return err
	}
	for _, e := range es {
		label, v := e[0].Value, e[1]
		if strings.ContainsFunc(label, func(c rune) bool { return c <= ' ' || c == 0x7f }) {
			return fmt.Errorf(":%d: identities: label %q: no spaces or control characters", e[0].Line, label)
		}
		pub, err := ParsePublicKey(v.Value)
		if err != nil {
			return fmt.Errorf(":%d: identities: %s: %w", v.Line, label, err)
		}
		id := IdentityID(pub)
		if other, dup := r.labels[id]; dup {
			return fmt.Errorf(":%d: identities: %s: same key as %s", v.Line, label, other)
		}
		r.keys[id] = pub
		r.labels[id] = label
	}
	return nil
}

func (r *FileRegistry) readNames(n *yaml.Node) error {
	es, err := entries("names", n)
	if err != nil {
		return err
	}
	byLabel := make(map[string]string, len(r.labels))
	for id, label := range r.labels {
		byLabel[label] = id
	}
	for _, e := range es {
		name, v := e[0].Value, e[1]
		if err := validatePattern(name); err != nil {
			return fmt.Errorf(":%d: names: %w", e[0].Line, err)
		}
		owner, ok := byLabel[v.Value]
		if !ok {
			if _, isID := r.keys[v.Value]; !isID {
				return fmt.Errorf(":%d: names: %s: owner %q is not under identities", v.Line, name, v.Value)
			}
			owner = v.Value
		}
		if strings.Contains(name, "*") {
			r.patterns = append(r.patterns, ownedPattern{name, owner})
		} else {
			r.exact[name] = owner
		}
	}
	return nil
}

// validatePattern checks a name, or a pattern of names with *.
func validatePattern(p string) error {
	if p == "*" {
		return nil
	}
	if _, err := path.Match(p, ""); err != nil {
		return fmt.Errorf("name pattern %q: %w", p, err)
	}
	if err := protocol.ValidateName(strings.ReplaceAll(p, "*", "x")); err != nil {
		return fmt.Errorf("name %q: %w", p, err)
	}
	return nil
}

// Key returns the public key of identity id.
func (r *FileRegistry) Key(_ context.Context, id string) (crypto.PublicKey, error) {
	k, ok := r.keys[id]
	if !ok {
		return nil, ErrUnknownIdentity
	}
	return k, nil
}

// Owner returns the identity id that owns name.
func (r *FileRegistry) Owner(_ context.Context, name string) (string, error) {
	if id, ok := r.exact[name]; ok {
		return id, nil
	}
	for _, p := range r.patterns {
		if ok, _ := path.Match(p.pattern, name); ok {
			return p.owner, nil
		}
	}
	return "", ErrNoOwner
}

// Label returns the label the file gives identity id, if it lists it.
func (r *FileRegistry) Label(id string) (string, bool) {
	l, ok := r.labels[id]
	return l, ok
}
