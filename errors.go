package diglett

import (
	"errors"

	"github.com/diglett/diglett/internal/protocol"
)

// Errors callers branch on. Errors returned by Listen and Accept wrap them;
// the agent stops reconnecting on the ones marked fatal.
var (
	// ErrUnauthorized: the gateway refused the token (fatal).
	ErrUnauthorized = errors.New("token refused by the gateway")
	// ErrNameRefused: the identity may not publish the name (fatal).
	ErrNameRefused = errors.New("name refused by the gateway")
	// ErrNameTaken: another identity holds the name, perhaps under a lease.
	ErrNameTaken = errors.New("name taken")
	// ErrPortUnavailable: the requested port is in use or outside the
	// gateway's range.
	ErrPortUnavailable = errors.New("port unavailable")
	// ErrVersionMismatch: agent and gateway speak different protocol
	// versions (fatal).
	ErrVersionMismatch = errors.New("protocol version mismatch")
	// ErrGatewayKeyMismatch: the gateway's key differs from the pinned one
	// (fatal): either the gateway was re-keyed or someone is in the middle.
	ErrGatewayKeyMismatch = errors.New("gateway key mismatch")
	// ErrGatewayUntrusted: the gateway's certificate did not verify
	// against the configured CA (fatal).
	ErrGatewayUntrusted = errors.New("gateway certificate not trusted")
	// ErrRefused: the gateway refused a request for another reason.
	ErrRefused = errors.New("refused by the gateway")
)

// IsFatal reports whether err is one the agent must not retry: a wrong
// token, a refused name, a version mismatch or an untrusted gateway.
func IsFatal(err error) bool {
	return errors.Is(err, ErrUnauthorized) || errors.Is(err, ErrNameRefused) ||
		errors.Is(err, ErrVersionMismatch) || errors.Is(err, ErrGatewayKeyMismatch) ||
		errors.Is(err, ErrGatewayUntrusted)
}

// RefusedError is a refusal sent by the gateway. It unwraps to the sentinel
// error matching its code.
type RefusedError struct {
	Code    string // wire error code
	Message string // the gateway's explanation
}

func (e *RefusedError) Error() string { return e.Message }

// Unwrap maps the wire code to a sentinel error.
func (e *RefusedError) Unwrap() error {
	switch protocol.Code(e.Code) {
	case protocol.CodeUnauthorized:
		return ErrUnauthorized
	case protocol.CodeForbidden:
		return ErrNameRefused
	case protocol.CodeNameTaken:
		return ErrNameTaken
	case protocol.CodePortUnavailable:
		return ErrPortUnavailable
	case protocol.CodeVersion:
		return ErrVersionMismatch
	}
	return ErrRefused
}

func refusal(m *protocol.Error) error {
	msg := m.Message
	if msg == "" {
		msg = string(m.Code)
	}
	return &RefusedError{Code: string(m.Code), Message: msg}
}
