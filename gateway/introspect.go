package gateway

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/diglett/diglett/internal/printable"
	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/transport"
)

// What the operator sees of the gateway (a management API, say): copies of
// its tunnels, agent sessions and leases, taken under its locks and
// returned without them, and the two things an operator may do to them:
// disconnect an agent and release a lease.

// Tunnel states, as TunnelInfo.State gives them.
const (
	// StateLive: at least one agent session serves the tunnel.
	StateLive = "live"
	// StateLeased: no agent is online; the name and port stay reserved
	// for the identity until LeaseEnds.
	StateLeased = "leased"
)

// TunnelInfo is a tunnel as Tunnels lists it.
type TunnelInfo struct {
	Name string `json:"name"`
	// Hosts are the HTTP(S) hosts the tunnel answers on: NAME.Domain, then
	// its further hosts (Config.Hosts). Empty without a Domain or hosts.
	Hosts []string `json:"hosts"`
	// Port is the public port (TCP, or UDP for a UDP tunnel); 0 while a
	// lease restored after a restart could not bind its old one (its
	// owner gets a new one).
	Port int `json:"port"`
	// Protocol is the public port's: "tcp", or "udp" for a UDP tunnel
	// (which has no hosts).
	Protocol string `json:"protocol"`
	Identity string `json:"identity"`
	// State is StateLive or StateLeased.
	State string `json:"state"`
	// LeaseEnds is when a leased tunnel's name and port are freed; zero
	// (and left out of JSON) while live.
	LeaseEnds time.Time `json:"lease_ends,omitzero"`
	// Members are the agent sessions serving the tunnel (its group),
	// oldest first.
	Members []MemberInfo `json:"members"`
	// Visitors are the visitor connections open: TCP-port visitors plus
	// HTTP requests in flight.
	Visitors int64 `json:"visitors"`
}

// MemberInfo is an agent session serving a tunnel.
type MemberInfo struct {
	// Session is the session's id, as AgentInfo.ID and Disconnect take it.
	Session uint64 `json:"session"`
	// Address is the agent's address as the gateway sees it.
	Address string `json:"address"`
	// Transport is tcp (TLS and a multiplexer), quic or ws (WebSocket).
	Transport string `json:"transport"`
	// Since is when the session began.
	Since time.Time `json:"since"`
}

// AgentInfo is a logged-in agent session as Agents lists it.
type AgentInfo struct {
	ID        uint64    `json:"id"`
	Identity  string    `json:"identity"`
	Address   string    `json:"address"`
	Transport string    `json:"transport"`
	Since     time.Time `json:"since"`
	// Names are the tunnels the session serves; empty once it drained.
	Names []string `json:"names"`
}

// LeaseInfo is a name and port reserved for an identity with no agent
// online.
type LeaseInfo struct {
	Name     string    `json:"name"`
	Identity string    `json:"identity"`
	Port     int       `json:"port"`
	Ends     time.Time `json:"ends"`
}

// Errors of Disconnect and ReleaseLease.
var (
	// ErrNoSession: no logged-in agent session has this id (it may have
	// ended).
	ErrNoSession = errors.New("no such agent session")
	// ErrNoTunnel: no tunnel, live or leased, has this name.
	ErrNoTunnel = errors.New("no such tunnel")
	// ErrTunnelLive: the tunnel has agents online, so it holds no lease to
	// release; disconnect them first (their reconnect then takes the name
	// back, unless the lease is released in between).
	ErrTunnelLive = errors.New("tunnel is live")
)

// ReasonDisconnected is what an agent disconnected by Disconnect is told,
// followed by the operator's reason if one was given.
const ReasonDisconnected = "disconnected by the gateway's operator"

// maxReasonRunes bounds the operator's reason given to Disconnect.
const maxReasonRunes = 200

// Tunnels lists the tunnels, live and leased, sorted by name.
func (s *Server) Tunnels() []TunnelInfo {
	type row struct {
		t        *tunnel
		info     TunnelInfo
		sessions []*session
	}
	s.reg.mu.Lock()
	rows := make([]row, 0, len(s.reg.byName))
	for _, t := range s.reg.byName {
		info := TunnelInfo{Name: t.name, Port: t.port, Protocol: protoName(t.udp), Identity: t.identity, State: StateLive}
		members := t.live()
		if len(members) == 0 {
			info.State, info.LeaseEnds = StateLeased, t.leaseEnd
		}
		rows = append(rows, row{t: t, info: info, sessions: members})
	}
	s.reg.mu.Unlock()

	out := make([]TunnelInfo, len(rows))
	for i, r := range rows {
		info := r.info
		info.Hosts = s.routeHosts(info.Name)
		if info.Hosts == nil {
			info.Hosts = []string{}
		}
		info.Members = make([]MemberInfo, len(r.sessions))
		for j, ss := range r.sessions {
			info.Members[j] = MemberInfo{Session: ss.id, Address: ss.sess.RemoteAddr().String(), Transport: ss.via, Since: ss.since}
		}
		info.Visitors = s.limits.heldBy(r.t)
		out[i] = info
	}
	slices.SortFunc(out, func(a, b TunnelInfo) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// Agents lists the logged-in agent sessions, oldest first.
func (s *Server) Agents() []AgentInfo {
	s.mu.Lock()
	sessions := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()
	out := make([]AgentInfo, 0, len(sessions))
	for _, ss := range sessions {
		id := ss.loggedIn.Load()
		if id == nil {
			continue // still in its handshake
		}
		names, _ := ss.names()
		slices.Sort(names)
		out = append(out, AgentInfo{ID: ss.id, Identity: *id, Address: ss.sess.RemoteAddr().String(),
			Transport: ss.via, Since: ss.since, Names: names})
	}
	slices.SortFunc(out, func(a, b AgentInfo) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Leases lists the leased tunnels, sorted by name.
func (s *Server) Leases() []LeaseInfo {
	s.reg.mu.Lock()
	var out []LeaseInfo
	for _, t := range s.reg.byName {
		if len(t.live()) == 0 {
			out = append(out, LeaseInfo{Name: t.name, Identity: t.identity, Port: t.port, Ends: t.leaseEnd})
		}
	}
	s.reg.mu.Unlock()
	if out == nil {
		out = []LeaseInfo{}
	}
	slices.SortFunc(out, func(a, b LeaseInfo) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// Disconnect ends the logged-in agent session id: it gets no new
// visitors at once (its tunnels keep their names and ports under the
// lease, as after any disconnect), its agent is sent an error with code
// shutting_down and the message ReasonDisconnected, followed by reason if
// not empty, and the session is closed a second later. The code is one
// an agent retries on: it shows the message and reconnects, taking its
// names back. To keep an agent out, revoke its token and reload. reason
// is made printable and cut to 200 characters.
func (s *Server) Disconnect(id uint64, reason string) error {
	s.mu.Lock()
	var ss *session
	for x := range s.sessions {
		if x.id == id {
			ss = x
			break
		}
	}
	s.mu.Unlock()
	if ss == nil || ss.loggedIn.Load() == nil {
		return fmt.Errorf("%w: %d", ErrNoSession, id)
	}
	msg := ReasonDisconnected
	if reason = printable.String(reason, maxReasonRunes); reason != "" {
		msg += ": " + reason
	}
	lg := &ss.login
	// Held by a re-check of this session (reload.go) for its
	// Authenticator's answer at most, which HandshakeTimeout bounds.
	lg.mu.Lock()
	if lg.revoked || ss.sess.Context().Err() != nil {
		lg.mu.Unlock()
		return fmt.Errorf("%w: %d (it is already ending)", ErrNoSession, id)
	}
	lg.revoked = true // a re-check leaves it alone
	log := ss.loginLog()
	lg.mu.Unlock()
	log.Info("agent session closed by the operator", "reason", reason)
	ss.leave()
	timer := time.AfterFunc(revokeGrace, func() { ss.sess.CloseWithError(transport.CodeNone, msg) })
	context.AfterFunc(ss.sess.Context(), func() { timer.Stop() })
	// Bounded: the timer closes the session, which ends the write.
	ss.reply(lg.ctrl, &protocol.Error{Code: protocol.CodeShuttingDown, Message: msg})
	return nil
}

// ReleaseLease ends the lease of tunnel name now: the name and its port
// are free for anyone at once, and its registerers take its routes down.
// A live tunnel has no lease to release (ErrTunnelLive).
func (s *Server) ReleaseLease(name string) error {
	r := s.reg
	r.mu.Lock()
	t := r.byName[name]
	if t == nil {
		r.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrNoTunnel, name)
	}
	if n := len(t.live()); n > 0 {
		r.mu.Unlock()
		return fmt.Errorf("%w: agents serve %q (sessions: %d); disconnect them first", ErrTunnelLive, name, n)
	}
	r.removeLocked(t)
	r.persistLocked()
	r.mu.Unlock()
	t.log.Info("lease released by the operator, name and port freed", "port", t.port)
	t.reconcile()
	go r.release(t)
	return nil
}

// heldBy is the number of t's visitors open.
func (l *visitorLimits) heldBy(t *tunnel) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.tunnels[t]
}
