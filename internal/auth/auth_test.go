package auth

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	tok, err := LoadTokens(writeFile(t, `
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
	alice, err := tok.Authenticate(ctx, Credentials{Token: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(alice.Name, "token-") {
		t.Fatalf("default identity %q", alice.Name)
	}
	bob, err := tok.Authenticate(ctx, Credentials{Token: "other"})
	if err != nil || bob.Name != "bob" {
		t.Fatalf("bob = %v, %v", bob, err)
	}
	for _, tc := range []struct {
		id   Identity
		name string
		ok   bool
	}{
		{alice, "example", true},
		{alice, "demo-1", true},
		{alice, "demo-", true},
		{alice, "examples", false},
		{alice, "other", false},
		{bob, "anything", true},
		{Identity{Name: "nobody"}, "example", false},
	} {
		err := tok.Authorize(ctx, tc.id, tc.name)
		if tc.ok && err != nil {
			t.Errorf("%s/%s: %v", tc.id.Name, tc.name, err)
		}
		if !tc.ok && !errors.Is(err, ErrForbidden) {
			t.Errorf("%s/%s: err = %v, want ErrForbidden", tc.id.Name, tc.name, err)
		}
	}
	for _, bad := range []string{"", "S3CRET", "s3cret ", "wrong"} {
		if _, err := tok.Authenticate(ctx, Credentials{Token: bad}); !errors.Is(err, ErrUnauthorized) {
			t.Errorf("token %q: err = %v, want ErrUnauthorized", bad, err)
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
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := LoadTokens(writeFile(t, tc.content))
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
	if _, err := LoadTokens(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("missing file accepted")
	}
}

func TestAllowAll(t *testing.T) {
	id, err := AllowAll{}.Authenticate(context.Background(), Credentials{})
	if err != nil || id != Anonymous {
		t.Fatalf("AllowAll = %v, %v", id, err)
	}
	if err := (AllowAll{}).Authorize(context.Background(), id, "x"); err != nil {
		t.Fatal(err)
	}
}
