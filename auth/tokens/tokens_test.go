package tokens

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diglett/diglett/gateway"
)

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tokens.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestTokens(t *testing.T) {
	tok, err := Load(writeFile(t, `
- token: "s3cret"
  names: ["example", "demo-*"]
- token: "other"
  names: ["*"]
  identity: bob
`))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	alice, err := tok.Authenticate(ctx, gateway.Credentials{Token: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(alice.Name, "token-") {
		t.Fatalf("default identity %q", alice.Name)
	}
	bob, err := tok.Authenticate(ctx, gateway.Credentials{Token: "other"})
	if err != nil || bob.Name != "bob" {
		t.Fatalf("bob = %v, %v", bob, err)
	}
	for _, tc := range []struct {
		id   gateway.Identity
		name string
		ok   bool
	}{
		{alice, "example", true},
		{alice, "demo-1", true},
		{alice, "demo-", true},
		{alice, "examples", false},
		{alice, "other", false},
		{bob, "anything", true},
		{gateway.Identity{Name: "nobody"}, "example", false},
	} {
		err := tok.Authorize(ctx, tc.id, tc.name)
		if tc.ok && err != nil {
			t.Errorf("%s/%s: %v", tc.id.Name, tc.name, err)
		}
		if !tc.ok && !errors.Is(err, gateway.ErrForbidden) {
			t.Errorf("%s/%s: err = %v, want gateway.ErrForbidden", tc.id.Name, tc.name, err)
		}
	}
	for _, bad := range []string{"", "S3CRET", "s3cret ", "wrong"} {
		if _, err := tok.Authenticate(ctx, gateway.Credentials{Token: bad}); !errors.Is(err, gateway.ErrUnauthorized) {
			t.Errorf("token %q: err = %v, want gateway.ErrUnauthorized", bad, err)
		}
	}
}

func TestLoadTokensErrors(t *testing.T) {
	tests := map[string]struct{ content, want string }{
		"not yaml":        {"- token: [", "tokens file"},
		"not a list":      {"token: x", "tokens file"},
		"unknown field":   {"- token: x\n  names: [a]\n  nmaes: [b]", "nmaes"},
		"empty token":     {"- token: \"\"\n  names: [a]", "empty token"},
		"no names":        {"- token: x", "no names"},
		"bad pattern":     {"- token: x\n  names: [\"Bad_Name\"]", "Bad_Name"},
		"malformed glob":  {"- token: x\n  names: [\"a[\"]", "a["},
		"duplicate token": {"- token: x\n  names: [a]\n- token: x\n  names: [b]", "duplicate"},
		"empty file":      {"", "tokens file"},
		"bad quota":       {"- token: x\n  names: [a]\n  quota: {names: -2}", "quota names"},
		"quota field":     {"- token: x\n  names: [a]\n  quota: {nmes: 3}", "nmes"},
		"key with line":   {"- token: x\n  names: [a]\n  nmaes: [b]", `.yaml:3: unknown key "nmaes" (known: token, names, identity, quota)`},
		"names type":      {"- token: x\n  names: {a: b}", `.yaml:2: names: want a list such as ["example", "demo-*"], got a mapping`},
		"quota type":      {"- token: x\n  names: [a]\n  quota: {names: lots}", `.yaml:3: quota names: want a whole number, got "lots"`},
		"entry type":      {"- token: x\n  names: [a]\n- just a string", `.yaml:3: want an entry (token, names, identity, quota), got "just a string"`},
		"two quotas":      {"- token: x\n  identity: i\n  names: [a]\n  quota: {names: 3}\n- token: y\n  identity: i\n  names: [b]\n  quota: {names: 4}", "different quota"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := Load(writeFile(t, tc.content))
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "tokens.Entry") || strings.Contains(err.Error(), "!!") {
				t.Fatalf("error %q names a Go or YAML type", err)
			}
		})
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("missing file accepted")
	}
}

// TestTokenQuota: an entry's quota reaches the identity, and Or fills the
// fields it leaves to the gateway.
func TestTokenQuota(t *testing.T) {
	tok, err := Load(writeFile(t, "- token: q\n  identity: ci\n  names: [a]\n  quota: {names: 200, sessions: -1}\n- token: plain\n  names: [b]"))
	if err != nil {
		t.Fatal(err)
	}
	id, err := tok.Authenticate(context.Background(), gateway.Credentials{Token: "q"})
	if err != nil {
		t.Fatal(err)
	}
	def := gateway.Quota{Names: 64, Ports: 64, Sessions: 64, CertOrdersPerHour: 20}
	if got, want := id.Quota.Or(def), (gateway.Quota{Names: 200, Ports: 64, Sessions: -1, CertOrdersPerHour: 20}); got != want {
		t.Errorf("quota %+v, want %+v", got, want)
	}
	plain, err := tok.Authenticate(context.Background(), gateway.Credentials{Token: "plain"})
	if err != nil {
		t.Fatal(err)
	}
	if got := plain.Quota.Or(def); got != def {
		t.Errorf("entry without a quota: %+v, want the defaults %+v", got, def)
	}
}
