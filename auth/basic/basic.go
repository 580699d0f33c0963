// Package basic is the authentication module of users and passwords: a
// YAML file of users, each with a password stored hashed (bcrypt or
// argon2id), allowed to publish the names that match its patterns, each
// belonging to an identity, with optional quotas. Agents log in with
// diglett --user and --password-file.
package basic

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/diglett/diglett/auth/tokens"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/yamlerr"
)

// Entry is one user of a users file.
type Entry struct {
	// User is the name the agent gives with --user.
	User string `yaml:"user"`
	// PasswordHash is the user's password hashed with bcrypt ("$2a$...")
	// or argon2id ("$argon2id$v=19$..."), as diglett-server hash-password
	// prints it.
	PasswordHash string `yaml:"password_hash"`
	// Names are the names (or patterns with *, as in "alice-*") the user
	// may publish.
	Names []string `yaml:"names"`
	// Identity names the owner; names belong to identities. Default: the
	// user.
	Identity string `yaml:"identity,omitempty"`
	// Quota overrides the gateway's default quotas for this entry's
	// identity: 0 or absent takes the default, -1 means no limit.
	Quota gateway.Quota `yaml:"quota,omitempty"`
}

// Users authenticates agents by user and password. Build it with New or
// Load.
type Users struct {
	byUser map[string]*user
	byID   map[string][]string // identity -> patterns
	// unknown is checked against the password of an unknown user, so that
	// the refusal takes as long as a wrong password's.
	unknown hash
	// slots bounds the password checks running at once: each costs CPU
	// time and, with argon2id, memory.
	slots chan struct{}
}

type user struct {
	hash     hash
	identity string
	quota    gateway.Quota
}

var _ gateway.Authenticator = (*Users)(nil)

// errRefused is the one refusal of a login, whether the user is unknown or
// the password wrong.
var errRefused = fmt.Errorf("%w: user or password refused", gateway.ErrUnauthorized)

// Load reads a YAML users file:
//
//   - user: alice
//     password_hash: "$2a$10$..."
//     names: ["alice", "alice-*"]
func Load(file string) (*Users, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("users file: %w", err)
	}
	entries, err := decode(data)
	if err != nil {
		return nil, fmt.Errorf("users file %s%w", file, err)
	}
	u, err := New(entries)
	if err != nil {
		return nil, fmt.Errorf("users file %s: %w", file, err)
	}
	return u, nil
}

// New builds a Users authenticator from entries. Unknown users are checked
// against a hash of the first entry's algorithm and costs.
func New(entries []Entry) (*Users, error) {
	if len(entries) == 0 {
		return nil, errors.New("no users")
	}
	u := &Users{byUser: make(map[string]*user), byID: make(map[string][]string),
		slots: make(chan struct{}, max(2, runtime.GOMAXPROCS(0)))}
	quotas := make(map[string]gateway.Quota)
	for i, e := range entries {
		if e.User == "" {
			return nil, fmt.Errorf("entry %d: empty user", i+1)
		}
		if len(e.User) > protocol.MaxCredLen {
			return nil, fmt.Errorf("entry %d: user longer than %d bytes", i+1, protocol.MaxCredLen)
		}
		if _, dup := u.byUser[e.User]; dup {
			return nil, fmt.Errorf("entry %d: user %q given twice", i+1, e.User)
		}
		if e.PasswordHash == "" {
			return nil, fmt.Errorf("entry %d: user %q: no password_hash: make one with diglett-server hash-password", i+1, e.User)
		}
		h, err := parseHash(e.PasswordHash)
		if err != nil {
			return nil, fmt.Errorf("entry %d: user %q: password_hash: %w (make one with diglett-server hash-password)", i+1, e.User, err)
		}
		if len(e.Names) == 0 {
			return nil, fmt.Errorf("entry %d: user %q: no names: list the names this user may publish (patterns like \"demo-*\" work)", i+1, e.User)
		}
		for _, p := range e.Names {
			if err := tokens.ValidatePattern(p); err != nil {
				return nil, fmt.Errorf("entry %d: user %q: %w", i+1, e.User, err)
			}
		}
		if err := tokens.ValidQuota(e.Quota); err != nil {
			return nil, fmt.Errorf("entry %d: user %q: %w", i+1, e.User, err)
		}
		id := e.Identity
		if id == "" {
			id = e.User
		}
		if prev, ok := quotas[id]; ok && prev != e.Quota {
			return nil, fmt.Errorf("entry %d: identity %q already has a different quota in an earlier entry: give it one quota", i+1, id)
		}
		quotas[id] = e.Quota
		u.byUser[e.User] = &user{hash: h, identity: id, quota: e.Quota}
		u.byID[id] = append(u.byID[id], e.Names...)
		if u.unknown == nil {
			if u.unknown, err = h.dummy(); err != nil {
				return nil, fmt.Errorf("dummy hash: %w", err)
			}
		}
	}
	return u, nil
}

// Authenticate checks the user's password. Credentials with no user are
// refused at once, so that a chain of modules moves on; an unknown user
// and a wrong password get the same refusal after about the same time.
func (u *Users) Authenticate(ctx context.Context, c gateway.Credentials) (gateway.Identity, error) {
	if c.User == "" {
		return gateway.Identity{}, fmt.Errorf("%w: no user given", gateway.ErrUnauthorized)
	}
	select {
	case u.slots <- struct{}{}:
		defer func() { <-u.slots }()
	case <-ctx.Done():
		return gateway.Identity{}, fmt.Errorf("password check: too many at once: %w", context.Cause(ctx))
	}
	usr, ok := u.byUser[c.User]
	if !ok {
		u.unknown.verify(c.Password)
		return gateway.Identity{}, errRefused
	}
	if !usr.hash.verify(c.Password) || c.Password == "" {
		return gateway.Identity{}, errRefused
	}
	return gateway.Identity{Name: usr.identity, Quota: usr.quota}, nil
}

// Authorize allows name if one of the identity's patterns matches it.
func (u *Users) Authorize(_ context.Context, id gateway.Identity, name string) error {
	if tokens.Match(u.byID[id.Name], name) {
		return nil
	}
	return fmt.Errorf("%w: %q", gateway.ErrForbidden, name)
}

// entryKeys are the keys of an entry, for the error on an unknown one.
const entryKeys = "user, password_hash, names, identity, quota"

// decode reads the entries of a users file with errors in plain words:
// ":LINE: what is wrong", naming the key. A password in clear is refused.
func decode(data []byte) ([]Entry, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf(": not valid YAML: %s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if len(doc.Content) == 0 {
		return nil, errors.New(": empty file: want a list of entries such as \"- user: alice\"")
	}
	root := doc.Content[0]
	if root.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf(":%d: want a list of entries such as \"- user: alice\", got %s", root.Line, yamlerr.Describe(root))
	}
	entries := make([]Entry, 0, len(root.Content))
	for _, n := range root.Content {
		if n.Kind != yaml.MappingNode {
			return nil, fmt.Errorf(":%d: want an entry (%s), got %s", n.Line, entryKeys, yamlerr.Describe(n))
		}
		var e Entry
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			var err error
			switch k.Value {
			case "user":
				e.User, err = scalar(k.Value, v)
			case "password_hash":
				e.PasswordHash, err = scalar(k.Value, v)
			case "identity":
				e.Identity, err = scalar(k.Value, v)
			case "names":
				e.Names, err = names(v)
			case "quota":
				e.Quota, err = quota(v)
			case "password":
				err = fmt.Errorf(":%d: password: passwords are not kept in clear: give password_hash, made with diglett-server hash-password", k.Line)
			default:
				err = fmt.Errorf(":%d: unknown key %q (known: %s)", k.Line, k.Value, entryKeys)
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

func names(v *yaml.Node) ([]string, error) {
	if v.Kind == yaml.ScalarNode && v.Tag != "!!null" {
		return []string{v.Value}, nil
	}
	if v.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf(":%d: names: want a list such as [\"alice\", \"alice-*\"], got %s", v.Line, yamlerr.Describe(v))
	}
	out := make([]string, 0, len(v.Content))
	for _, it := range v.Content {
		s, err := scalar("names", it)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// quota reads a quota mapping, refusing keys gateway.Quota does not have.
func quota(v *yaml.Node) (gateway.Quota, error) {
	var q gateway.Quota
	if v.Kind != yaml.MappingNode {
		return q, fmt.Errorf(":%d: quota: want a mapping such as {names: 10}, got %s", v.Line, yamlerr.Describe(v))
	}
	for i := 0; i+1 < len(v.Content); i += 2 {
		switch k := v.Content[i]; k.Value {
		case "names", "ports", "sessions", "cert_orders_per_hour":
		default:
			return q, fmt.Errorf(":%d: quota: unknown key %q (known: names, ports, sessions, cert_orders_per_hour)", k.Line, k.Value)
		}
	}
	if err := v.Decode(&q); err != nil {
		return q, fmt.Errorf(":%d: quota: want whole numbers, such as {names: 10}", v.Line)
	}
	return q, nil
}
