package cli

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/auth/jwt"
	"github.com/diglett/diglett/internal/protocol"
)

// keyCommands are the agent's subcommands, chosen by the first argument
// before the agent's own command line is parsed, so that
// "diglett -g HOST:PORT -n NAME BACKEND" stays exactly as it was.
var keyCommands = map[string]func(ctx context.Context, args []string, stdout, stderr io.Writer) error{
	"keygen": keygen,
	"token":  tokenSign,
}

type keygenCmd struct {
	Out   string `type:"path" placeholder:"FILE" help:"Where to write the new identity key (default: identity.key in the user's config dir, beside known_gateways). An existing file is never overwritten."`
	Print bool   `help:"Print the public key and identity id of the existing key --out names, instead of making one."`
}

// keygen runs "diglett keygen": it makes an identity key and prints what
// the gateway's operator needs to register it.
func keygen(_ context.Context, args []string, stdout, stderr io.Writer) error {
	var c keygenCmd
	if err := Parse(&c, "diglett keygen", "Make an identity key (Ed25519) for signed tokens, and print its public key and identity id for the gateway's operator.", args, stdout, stderr); err != nil {
		return err
	}
	file := c.Out
	if file == "" {
		var err error
		if file, err = defaultIdentityKeyPath(); err != nil {
			return err
		}
	}
	var key ed25519.PrivateKey
	if c.Print {
		var err error
		if key, err = readIdentityKey(file, stderr); err != nil {
			return err
		}
	} else {
		var err error
		if key, err = jwt.GenerateKey(); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
			return fmt.Errorf("identity key: %w", err)
		}
		if err := jwt.WriteKey(file, key); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "identity key written to %s (keep it secret)\n", file)
	}
	pub := key.Public().(ed25519.PublicKey)
	fmt.Fprintf(stdout, "public key: %s\nidentity id: %s\n", jwt.EncodePublicKey(pub), jwt.IdentityID(pub))
	fmt.Fprintf(stdout, "Ask the gateway's operator to add the public key to the identities file of its jwt module,\n"+
		"as LABEL: %q under identities, with the names it may publish under names; then run\n"+
		"  diglett --identity-key %s -g GATEWAY:PORT -n NAME BACKEND\n", jwt.EncodePublicKey(pub), file)
	return nil
}

// defaultIdentityKeyPath is identity.key under the user's config dir.
func defaultIdentityKeyPath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("identity key: %w (give the file with --out)", err)
	}
	return filepath.Join(dir, "diglett", "identity.key"), nil
}

// readIdentityKey reads the key of file, warning on stderr if other users
// may read it.
func readIdentityKey(file string, stderr io.Writer) (ed25519.PrivateKey, error) {
	key, exposed, err := jwt.ReadKey(file)
	if err != nil {
		return nil, err
	}
	if exposed {
		fmt.Fprintf(stderr, "warning: identity key %s can be read by other users: chmod 600 %s\n", file, file)
	}
	return key, nil
}

type tokenCmd struct {
	Sign tokenSignCmd `cmd:"" help:"Sign a token for -t: it logs in as the key's identity, with the names given, until it expires."`
}

type tokenSignCmd struct {
	Key      string        `required:"" type:"existingfile" placeholder:"FILE" help:"Identity key to sign with (made by diglett keygen)."`
	Name     []string      `short:"n" required:"" sep:"none" placeholder:"NAME" help:"Name the token may publish (repeatable; patterns such as demo-* work)."`
	TTL      time.Duration `name:"ttl" default:"24h" help:"How long the token is valid."`
	Audience []string      `required:"" sep:"none" placeholder:"HOST" help:"Gateway the token is for: its host as dialed with -g, without the port (repeatable)."`
}

// tokenSign runs "diglett token sign": it prints a token of the key's
// identity for -t. The token has no jti: it may log in many times until
// it expires, like any token given with -t.
func tokenSign(_ context.Context, args []string, stdout, stderr io.Writer) error {
	var c tokenCmd
	if err := Parse(&c, "diglett token", "Sign tokens with an identity key.", args, stdout, stderr); err != nil {
		return err
	}
	s := c.Sign
	if s.TTL <= 0 {
		return errors.New("--ttl: want a positive duration such as 24h")
	}
	for _, n := range s.Name {
		if err := protocol.ValidateName(n); err != nil && !isPattern(n) {
			return fmt.Errorf("--name %q: %w", n, err)
		}
	}
	key, err := readIdentityKey(s.Key, stderr)
	if err != nil {
		return err
	}
	tok, err := jwt.Sign(key, jwt.Claims{Names: s.Name, Audience: s.Audience, TTL: s.TTL, Reusable: true})
	if err != nil {
		return err
	}
	if len(tok) > protocol.MaxTokenLen {
		return fmt.Errorf("token of %d bytes: longer than the %d a gateway takes: give fewer names", len(tok), protocol.MaxTokenLen)
	}
	fmt.Fprintln(stdout, tok)
	return nil
}

// isPattern reports whether n is a valid name pattern with *.
func isPattern(n string) bool {
	return strings.Contains(n, "*") && protocol.ValidateName(strings.ReplaceAll(n, "*", "x")) == nil
}

// useIdentityKey makes cfg sign a fresh token for each login with the
// identity key of file, if one is given.
func useIdentityKey(cfg *diglett.Config, file string, stderr io.Writer) error {
	if file == "" {
		return nil
	}
	if cfg.Token != "" {
		return errors.New("--identity-key and a token (--token, --token-file): give one, not both")
	}
	key, err := readIdentityKey(file, stderr)
	if err != nil {
		return fmt.Errorf("--identity-key: %w", err)
	}
	cfg.TokenFunc = (&jwt.Signer{Key: key}).Token
	return nil
}
