package diglett

import (
	"errors"

	"github.com/diglett/diglett/internal/printable"
	"github.com/diglett/diglett/internal/protocol"
)

// Errors callers branch on. Errors returned by Listen and Accept wrap them;
// the agent stops reconnecting on the ones marked fatal.
var (
	// ErrUnauthorized: the gateway refused the login: its token, user or
	// password (fatal).
	ErrUnauthorized = errors.New("login refused by the gateway")
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
	// ErrQuotaExceeded: the identity reached one of its quotas on the
	// gateway (names, ports or sessions); the message says which.
	ErrQuotaExceeded = errors.New("quota exceeded")
	// ErrGatewayBusy: the gateway is at its limit of connections in
	// their handshake and refused this one; the agent retries with
	// backoff, at start too.
	ErrGatewayBusy = errors.New("gateway busy")
	// ErrRefused: the gateway refused a request for another reason.
	ErrRefused = errors.New("refused by the gateway")
	// ErrUDPUnsupported: the gateway does not publish UDP tunnels (it
	// predates them) and Config.UDP asks for one (fatal).
	ErrUDPUnsupported = errors.New("gateway does not serve UDP tunnels")
)

// IsFatal reports whether err is one the agent must not retry: a wrong
// token, a refused name, a version mismatch, an untrusted gateway or one
// that does not serve UDP tunnels.
func IsFatal(err error) bool {
	return errors.Is(err, ErrUnauthorized) || errors.Is(err, ErrNameRefused) ||
		errors.Is(err, ErrVersionMismatch) || errors.Is(err, ErrGatewayKeyMismatch) ||
		errors.Is(err, ErrGatewayUntrusted) || errors.Is(err, ErrUDPUnsupported)
}

// RefusedError is a refusal sent by the gateway. It unwraps to the sentinel
// error matching its code.
type RefusedError struct {
	Code    string // wire error code
	Message string // the gateway's explanation
}

// Error is the gateway's explanation made safe to print: control
// characters and terminal escapes are shown escaped (\x1b, \n), and the
// length is bounded, so that a gateway can neither forge log lines nor
// drive the agent's terminal.
func (e *RefusedError) Error() string { return printable.String(e.Message, printable.MaxRunes) }

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
	case protocol.CodeQuotaExceeded:
		return ErrQuotaExceeded
	}
	return ErrRefused
}

// refusal makes the RefusedError of a gateway's Error message; its Message
// is already safe to print, for callers that print it rather than the
// error.
func refusal(m *protocol.Error) error {
	msg := m.Message
	if msg == "" {
		msg = string(m.Code)
	}
	return &RefusedError{Code: string(m.Code), Message: printable.String(msg, printable.MaxRunes)}
}
