package servercli

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/term"

	"github.com/diglett/diglett/auth/basic"
	"github.com/diglett/diglett/internal/cli"
	"github.com/diglett/diglett/internal/protocol"
)

// hashPassword runs "diglett-server hash-password": it reads a password
// from stdin (without echo, and twice, from a terminal) and prints its
// hash for the password_hash of a users file (the basic module).
func hashPassword(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var hp struct {
		Algorithm string `default:"bcrypt" enum:"bcrypt,argon2id" help:"Hash with bcrypt (passwords up to 72 bytes) or argon2id."`
	}
	if err := cli.Parse(&hp, "diglett-server hash-password", "Hash a password read from stdin for a users file (auth module basic): user, password_hash, names.", args, stdout, stderr); err != nil {
		return err
	}
	var pw string
	var err error
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		pw, err = promptPassword(int(f.Fd()), stderr)
	} else {
		pw, err = cli.ReadSecretLine(stdin, protocol.MaxCredLen)
	}
	if err != nil {
		return fmt.Errorf("hash-password: %w", err)
	}
	h, err := basic.HashPassword(pw, hp.Algorithm)
	if err != nil {
		return fmt.Errorf("hash-password: %w", err)
	}
	fmt.Fprintln(stdout, h)
	return nil
}

// promptPassword asks for a password twice on the terminal fd, without
// echo.
func promptPassword(fd int, prompt io.Writer) (string, error) {
	read := func(what string) (string, error) {
		fmt.Fprint(prompt, what)
		b, err := term.ReadPassword(fd)
		fmt.Fprintln(prompt)
		if err != nil {
			return "", fmt.Errorf("read password: %w", err)
		}
		return string(b), nil
	}
	pw, err := read("Password: ")
	if err != nil {
		return "", err
	}
	again, err := read("Again: ")
	if err != nil {
		return "", err
	}
	if pw != again {
		return "", errors.New("the passwords differ")
	}
	if len(pw) > protocol.MaxCredLen {
		return "", fmt.Errorf("password longer than %d bytes", protocol.MaxCredLen)
	}
	return pw, nil
}
