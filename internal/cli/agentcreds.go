package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/internal/protocol"
)

// passwordEnv is the variable an agent's password may come from, for
// those who would rather not write it to a file. It is no flag: a
// password on the command line is visible to every user of the machine.
const passwordEnv = "DIGLETT_PASSWORD"

// credentials fills cfg's Token, User and Password from -t or
// --token-file, and --user with --password-file or DIGLETT_PASSWORD. Its
// errors never quote a secret.
func (c *agentCmd) credentials(cfg *diglett.Config) error {
	cfg.Token = c.Token
	if c.TokenFile != "" {
		if c.Token != "" {
			return errors.New("-t and --token-file: give one, not both")
		}
		data, err := readBounded(c.TokenFile, protocol.MaxTokenLen)
		if err != nil {
			return fmt.Errorf("--token-file: %w", err)
		}
		cfg.Token = strings.TrimSpace(data)
		if cfg.Token == "" {
			return fmt.Errorf("--token-file %s: empty", c.TokenFile)
		}
	}
	envPassword, inEnv := os.LookupEnv(passwordEnv)
	switch {
	case c.PasswordFile != "" && inEnv:
		return fmt.Errorf("--password-file and %s: give one, not both", passwordEnv)
	case c.User == "" && (c.PasswordFile != "" || inEnv):
		return errors.New("a password needs --user: give the user it is for")
	case c.User == "":
		return nil
	case c.PasswordFile != "":
		f, err := os.Open(c.PasswordFile)
		if err != nil {
			return fmt.Errorf("--password-file: %w", err)
		}
		defer f.Close()
		if cfg.Password, err = ReadSecretLine(f, protocol.MaxCredLen); err != nil {
			return fmt.Errorf("--password-file %s: %w", c.PasswordFile, err)
		}
	case inEnv:
		if envPassword == "" {
			return fmt.Errorf("%s is empty", passwordEnv)
		}
		cfg.Password = envPassword
	default:
		return fmt.Errorf("--user: give the password with --password-file FILE or %s", passwordEnv)
	}
	if len(c.User) > protocol.MaxCredLen || len(cfg.Password) > protocol.MaxCredLen {
		return fmt.Errorf("--user or its password longer than %d bytes", protocol.MaxCredLen)
	}
	cfg.User = c.User
	return nil
}

// readBounded reads a file of at most max bytes besides surrounding
// white space, trimmed.
func readBounded(file string, max int) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	const slack = 64 // white space
	data, err := io.ReadAll(io.LimitReader(f, int64(max)+slack+1))
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(data))
	if len(data) > max+slack || len(s) > max {
		return "", fmt.Errorf("%s: longer than %d bytes", file, max)
	}
	return s, nil
}

// ReadSecretLine reads a password as a file or a pipe gives it: one line,
// its line ending ("\n" or "\r\n") removed and nothing else, at most max
// bytes. Its errors never quote the secret.
func ReadSecretLine(r io.Reader, max int) (string, error) {
	data, err := io.ReadAll(io.LimitReader(r, int64(max)+3))
	if err != nil {
		return "", err
	}
	data = bytes.TrimSuffix(data, []byte("\n"))
	data = bytes.TrimSuffix(data, []byte("\r"))
	switch {
	case len(data) == 0:
		return "", errors.New("empty password")
	case len(data) > max:
		return "", fmt.Errorf("password longer than %d bytes", max)
	case bytes.ContainsAny(data, "\r\n"):
		return "", errors.New("more than one line: want the password alone on one line")
	}
	return string(data), nil
}
