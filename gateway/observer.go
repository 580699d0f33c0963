package gateway

// The gateway's events, told to an Observer (metrics, say) so that the
// gateway itself depends on no metrics library.

// Observer is told what the gateway does: agents logging in and out,
// tunnels going live, leased and away, TCP visitors, UDP flows and
// dropped datagrams, refused logins and failing registerers. Its methods
// are called concurrently, some on the visitors' path and some under the
// registry's lock: they must return at once and must not call back into
// the gateway. Embed NopObserver to implement only some of them.
type Observer interface {
	// SessionOpened: an agent logged in over transport ("tcp", "quic"
	// or "ws").
	SessionOpened(transport string)
	// SessionClosed: an agent that had logged in over transport is gone.
	SessionClosed(transport string)
	// TunnelChanged: tunnel is now in state, with members agent sessions
	// serving it (0 unless live). A removed tunnel is not told again
	// unless it is published anew.
	TunnelChanged(tunnel string, state TunnelState, members int)
	// Registered: an agent was granted tunnel.
	Registered(tunnel string)
	// LeaseStarted: tunnel's last agent left; its name and port are
	// leased.
	LeaseStarted(tunnel string)
	// LeaseExpired: tunnel's lease ended with no agent back.
	LeaseExpired(tunnel string)
	// VisitorOpened: a TCP visitor of tunnel reached an agent.
	VisitorOpened(tunnel string)
	// VisitorClosed: that visitor's connection ended, after in bytes from
	// the visitor and out bytes to it.
	VisitorClosed(tunnel string, in, out int64)
	// LoginRefused: an agent's login was refused, for reason.
	LoginRefused(reason LoginRefusal)
	// RegistererFailed: a Register or Close call of registerer failed
	// (it is retried).
	RegistererFailed(registerer string)
	// UDPFlowOpened: a UDP visitor of tunnel (a flow: the datagrams of
	// one visitor address) reached an agent.
	UDPFlowOpened(tunnel string)
	// UDPFlowClosed: that flow ended, after in bytes from the visitor and
	// out bytes to it.
	UDPFlowClosed(tunnel string, in, out int64)
	// DatagramDropped: a datagram of a UDP tunnel was dropped, for
	// reason.
	DatagramDropped(tunnel string, reason DatagramDrop)
}

// DatagramDrop is why a datagram of a UDP tunnel was dropped: one of a
// few fixed values.
type DatagramDrop string

// Reasons for dropped datagrams.
const (
	// DropTooLarge: the datagram does not fit the agent's path (a QUIC
	// datagram), or is larger than a UDP payload may be.
	DropTooLarge DatagramDrop = "too_large"
	// DropFlowLimit: a datagram from a new visitor address beyond the
	// tunnel's flow caps (Config.UDPMaxFlows, UDPMaxFlowsPerSource).
	DropFlowLimit DatagramDrop = "flow_limit"
	// DropQueueFull: the flow's queue to its agent was full (or, while
	// the agent's status was awaited, held as many datagrams as it may).
	DropQueueFull DatagramDrop = "queue_full"
	// DropNoAgent: no agent of this gateway took the flow (none online,
	// none reachable, or it refused the flow).
	DropNoAgent DatagramDrop = "no_agent"
	// DropNotAllowed: the visitor's address is not in the tunnel's
	// allowed IPs.
	DropNotAllowed DatagramDrop = "not_allowed"
)

// TunnelState is where a tunnel stands.
type TunnelState string

// Tunnel states.
const (
	TunnelLive    TunnelState = "live"    // at least one agent serves it
	TunnelLeased  TunnelState = "leased"  // its agents are gone; name and port reserved
	TunnelRemoved TunnelState = "removed" // name and port released
)

// LoginRefusal is why a login was refused: one of a few fixed values.
type LoginRefusal string

// Reasons for refused logins.
const (
	// RefusedCredentials: the Authenticator refused the credentials
	// (missing, wrong or expired).
	RefusedCredentials LoginRefusal = "credentials"
	// RefusedLockedOut: the source had too many failed logins.
	RefusedLockedOut LoginRefusal = "locked_out"
	// RefusedQuota: the identity has as many sessions as its quota.
	RefusedQuota LoginRefusal = "quota"
	// RefusedVersion: the agent speaks another protocol version.
	RefusedVersion LoginRefusal = "version"
	// RefusedError: the Authenticator failed (an error other than a
	// refusal).
	RefusedError LoginRefusal = "error"
)

// NopObserver ignores every event; embed it to observe only some.
type NopObserver struct{}

func (NopObserver) SessionOpened(string)                   {}
func (NopObserver) SessionClosed(string)                   {}
func (NopObserver) TunnelChanged(string, TunnelState, int) {}
func (NopObserver) Registered(string)                      {}
func (NopObserver) LeaseStarted(string)                    {}
func (NopObserver) LeaseExpired(string)                    {}
func (NopObserver) VisitorOpened(string)                   {}
func (NopObserver) VisitorClosed(string, int64, int64)     {}
func (NopObserver) LoginRefused(LoginRefusal)              {}
func (NopObserver) RegistererFailed(string)                {}
func (NopObserver) UDPFlowOpened(string)                   {}
func (NopObserver) UDPFlowClosed(string, int64, int64)     {}
func (NopObserver) DatagramDropped(string, DatagramDrop)   {}

var _ Observer = NopObserver{}
