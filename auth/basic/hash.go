package basic

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// The algorithms a password hash may use.
const (
	Bcrypt   = "bcrypt"
	Argon2id = "argon2id"
)

// Argon2Params are the costs of an argon2id hash.
type Argon2Params struct {
	// Memory is in KiB. Default: 65536 (64 MiB).
	Memory uint32
	// Time is the number of passes. Default: 3.
	Time uint32
	// Threads is the parallelism. Default: 4.
	Threads uint8
}

// DefaultArgon2 are the costs HashPassword gives argon2id hashes.
var DefaultArgon2 = Argon2Params{Memory: 64 * 1024, Time: 3, Threads: 4}

// Bounds on the argon2id hashes a users file may hold, so that a typo in
// it cannot make every login allocate gigabytes.
const (
	maxArgon2Memory = 1 << 20 // KiB: 1 GiB
	maxArgon2Time   = 64
	minSaltLen      = 8
	maxSaltLen      = 64
	minKeyLen       = 16
	maxKeyLen       = 128
	argon2SaltLen   = 16
	argon2KeyLen    = 32
)

// MaxBcryptPassword is the longest password bcrypt reads: it ignores the
// bytes after it, so longer passwords are refused rather than cut.
const MaxBcryptPassword = 72

// HashPassword hashes password with algorithm (Bcrypt, at bcrypt's default
// cost, or Argon2id, with DefaultArgon2) into the form a users file
// holds.
func HashPassword(password, algorithm string) (string, error) {
	switch algorithm {
	case Bcrypt:
		return HashBcrypt(password, bcrypt.DefaultCost)
	case Argon2id:
		return HashArgon2id(password, DefaultArgon2)
	}
	return "", fmt.Errorf("unknown algorithm %q: want %s or %s", algorithm, Bcrypt, Argon2id)
}

// HashBcrypt hashes password with bcrypt at cost.
func HashBcrypt(password string, cost int) (string, error) {
	if password == "" {
		return "", errors.New("empty password")
	}
	if len(password) > MaxBcryptPassword {
		return "", fmt.Errorf("password longer than %d bytes, which bcrypt cannot hash: use argon2id", MaxBcryptPassword)
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	if err != nil {
		return "", fmt.Errorf("bcrypt: %w", err)
	}
	return string(h), nil
}

// HashArgon2id hashes password with argon2id, a fresh random salt and
// the costs p (zero fields take DefaultArgon2's), in the PHC string form
// "$argon2id$v=19$m=65536,t=3,p=4$SALT$HASH".
func HashArgon2id(password string, p Argon2Params) (string, error) {
	if password == "" {
		return "", errors.New("empty password")
	}
	if p.Memory == 0 {
		p.Memory = DefaultArgon2.Memory
	}
	if p.Time == 0 {
		p.Time = DefaultArgon2.Time
	}
	if p.Threads == 0 {
		p.Threads = DefaultArgon2.Threads
	}
	h := argon2Hash{params: p, salt: make([]byte, argon2SaltLen)}
	if err := h.check(); err != nil {
		return "", err
	}
	if _, err := rand.Read(h.salt); err != nil {
		return "", fmt.Errorf("salt: %w", err)
	}
	h.key = argon2.IDKey([]byte(password), h.salt, p.Time, p.Memory, p.Threads, argon2KeyLen)
	return h.String(), nil
}

// hash is a parsed password hash.
type hash interface {
	// verify reports whether password is the one hashed.
	verify(password string) bool
	// dummy returns a hash of the same algorithm and costs that no
	// password matches, to spend the same time on unknown users.
	dummy() (hash, error)
}

// parseHash reads a bcrypt ($2a$, $2b$, $2y$) or argon2id ($argon2id$)
// hash; its errors never quote the hash.
func parseHash(s string) (hash, error) {
	switch {
	case strings.HasPrefix(s, "$2a$"), strings.HasPrefix(s, "$2b$"), strings.HasPrefix(s, "$2y$"):
		cost, err := bcrypt.Cost([]byte(s))
		if err != nil {
			return nil, errors.New("not a valid bcrypt hash")
		}
		return bcryptHash{hash: []byte(s), cost: cost}, nil
	case strings.HasPrefix(s, "$argon2id$"):
		return parseArgon2(s)
	case strings.HasPrefix(s, "$"):
		return nil, errors.New("unsupported hash: want bcrypt ($2a$, $2b$, $2y$) or argon2id ($argon2id$)")
	}
	return nil, errors.New("not a password hash: want bcrypt or argon2id")
}

type bcryptHash struct {
	hash []byte
	cost int
}

func (h bcryptHash) verify(password string) bool {
	if len(password) > MaxBcryptPassword {
		// Spend the time all the same.
		password = password[:MaxBcryptPassword]
		_ = bcrypt.CompareHashAndPassword(h.hash, []byte(password))
		return false
	}
	return bcrypt.CompareHashAndPassword(h.hash, []byte(password)) == nil
}

func (h bcryptHash) dummy() (hash, error) {
	pw := make([]byte, 32)
	if _, err := rand.Read(pw); err != nil {
		return nil, err
	}
	d, err := bcrypt.GenerateFromPassword([]byte(base64.RawStdEncoding.EncodeToString(pw)), h.cost)
	if err != nil {
		return nil, err
	}
	return bcryptHash{hash: d, cost: h.cost}, nil
}

type argon2Hash struct {
	params    Argon2Params
	salt, key []byte
}

// parseArgon2 reads "$argon2id$v=19$m=M,t=T,p=P$SALT$KEY" (salt and key in
// unpadded standard base64).
func parseArgon2(s string) (argon2Hash, error) {
	var h argon2Hash
	bad := errors.New(`not a valid argon2id hash: want "$argon2id$v=19$m=65536,t=3,p=4$SALT$HASH"`)
	parts := strings.Split(s, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return h, bad
	}
	if parts[2] != "v=19" {
		return h, errors.New("argon2id hash: unsupported version: want v=19")
	}
	var m, t, p uint64
	seen := 0
	for _, kv := range strings.Split(parts[3], ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return h, bad
		}
		var dst *uint64
		switch k {
		case "m":
			dst = &m
		case "t":
			dst = &t
		case "p":
			dst = &p
		default:
			return h, bad
		}
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return h, bad
		}
		*dst = n
		seen++
	}
	if seen != 3 || m == 0 || t == 0 || p == 0 || p > 255 {
		return h, bad
	}
	h.params = Argon2Params{Memory: uint32(m), Time: uint32(t), Threads: uint8(p)}
	var err error
	if h.salt, err = base64.RawStdEncoding.DecodeString(parts[4]); err != nil {
		return h, bad
	}
	if h.key, err = base64.RawStdEncoding.DecodeString(parts[5]); err != nil {
		return h, bad
	}
	return h, h.check()
}

// check bounds the costs and lengths of h.
func (h argon2Hash) check() error {
	p := h.params
	switch {
	case p.Memory > maxArgon2Memory:
		return fmt.Errorf("argon2id hash: memory m=%d KiB above the limit of %d", p.Memory, maxArgon2Memory)
	case p.Memory < 8*uint32(p.Threads):
		return fmt.Errorf("argon2id hash: memory m=%d KiB below 8 per thread", p.Memory)
	case p.Time > maxArgon2Time:
		return fmt.Errorf("argon2id hash: time t=%d above the limit of %d", p.Time, maxArgon2Time)
	case len(h.salt) < minSaltLen || len(h.salt) > maxSaltLen:
		return fmt.Errorf("argon2id hash: salt of %d bytes: want %d to %d", len(h.salt), minSaltLen, maxSaltLen)
	case h.key != nil && (len(h.key) < minKeyLen || len(h.key) > maxKeyLen):
		return fmt.Errorf("argon2id hash: hash of %d bytes: want %d to %d", len(h.key), minKeyLen, maxKeyLen)
	}
	return nil
}

func (h argon2Hash) verify(password string) bool {
	p := h.params
	k := argon2.IDKey([]byte(password), h.salt, p.Time, p.Memory, p.Threads, uint32(len(h.key)))
	return subtle.ConstantTimeCompare(k, h.key) == 1
}

func (h argon2Hash) dummy() (hash, error) {
	d := argon2Hash{params: h.params, salt: make([]byte, len(h.salt)), key: make([]byte, len(h.key))}
	if _, err := rand.Read(d.salt); err != nil {
		return nil, err
	}
	if _, err := rand.Read(d.key); err != nil {
		return nil, err
	}
	return d, nil
}

// String is the PHC string form of h.
func (h argon2Hash) String() string {
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, h.params.Memory, h.params.Time, h.params.Threads,
		base64.RawStdEncoding.EncodeToString(h.salt), base64.RawStdEncoding.EncodeToString(h.key))
}
