package servercli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/diglett/diglett/auth/basic"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/cli"
)

// TestHashPassword hashes a piped password with each algorithm and logs in
// with it through a users file.
func TestHashPassword(t *testing.T) {
	for _, alg := range []string{"", "bcrypt", "argon2id"} {
		t.Run("algorithm "+alg, func(t *testing.T) {
			args := []string{}
			if alg != "" {
				args = append(args, "--algorithm", alg)
			}
			var out bytes.Buffer
			if err := hashPassword(args, strings.NewReader("correct horse\r\n"), &out, io.Discard); err != nil {
				t.Fatal(err)
			}
			h := strings.TrimSuffix(out.String(), "\n")
			want := "$2a$"
			if alg == "argon2id" {
				want = "$argon2id$v=19$"
			}
			if !strings.HasPrefix(h, want) || strings.Contains(h, "\n") {
				t.Fatalf("printed %q, want one line starting %s", out.String(), want)
			}
			u, err := basic.Load(writeConfig(t, "users.yaml", fmt.Sprintf("- user: alice\n  password_hash: %q\n  names: [a]\n", h)))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := u.Authenticate(context.Background(), gateway.Credentials{User: "alice", Password: "correct horse"}); err != nil {
				t.Fatalf("the hash does not take its password: %v", err)
			}
		})
	}
	for name, tc := range map[string]struct {
		args  []string
		stdin string
		want  string
	}{
		"empty":       {nil, "\n", "empty password"},
		"two lines":   {nil, "one\ntwo\n", "more than one line"},
		"too long":    {nil, strings.Repeat("x", 300), "longer than 256 bytes"},
		"bcrypt 73":   {nil, strings.Repeat("x", 73), "use argon2id"},
		"unknown alg": {[]string{"--algorithm", "md5"}, "pw", "algorithm"},
	} {
		t.Run(name, func(t *testing.T) {
			err := hashPassword(tc.args, strings.NewReader(tc.stdin), io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if len(tc.stdin) > 2 && strings.Contains(err.Error(), strings.TrimSpace(tc.stdin)) {
				t.Fatalf("the error shows the password: %v", err)
			}
		})
	}
	var out bytes.Buffer
	if err := Server(context.Background(), []string{"hash-password", "--help"}, &out, io.Discard); !cli.IsHelp(err) || !strings.Contains(out.String(), "--algorithm") {
		t.Fatalf("diglett-server hash-password --help: %v\n%s", err, &out)
	}
}
