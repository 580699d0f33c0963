package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// Identity is who an agent authenticated as. Names belong to identities:
// the gateway gives a name, its port and its lease to one identity at a
// time.
type Identity struct {
	// Name is stable across reconnects and restarts of the gateway: it is
	// what the registry and the lease file record as a name's owner.
	Name string
	// Claims are what the Authenticator learned about the identity (a
	// token's claims, say), for its own Authorize to read. The gateway
	// neither reads nor changes them.
	Claims map[string]any
	// Quota overrides the gateway's default quotas for this identity,
	// field by field; its zero value takes every default.
	Quota Quota
}

// Credentials is what an agent presents at login. Any field may be
// empty: an authenticator that finds none of its kind refuses with plain
// ErrUnauthorized, so that a chain of them moves on.
type Credentials struct {
	// Token is the agent's token, as given (diglett -t or --token-file),
	// or one it signed for this login with its identity key.
	Token string
	// User and Password are the agent's user name and password
	// (diglett --user and --password-file).
	User, Password string
	// Names are the names the agent said at login it is about to
	// register, normalized and valid; it may register others later, each
	// authorized on its own.
	Names []string
	// Remote is the address the agent connects from.
	Remote net.Addr
	// LoginTime is zero at a login. When the gateway checks a live
	// session again (after SetAuthenticator or Recheck), it is when the
	// session logged in: a token is then judged as of that time (a
	// short-lived token may have expired since, and its one use is this
	// session's), while what may have changed since (its key, its
	// names' owners) is judged as it is now.
	LoginTime time.Time
}

// Authenticator decides who an agent is and which names it may publish.
//
// The gateway calls it from many goroutines at once, one per agent session:
// implementations must be safe for concurrent use. Authenticate runs during
// the agent's login, with a context that ends at the gateway's handshake
// timeout (10s by default) or when the gateway closes; Authorize runs for
// each name the agent registers, with a context that ends when the gateway
// closes. Neither should block for long: an agent waits for the answer.
// After Server.SetAuthenticator, the new Authenticator is also called for
// every live session, with the credentials it logged in with and a context
// bounded by the handshake timeout, to decide whether the session stays.
//
// Errors: wrap ErrUnauthorized (Authenticate) or ErrForbidden (Authorize)
// to refuse; the agent is told so and stops retrying. The text the
// wrapping adds ("login refused: token expired") is shown to the agent:
// say why in words that help a legitimate user and nothing that helps an
// attacker (never which half of a user and password was wrong). Any other
// error is taken as a failure of the authenticator itself: the agent is
// told the gateway failed, and retries later; its text is only logged.
type Authenticator interface {
	// Authenticate maps credentials to an identity, or returns an error
	// wrapping ErrUnauthorized.
	Authenticate(ctx context.Context, c Credentials) (Identity, error)
	// Authorize returns nil if id may publish name, or an error wrapping
	// ErrForbidden.
	Authorize(ctx context.Context, id Identity, name string) error
}

// Sentinel errors of authenticators.
var (
	ErrUnauthorized = errors.New("login refused")
	ErrForbidden    = errors.New("name not allowed for this identity")
	// ErrNoCredentials is the refusal of an authenticator that found
	// none of the credentials it takes (no token, say): a chain of
	// authenticators prefers any other refusal's reason to it.
	ErrNoCredentials = fmt.Errorf("%w: no credentials given that this gateway takes", ErrUnauthorized)
)

// AuthFuncs adapts two functions to an Authenticator.
type AuthFuncs struct {
	AuthenticateFunc func(ctx context.Context, c Credentials) (Identity, error)
	AuthorizeFunc    func(ctx context.Context, id Identity, name string) error
}

// Authenticate calls f.AuthenticateFunc.
func (f AuthFuncs) Authenticate(ctx context.Context, c Credentials) (Identity, error) {
	return f.AuthenticateFunc(ctx, c)
}

// Authorize calls f.AuthorizeFunc.
func (f AuthFuncs) Authorize(ctx context.Context, id Identity, name string) error {
	return f.AuthorizeFunc(ctx, id, name)
}

var _ Authenticator = AuthFuncs{}

// Quota bounds what one identity may hold on a gateway at once. A zero
// field takes the gateway's default; a negative one means no limit.
type Quota struct {
	// Names is how many names the identity may hold, live or leased.
	Names int `yaml:"names,omitempty"`
	// Ports is how many public TCP ports its tunnels may hold.
	Ports int `yaml:"ports,omitempty"`
	// Sessions is how many agent sessions it may have logged in at once.
	Sessions int `yaml:"sessions,omitempty"`
	// CertOrdersPerHour is how many hosts of its tunnels may have a
	// certificate ordered (ACME) in any hour.
	CertOrdersPerHour int `yaml:"cert_orders_per_hour,omitempty"`
}

// Or returns q with its zero fields taken from def.
func (q Quota) Or(def Quota) Quota {
	pick := func(a, b int) int {
		if a != 0 {
			return a
		}
		return b
	}
	return Quota{
		Names:             pick(q.Names, def.Names),
		Ports:             pick(q.Ports, def.Ports),
		Sessions:          pick(q.Sessions, def.Sessions),
		CertOrdersPerHour: pick(q.CertOrdersPerHour, def.CertOrdersPerHour),
	}
}
