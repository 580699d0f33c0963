package bearer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diglett/diglett/gateway"
)

func TestBearer(t *testing.T) {
	sum := sha256.Sum256([]byte("s3cret"))
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte("  s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]Config{
		"clear":  {Token: "s3cret"},
		"hashed": {SHA256: hex.EncodeToString(sum[:])},
		"upper":  {SHA256: strings.ToUpper(hex.EncodeToString(sum[:]))},
		"file":   {TokenFile: file},
	} {
		t.Run(name, func(t *testing.T) {
			c.Identity, c.Names = "ci", []string{"ci-*", "web"}
			b, err := New(c)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			id, err := b.Authenticate(ctx, gateway.Credentials{Token: "s3cret"})
			if err != nil || id.Name != "ci" {
				t.Fatalf("id = %v, %v", id, err)
			}
			for _, bad := range []gateway.Credentials{{}, {Token: "S3CRET"}, {Token: "s3cret "}, {Token: "s3cre"}, {User: "ci", Password: "s3cret"}} {
				_, err := b.Authenticate(ctx, bad)
				if !errors.Is(err, gateway.ErrUnauthorized) {
					t.Errorf("%+v: err = %v, want gateway.ErrUnauthorized", bad, err)
				}
				if bad.Token != "" && strings.Contains(err.Error(), bad.Token) {
					t.Errorf("refusal shows the token: %v", err)
				}
			}
			for _, tc := range []struct {
				id   gateway.Identity
				name string
				ok   bool
			}{
				{id, "web", true},
				{id, "ci-1", true},
				{id, "www", false},
				{gateway.Identity{Name: "other"}, "web", false},
			} {
				err := b.Authorize(ctx, tc.id, tc.name)
				if tc.ok != (err == nil) || !tc.ok && !errors.Is(err, gateway.ErrForbidden) {
					t.Errorf("%s/%s: err = %v", tc.id.Name, tc.name, err)
				}
			}
		})
	}
}

func TestBearerConfigErrors(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	names := []string{"web"}
	for name, tc := range map[string]struct {
		c    Config
		want string
	}{
		"none":         {Config{Identity: "a", Names: names}, "exactly one"},
		"two":          {Config{Token: "x", SHA256: "ab", Identity: "a", Names: names}, "exactly one"},
		"no identity":  {Config{Token: "x", Names: names}, "no identity"},
		"no names":     {Config{Token: "x", Identity: "a"}, "no names"},
		"bad pattern":  {Config{Token: "x", Identity: "a", Names: []string{"A B"}}, "name pattern"},
		"short sha256": {Config{SHA256: "abcd", Identity: "a", Names: names}, "64 hex digits"},
		"not hex":      {Config{SHA256: strings.Repeat("zz", 32), Identity: "a", Names: names}, "64 hex digits"},
		"no file":      {Config{TokenFile: filepath.Join(t.TempDir(), "none"), Identity: "a", Names: names}, "token_file"},
		"empty file":   {Config{TokenFile: empty, Identity: "a", Names: names}, "empty"},
		"long token":   {Config{Token: strings.Repeat("x", 5000), Identity: "a", Names: names}, "longer than"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := New(tc.c)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}
