package basic

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/diglett/diglett/gateway"
)

// cheap are argon2id costs small enough for tests.
var cheap = Argon2Params{Memory: 64, Time: 1, Threads: 1}

func mustBcrypt(t testing.TB, pw string) string {
	t.Helper()
	h, err := HashBcrypt(pw, bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func mustArgon2(t testing.TB, pw string) string {
	t.Helper()
	h, err := HashArgon2id(pw, cheap)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "users.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestUsers(t *testing.T) {
	u, err := Load(writeFile(t, fmt.Sprintf(`
- user: alice
  password_hash: %q
  names: ["alice", "alice-*"]
- user: bob
  password_hash: %q
  names: demo
  identity: team
  quota: {names: 3}
- user: carol
  password_hash: %q
  names: ["*"]
  identity: team
  quota: {names: 3}
`, mustBcrypt(t, "alice pw"), mustArgon2(t, "bob pw"), mustArgon2(t, "carol pw"))))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	alice, err := u.Authenticate(ctx, gateway.Credentials{User: "alice", Password: "alice pw"})
	if err != nil || alice.Name != "alice" {
		t.Fatalf("alice = %v, %v", alice, err)
	}
	bob, err := u.Authenticate(ctx, gateway.Credentials{User: "bob", Password: "bob pw"})
	if err != nil || bob.Name != "team" || bob.Quota.Names != 3 {
		t.Fatalf("bob = %+v, %v", bob, err)
	}
	for _, tc := range []struct {
		id   gateway.Identity
		name string
		ok   bool
	}{
		{alice, "alice", true},
		{alice, "alice-2", true},
		{alice, "bob", false},
		{alice, "alices", false},
		{bob, "demo", true},
		{bob, "anything", true}, // carol's pattern: the identity is shared
		{gateway.Identity{Name: "nobody"}, "alice", false},
	} {
		err := u.Authorize(ctx, tc.id, tc.name)
		if tc.ok && err != nil {
			t.Errorf("%s/%s: %v", tc.id.Name, tc.name, err)
		}
		if !tc.ok && !errors.Is(err, gateway.ErrForbidden) {
			t.Errorf("%s/%s: err = %v, want gateway.ErrForbidden", tc.id.Name, tc.name, err)
		}
	}
	for name, c := range map[string]gateway.Credentials{
		"wrong password":         {User: "alice", Password: "alice PW"},
		"wrong argon2 password":  {User: "bob", Password: "carol pw"},
		"empty password":         {User: "alice"},
		"unknown user":           {User: "mallory", Password: "alice pw"},
		"user with another case": {User: "Alice", Password: "alice pw"},
		"password with a suffix": {User: "alice", Password: "alice pw "},
	} {
		_, err := u.Authenticate(ctx, c)
		if !errors.Is(err, gateway.ErrUnauthorized) || !strings.HasSuffix(err.Error(), ": user or password refused") {
			t.Errorf("%s: err = %v, want the one refusal", name, err)
		}
		if strings.Contains(err.Error(), c.Password) && c.Password != "" {
			t.Errorf("%s: the refusal shows the password: %v", name, err)
		}
	}
	if _, err := u.Authenticate(ctx, gateway.Credentials{Token: "x"}); !errors.Is(err, gateway.ErrUnauthorized) {
		t.Errorf("no user: err = %v", err)
	}
}

// TestBcryptLongPassword: bcrypt reads only 72 bytes; a longer password
// whose first 72 bytes are right is refused, not cut.
func TestBcryptLongPassword(t *testing.T) {
	pw := strings.Repeat("p", MaxBcryptPassword)
	u, err := New([]Entry{{User: "a", PasswordHash: mustBcrypt(t, pw), Names: []string{"a"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u.Authenticate(context.Background(), gateway.Credentials{User: "a", Password: pw}); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Authenticate(context.Background(), gateway.Credentials{User: "a", Password: pw + "x"}); !errors.Is(err, gateway.ErrUnauthorized) {
		t.Fatalf("73 bytes: err = %v", err)
	}
	if _, err := HashBcrypt(pw+"x", bcrypt.MinCost); err == nil || !strings.Contains(err.Error(), "argon2id") {
		t.Fatalf("hash of 73 bytes: err = %v", err)
	}
}

// TestBusy: a login that waits for a free password check longer than its
// context is a failure of the gateway (retried), not a refusal.
func TestBusy(t *testing.T) {
	u, err := New([]Entry{{User: "a", PasswordHash: mustArgon2(t, "pw"), Names: []string{"a"}}})
	if err != nil {
		t.Fatal(err)
	}
	for range cap(u.slots) {
		u.slots <- struct{}{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	_, err = u.Authenticate(ctx, gateway.Credentials{User: "a", Password: "pw"})
	if err == nil || errors.Is(err, gateway.ErrUnauthorized) {
		t.Fatalf("err = %v, want a failure that is not a refusal", err)
	}
}

func TestLoadUsersErrors(t *testing.T) {
	good := mustBcrypt(t, "pw")
	tests := map[string]struct{ content, want string }{
		"not yaml":        {"- user: [", "not valid YAML"},
		"empty":           {"", "empty file"},
		"not a list":      {"user: x", "want a list"},
		"plaintext":       {"- user: a\n  password: hunter2\n  names: [a]", ":2: password: passwords are not kept in clear: give password_hash, made with diglett-server hash-password"},
		"plaintext hash":  {"- user: a\n  password_hash: hunter2\n  names: [a]", "not a password hash: want bcrypt or argon2id (make one with diglett-server hash-password)"},
		"unknown scheme":  {"- user: a\n  password_hash: \"$1$abc$def\"\n  names: [a]", "unsupported hash"},
		"bad bcrypt":      {"- user: a\n  password_hash: \"$2a$10$short\"\n  names: [a]", "not a valid bcrypt hash"},
		"bad argon2":      {"- user: a\n  password_hash: \"$argon2id$v=19$m=x$c2FsdHNhbHQ$aGFzaA\"\n  names: [a]", "not a valid argon2id hash"},
		"argon2 version":  {"- user: a\n  password_hash: \"$argon2id$v=16$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\"\n  names: [a]", "unsupported version"},
		"argon2 memory":   {"- user: a\n  password_hash: \"$argon2id$v=19$m=4000000,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\"\n  names: [a]", "above the limit"},
		"argon2 short":    {"- user: a\n  password_hash: \"$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaGhhc2hoYXNoaGFzaA\"\n  names: [a]", "salt of 4 bytes"},
		"no hash":         {"- user: a\n  names: [a]", "no password_hash"},
		"no user":         {"- password_hash: \"" + good + "\"\n  names: [a]", "empty user"},
		"no names":        {"- user: a\n  password_hash: \"" + good + "\"", "no names"},
		"bad pattern":     {"- user: a\n  password_hash: \"" + good + "\"\n  names: [\"A_B\"]", "name pattern"},
		"duplicate user":  {"- user: a\n  password_hash: \"" + good + "\"\n  names: [a]\n- user: a\n  password_hash: \"" + good + "\"\n  names: [b]", "given twice"},
		"unknown key":     {"- user: a\n  password_hash: \"" + good + "\"\n  names: [a]\n  nmaes: [b]", `:4: unknown key "nmaes"`},
		"quota key":       {"- user: a\n  password_hash: \"" + good + "\"\n  names: [a]\n  quota: {nmaes: 1}", "quota: unknown key"},
		"quota value":     {"- user: a\n  password_hash: \"" + good + "\"\n  names: [a]\n  quota: {names: many}", "whole numbers"},
		"quota negative":  {"- user: a\n  password_hash: \"" + good + "\"\n  names: [a]\n  quota: {names: -2}", "quota names"},
		"two quotas":      {"- user: a\n  password_hash: \"" + good + "\"\n  names: [a]\n  identity: t\n  quota: {names: 1}\n- user: b\n  password_hash: \"" + good + "\"\n  names: [b]\n  identity: t", "different quota"},
		"user not string": {"- user: [a]\n  password_hash: x", "user: want a string"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := Load(writeFile(t, tc.content))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("error shows the password: %v", err)
			}
		})
	}
	if _, err := Load(filepath.Join(t.TempDir(), "none.yaml")); err == nil {
		t.Fatal("missing file loaded")
	}
}

// TestHashPassword checks the hashes of the default costs (slow ones: a
// wrong password is checked by the other tests, with cheap costs).
func TestHashPassword(t *testing.T) {
	for alg, prefix := range map[string]string{Bcrypt: "$2a$10$", Argon2id: "$argon2id$v=19$m=65536,t=3,p=4$"} {
		h, err := HashPassword("s3cret", alg)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(h, prefix) {
			t.Errorf("%s hash %q: want the default costs, %s", alg, h, prefix)
		}
		parsed, err := parseHash(h)
		if err != nil {
			t.Fatalf("%s: %q: %v", alg, h, err)
		}
		if !parsed.verify("s3cret") {
			t.Errorf("%s: the hash does not take its password", alg)
		}
	}
	for _, bad := range []struct{ pw, alg string }{{"", Bcrypt}, {"", Argon2id}, {"x", "md5"}} {
		if _, err := HashPassword(bad.pw, bad.alg); err == nil {
			t.Errorf("HashPassword(%q, %q) succeeded", bad.pw, bad.alg)
		}
	}
}

// TestArgon2Reference checks the parser and verifier against a hash made
// by another implementation of argon2id (the reference command line tool's
// output for password "password", salt "somesalt").
func TestArgon2Reference(t *testing.T) {
	const ref = "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc"
	h, err := parseHash(ref)
	if err != nil {
		t.Fatal(err)
	}
	if !h.verify("password") {
		t.Fatal("reference hash does not verify")
	}
	if h.verify("Password") {
		t.Fatal("wrong password verifies")
	}
	if got := h.(argon2Hash).String(); got != ref {
		t.Fatalf("String() = %q, want %q", got, ref)
	}
}

// BenchmarkRefusal compares the time of the two refusals, which should be
// about the same: an unknown user and a wrong password.
func BenchmarkRefusal(b *testing.B) {
	for _, alg := range []string{"bcrypt", "argon2id"} {
		h := mustBcrypt(b, "pw")
		if alg == "argon2id" {
			h = mustArgon2(b, "pw")
		}
		u, err := New([]Entry{{User: "a", PasswordHash: h, Names: []string{"a"}}})
		if err != nil {
			b.Fatal(err)
		}
		for name, c := range map[string]gateway.Credentials{
			"unknown user":   {User: "b", Password: "pw"},
			"wrong password": {User: "a", Password: "wrong"},
		} {
			b.Run(alg+"/"+name, func(b *testing.B) {
				for b.Loop() {
					u.Authenticate(context.Background(), c)
				}
			})
		}
	}
}

// FuzzParseHash: any text in a users file's password_hash gives a hash or
// an error, never a panic; an argon2id hash reads back as written.
func FuzzParseHash(f *testing.F) {
	f.Add("$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA")
	f.Add("$2a$04$abcdefghijklmnopqrstuuabcdefghijklmnopqrstuvwxyz01234")
	f.Add("hunter2")
	f.Fuzz(func(t *testing.T, s string) {
		h, err := parseHash(s)
		if err != nil {
			return
		}
		if a, ok := h.(argon2Hash); ok {
			if a.params.Memory > maxArgon2Memory || a.params.Time > maxArgon2Time {
				t.Fatalf("costs above the bounds: %+v", a.params)
			}
			if _, err := parseHash(a.String()); err != nil {
				t.Fatalf("%q reads back as %v", a.String(), err)
			}
		}
	})
}
