// Package protocol holds diglett's wire messages: the control-stream
// messages (hello, login, register, replies with error codes) and the short
// header that starts every data stream. PROTOCOL.md, beside it, is its
// spec; spec_test.go checks the spec against the constants.
package protocol

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
)

// Version is the protocol version this build speaks.
const Version = 1

// ALPN is the TLS application protocol name of agent connections.
const ALPN = "diglett"

// MaxMessageSize bounds the payload of one control message.
const MaxMessageSize = 16 << 10

// Limits on message fields.
const (
	MaxNameLen  = 63
	MaxTokenLen = 4096
	MaxAddrLen  = 64
	MaxNames    = 64 // names one session may register
	MaxAllowIPs = 64 // entries of Register.AllowIPs
	MaxURLLen   = 300
	MaxCredLen  = 256 // basic auth user or password
)

// Type identifies a control message.
type Type uint8

// Control message types.
const (
	TypeHello      Type = 1
	TypeLogin      Type = 2
	TypeLoginOK    Type = 3
	TypeRegister   Type = 4
	TypeRegistered Type = 5
	TypeError      Type = 6
	TypeDrain      Type = 7
	TypeNotice     Type = 8
)

func (t Type) String() string {
	switch t {
	case TypeHello:
		return "hello"
	case TypeLogin:
		return "login"
	case TypeLoginOK:
		return "login-ok"
	case TypeRegister:
		return "register"
	case TypeRegistered:
		return "registered"
	case TypeError:
		return "error"
	case TypeDrain:
		return "drain"
	case TypeNotice:
		return "notice"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Message is a control message.
type Message interface {
	Type() Type
	validate() error
}

// Hello opens the control stream in both directions: the agent sends its
// version first and the gateway answers with its own (or an Error).
type Hello struct {
	Version  int    `json:"version"`
	Software string `json:"software,omitempty"`
	// Instance tells the sessions of one agent process apart from those
	// of others: random, the same for every session of one Listener.
	Instance string `json:"instance,omitempty"`
	// Features are what the agent understands beyond the messages of its
	// version: FeatureNotice, say. A gateway sends nothing an agent did
	// not list.
	Features []string `json:"features,omitempty"`
}

// FeatureNotice says an agent reads Notice messages.
const FeatureNotice = "notice"

// FeatureUDP, in a gateway's hello, says the gateway publishes UDP
// tunnels (Register.UDP). An agent registers a UDP tunnel only with a
// gateway that lists it: one that predates UDP would ignore the field and
// publish a TCP port.
const FeatureUDP = "udp"

// Limits of Hello's further fields.
const (
	MaxInstanceLen = 64
	MaxFeatures    = 16
	MaxFeatureLen  = 32
)

// Login carries the agent's credentials, and the names it is about to
// register so that an authenticator can decide on them at once.
type Login struct {
	Token    string   `json:"token,omitempty"`
	User     string   `json:"user,omitempty"`
	Password string   `json:"password,omitempty"`
	Names    []string `json:"names,omitempty"`
}

// LoginOK accepts a Login and names the identity it authenticated.
type LoginOK struct {
	Identity string `json:"identity"`
}

// Register asks for a name to be published. Port asks for a specific public
// TCP port (refused if unavailable); PreferPort is a hint, used when free and
// otherwise ignored (an agent resuming after a gateway restart sends it).
// The other fields set how the gateway treats the tunnel's visitors; the
// latest registration of a name sets them for the whole group.
type Register struct {
	Name       string `json:"name"`
	Port       int    `json:"port,omitempty"`
	PreferPort int    `json:"prefer_port,omitempty"`
	// BasicAuth makes the gateway ask HTTP visitors for this user and
	// password. A tunnel with basic auth refuses visitors on its public
	// TCP port, where the gateway cannot ask.
	BasicAuth *BasicAuth `json:"basic_auth,omitempty"`
	// AllowIPs lets only visitors from these addresses or prefixes in
	// (CIDR, e.g. "10.0.0.0/8"); empty lets everyone in.
	AllowIPs []string `json:"allow_ips,omitempty"`
	// H2C says the backend speaks HTTP/2 without TLS (gRPC, say): the
	// gateway speaks HTTP/2 to it instead of HTTP/1.1.
	H2C bool `json:"h2c,omitempty"`
	// UDP asks for a public UDP port instead of a TCP port: the gateway
	// relays datagrams of each visitor address as a flow (see
	// StreamHeader.UDP). A UDP tunnel has no HTTP address.
	UDP bool `json:"udp,omitempty"`
}

// BasicAuth is the user and password HTTP visitors must give.
type BasicAuth struct {
	User     string `json:"user"`
	Password string `json:"password"`
}

// Registered confirms a Register with the public port assigned and, when
// the gateway serves HTTP by host name, the tunnel's URLs.
type Registered struct {
	Name     string `json:"name"`
	Port     int    `json:"port"`
	HTTPURL  string `json:"http_url,omitempty"`
	HTTPSURL string `json:"https_url,omitempty"`
}

// Drain tells the gateway that the agent is stopping: it sends the session
// no new visitors and closes its idle HTTP streams, while the visitors in
// flight go on until the agent closes the session. No reply.
type Drain struct{}

// Notice tells an agent, with no reply expected, of something that
// happened to one of its tunnels; the gateway sends it only to agents
// whose hello listed FeatureNotice.
type Notice struct {
	// Event is what happened: NoticeMemberJoined.
	Event string `json:"event"`
	// Name is the tunnel's name.
	Name string `json:"name"`
	// Agents is how many agent processes serve the tunnel now.
	Agents int `json:"agents"`
}

// Notice events.
const (
	// NoticeMemberJoined: another agent process joined the tunnel; the
	// gateway now spreads its visitors over them all.
	NoticeMemberJoined = "member_joined"
)

// Error refuses the last request. Code is one of the Code constants.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

func (*Hello) Type() Type      { return TypeHello }
func (*Login) Type() Type      { return TypeLogin }
func (*LoginOK) Type() Type    { return TypeLoginOK }
func (*Register) Type() Type   { return TypeRegister }
func (*Registered) Type() Type { return TypeRegistered }
func (*Error) Type() Type      { return TypeError }
func (*Drain) Type() Type      { return TypeDrain }
func (*Notice) Type() Type     { return TypeNotice }

func (m *Hello) validate() error {
	if m.Version < 1 {
		return fmt.Errorf("hello: bad version %d", m.Version)
	}
	if len(m.Software) > 128 {
		return errors.New("hello: software string too long")
	}
	if len(m.Instance) > MaxInstanceLen {
		return errors.New("hello: instance too long")
	}
	if len(m.Features) > MaxFeatures {
		return fmt.Errorf("hello: more than %d features", MaxFeatures)
	}
	for _, f := range m.Features {
		if len(f) > MaxFeatureLen {
			return errors.New("hello: feature name too long")
		}
	}
	return nil
}

func (m *Login) validate() error {
	if len(m.Token) > MaxTokenLen {
		return errors.New("login: token too long")
	}
	if len(m.User) > MaxCredLen || len(m.Password) > MaxCredLen {
		return errors.New("login: user or password too long")
	}
	if len(m.Names) > MaxNames {
		return fmt.Errorf("login: more than %d names", MaxNames)
	}
	for _, n := range m.Names {
		if err := ValidateName(n); err != nil {
			return fmt.Errorf("login: %w", err)
		}
	}
	return nil
}

func (m *LoginOK) validate() error {
	if len(m.Identity) > 256 {
		return errors.New("login-ok: identity too long")
	}
	return nil
}

func (m *Register) validate() error {
	if err := ValidateName(m.Name); err != nil {
		return fmt.Errorf("register: %w", err)
	}
	if m.Port < 0 || m.Port > 65535 || m.PreferPort < 0 || m.PreferPort > 65535 {
		return errors.New("register: port out of range")
	}
	if a := m.BasicAuth; a != nil {
		if a.User == "" || len(a.User) > MaxCredLen || strings.ContainsAny(a.User, ":\x00\r\n") {
			return errors.New("register: basic auth user must be 1 to 256 bytes without ':' or control characters")
		}
		if a.Password == "" || len(a.Password) > MaxCredLen {
			return errors.New("register: basic auth password must be 1 to 256 bytes")
		}
	}
	if _, err := ParseAllowIPs(m.AllowIPs); err != nil {
		return fmt.Errorf("register: %w", err)
	}
	if m.UDP && (m.BasicAuth != nil || m.H2C) {
		return errors.New("register: a UDP tunnel takes no basic auth or h2c: it has no HTTP address")
	}
	return nil
}

// ParseAllowIPs parses an allow-list of addresses and CIDR prefixes of at
// most MaxAllowIPs entries.
func ParseAllowIPs(list []string) ([]netip.Prefix, error) {
	if len(list) > MaxAllowIPs {
		return nil, fmt.Errorf("at most %d allowed addresses, got %d", MaxAllowIPs, len(list))
	}
	return ParsePrefixes(list)
}

// PrefixesContain reports whether ip, IPv4-mapped IPv6 taken as IPv4, is
// in one of list.
func PrefixesContain(list []netip.Prefix, ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range list {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// ParsePrefixes parses addresses and CIDR prefixes; an address is a prefix
// of its full length. IPv4-mapped IPv6 addresses are taken as IPv4.
func ParsePrefixes(list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		s = strings.TrimSpace(s)
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("address %q: want an IP address or a CIDR prefix such as 10.0.0.0/8", s)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

func (m *Registered) validate() error {
	if err := ValidateName(m.Name); err != nil {
		return fmt.Errorf("registered: %w", err)
	}
	if m.Port < 0 || m.Port > 65535 {
		return errors.New("registered: port out of range")
	}
	if len(m.HTTPURL) > MaxURLLen || len(m.HTTPSURL) > MaxURLLen {
		return errors.New("registered: URL too long")
	}
	return nil
}

func (m *Drain) validate() error { return nil }

func (m *Notice) validate() error {
	if m.Event == "" || len(m.Event) > 64 {
		return errors.New("notice: bad event")
	}
	if err := ValidateName(m.Name); err != nil {
		return fmt.Errorf("notice: %w", err)
	}
	if m.Agents < 0 {
		return errors.New("notice: negative agents")
	}
	return nil
}

func (m *Error) validate() error {
	if m.Code == "" {
		return errors.New("error: empty code")
	}
	if len(m.Code) > 64 || len(m.Message) > 1024 {
		return errors.New("error: too long")
	}
	return nil
}

// Error implements error so a received Error can be returned as is.
func (m *Error) Error() string {
	if m.Message == "" {
		return string(m.Code)
	}
	return m.Message
}

// Code is an error code carried by an Error message.
type Code string

// Error codes.
const (
	CodeBadRequest      Code = "bad_request" // malformed or unexpected message
	CodeVersion         Code = "unsupported_version"
	CodeUnauthorized    Code = "unauthorized"     // token refused
	CodeForbidden       Code = "forbidden"        // identity may not use this name
	CodeNameTaken       Code = "name_taken"       // name held by another identity
	CodePortUnavailable Code = "port_unavailable" // requested port in use or outside the range
	CodeTooManyNames    Code = "too_many_names"
	CodeInternal        Code = "internal"
	CodeShuttingDown    Code = "shutting_down"
	CodeQuotaExceeded   Code = "quota_exceeded" // the identity reached one of its quotas; the message says which
	// Too many failed logins from the agent's address: the message says
	// when to retry.
	CodeTooManyFailures Code = "too_many_failures"
	// The gateway cannot check the request now (its cluster's store is
	// unreachable): try again later.
	CodeUnavailable Code = "unavailable"
)

// ValidateName checks that name is a DNS label: 1 to 63 characters of
// lowercase letters, digits and hyphens, not starting or ending with a
// hyphen.
func ValidateName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("name longer than %d characters", MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i != 0 && i != len(name)-1:
		default:
			return fmt.Errorf("name %q: only lowercase letters, digits and inner hyphens are allowed", name)
		}
	}
	return nil
}

// NormalizeName lowercases name; callers validate the result.
func NormalizeName(name string) string { return strings.ToLower(strings.TrimSpace(name)) }

// WriteMessage writes m as one frame: type (1 byte), payload length
// (2 bytes, big endian) and the JSON payload.
func WriteMessage(w io.Writer, m Message) error {
	payload, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode %s: %w", m.Type(), err)
	}
	if len(payload) > MaxMessageSize {
		return fmt.Errorf("encode %s: payload of %d bytes exceeds %d", m.Type(), len(payload), MaxMessageSize)
	}
	buf := make([]byte, 3+len(payload))
	buf[0] = byte(m.Type())
	binary.BigEndian.PutUint16(buf[1:3], uint16(len(payload)))
	copy(buf[3:], payload)
	_, err = w.Write(buf)
	return err
}

// ErrMalformed is wrapped by every decoding error caused by the peer's bytes.
var ErrMalformed = errors.New("malformed message")

// ReadMessage reads one frame written by WriteMessage. It never reads more
// than 3+MaxMessageSize bytes.
func ReadMessage(r io.Reader) (Message, error) {
	t, payload, err := ReadFrame(r)
	if err != nil {
		return nil, err
	}
	return DecodeMessage(t, payload)
}

// SplitFrame finds the first frame written by WriteMessage in b, for a
// reader that gathers bytes as they come: ok is false while b holds only
// part of it. payload and rest share b's memory. A frame announcing a
// payload over MaxMessageSize is ErrMalformed, as soon as its header is in.
func SplitFrame(b []byte) (t Type, payload, rest []byte, ok bool, err error) {
	if len(b) < 3 {
		return 0, nil, b, false, nil
	}
	n := int(binary.BigEndian.Uint16(b[1:3]))
	if n > MaxMessageSize {
		return 0, nil, b, false, fmt.Errorf("%w: payload of %d bytes exceeds %d", ErrMalformed, n, MaxMessageSize)
	}
	if len(b) < 3+n {
		return 0, nil, b, false, nil
	}
	return Type(b[0]), b[3 : 3+n], b[3+n:], true, nil
}

// ReadFrame reads one frame written by WriteMessage and returns its type
// and payload, undecoded (DecodeMessage decodes them). It never reads more
// than 3+MaxMessageSize bytes; a longer payload is ErrMalformed.
func ReadFrame(r io.Reader) (Type, []byte, error) {
	var hdr [3]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[1:3]))
	if n > MaxMessageSize {
		return 0, nil, fmt.Errorf("%w: payload of %d bytes exceeds %d", ErrMalformed, n, MaxMessageSize)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return Type(hdr[0]), payload, nil
}

// DecodeMessage decodes and validates the payload of a message of type t.
func DecodeMessage(t Type, payload []byte) (Message, error) {
	var m Message
	switch t {
	case TypeHello:
		m = new(Hello)
	case TypeLogin:
		m = new(Login)
	case TypeLoginOK:
		m = new(LoginOK)
	case TypeRegister:
		m = new(Register)
	case TypeRegistered:
		m = new(Registered)
	case TypeError:
		m = new(Error)
	case TypeDrain:
		m = new(Drain)
	case TypeNotice:
		m = new(Notice)
	default:
		return nil, fmt.Errorf("%w: unknown type %d", ErrMalformed, uint8(t))
	}
	if err := json.Unmarshal(payload, m); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, t, err)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return m, nil
}
