package gateway

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/diglett/diglett/internal/lazylog"
	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/relay"
	"github.com/diglett/diglett/internal/transport"
)

// A node of a cluster serves every tunnel of the cluster: the ones its own
// agents serve, and the remote ones, which only other nodes' agents
// serve. A remote tunnel has its public port open here and answers its
// host; each visitor is sent over a Forwarder to a node that serves it,
// whose gateway opens a stream to one of its agents (ServeForwarded) and
// relays it as is. The visitor rules of a remote tunnel are the ones its
// serving node published with its hold (Cluster.Hold's rules).

// RemoteTunnel is a tunnel that other nodes of the cluster serve.
type RemoteTunnel struct {
	Name, Identity string
	// Port is its public port in the cluster; 0 for none.
	Port int
	// Nodes are the ids of the nodes serving it; this node is not among
	// them. None: its agents are away, their lease running on the node
	// they left, and its visitors are answered as a leased tunnel's.
	Nodes []string
	// Rules are its visitor rules as the latest serving node published
	// them (see Cluster.Hold); nil for none.
	Rules []byte
}

// Forwarder opens streams to the agents of other nodes.
type Forwarder interface {
	// OpenStream opens to node a stream for visitor of tunnel name, as
	// Member.OpenStream does for an agent of this node: the far node
	// opens one to its agent (ServeForwarded) and relays it, the agent's
	// status byte first. The stream also has Reset and CloseWrite.
	OpenStream(ctx context.Context, node, name, visitor string) (net.Conn, error)
}

// remoteMember is another node serving a tunnel, as a Member.
type remoteMember struct {
	f      Forwarder
	node   string
	id     uint64
	ctx    context.Context
	cancel context.CancelFunc
}

func newRemoteMember(f Forwarder, node string) *remoteMember {
	h := fnv.New64a()
	h.Write([]byte(node))
	ctx, cancel := context.WithCancel(context.Background())
	// The top bit apart from the sessions' ids, which count up from 1.
	return &remoteMember{f: f, node: node, id: h.Sum64() | 1<<63, ctx: ctx, cancel: cancel}
}

func (m *remoteMember) ID() uint64               { return m.id }
func (m *remoteMember) Serves(string) bool       { return m.ctx.Err() == nil }
func (m *remoteMember) Context() context.Context { return m.ctx }

func (m *remoteMember) OpenStream(ctx context.Context, name, visitor string) (net.Conn, error) {
	return m.f.OpenStream(ctx, m.node, name, visitor)
}

var _ Member = (*remoteMember)(nil)

// remoteMembers is what t gets from the other nodes; nil when none.
func (t *tunnel) remoteMembers() []Member {
	if p := t.remote.Load(); p != nil {
		return *p
	}
	return nil
}

// SetRemoteTunnels makes ts the remote tunnels of this node, served
// through f (see Forwarder): each gets its port opened here (when this
// node does not serve it too) and answers its host; tunnels no longer in
// ts that no agent of this node serves are taken down. The caller (the
// cluster's watch) passes the whole set each time.
func (s *Server) SetRemoteTunnels(f Forwarder, ts []RemoteTunnel) {
	r := s.reg
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	seen := make(map[string]bool, len(ts))
	for _, rt := range ts {
		if protocol.ValidateName(rt.Name) != nil {
			continue
		}
		seen[rt.Name] = true
		t := r.byName[rt.Name]
		if t != nil && t.identity != rt.Identity {
			// The cluster's store gives a name one owner: a tunnel
			// of another owner here is one the store released.
			t.log.Warn("tunnel of this node's owner differs from the cluster's; left as it is", "cluster_identity", rt.Identity)
			continue
		}
		pol, err := decodeRules(rt.Rules)
		if err != nil {
			s.log.Warn("remote tunnel's visitor rules unreadable; not served here", "tunnel", rt.Name, "err", err)
			continue
		}
		if t == nil {
			// The owner's quota is known where it logged in: this node
			// applies its defaults (certificate orders, say).
			t = &tunnel{reg: r, name: rt.Name, identity: rt.Identity, port: rt.Port, remoteOnly: true,
				udp: pol.udp, quota: s.cfg.Quota}
			t.log = lazylog.Func(s.log, t.logAttrs)
			if rt.Port > 0 {
				ln, err := r.bindPort(t.udp, rt.Port)
				if err != nil {
					t.log.Warn("remote tunnel's port not available on this node; served by host only", "port", rt.Port, "err", err)
				} else {
					t.ln = ln
				}
			}
			t.visitors.Store(pol)
			r.byName[t.name] = t
			if t.ln != nil {
				r.byPort[t.port] = t
				s.visitors.Add(1)
				go t.serve()
			}
			r.publishLocked()
			t.log.Info("serving a tunnel of other nodes", "nodes", rt.Nodes, "port", rt.Port)
			r.srv.obs.TunnelChanged(t.name, TunnelLive, 0)
			t.reconcileLocked()
		} else if len(t.live()) == 0 {
			t.visitors.Store(pol)
		}
		t.setRemoteLocked(f, rt.Nodes)
	}
	for name, t := range r.byName {
		if seen[name] {
			continue
		}
		t.setRemoteLocked(f, nil)
		if t.remoteOnly {
			t.log.Info("tunnel released in the cluster; no longer served here")
			r.removeLocked(t)
			t.reconcileLocked()
		}
	}
}

// setRemoteLocked makes nodes t's remote members, keeping the members of
// nodes that stay. Called under reg.mu.
func (t *tunnel) setRemoteLocked(f Forwarder, nodes []string) {
	old := t.remoteMembers()
	if len(nodes) == 0 {
		for _, m := range old {
			m.(*remoteMember).cancel()
		}
		t.remote.Store(nil)
		return
	}
	next := make([]Member, 0, len(nodes))
	for _, n := range nodes {
		i := slices.IndexFunc(old, func(m Member) bool { return m.(*remoteMember).node == n })
		if i >= 0 {
			next = append(next, old[i])
			continue
		}
		next = append(next, newRemoteMember(f, n))
	}
	for _, m := range old {
		if !slices.Contains(next, m) {
			m.(*remoteMember).cancel()
		}
	}
	t.remote.Store(&next)
}

// serveRemote forwards a visitor of a tunnel none of this node's agents
// serves to a node that serves it, trying each once.
func (t *tunnel) serveRemote(c net.Conn, members []Member) {
	srv := t.reg.srv
	var st transport.Stream
	var via Member
	inTurn(t, members, func(m Member) bool {
		ctx, cancel := context.WithTimeout(srv.ctx, srv.cfg.HandshakeTimeout)
		conn, err := m.OpenStream(ctx, t.name, c.RemoteAddr().String())
		cancel()
		if err != nil {
			t.log.Debug("forward to another node failed, trying the next", "node", m.(*remoteMember).node, "err", err)
			return false
		}
		s, ok := conn.(transport.Stream)
		if !ok {
			conn.Close()
			t.log.Warn("forwarder's stream has no Reset and CloseWrite; not used")
			return false
		}
		st, via = s, m
		return true
	})
	if st == nil {
		t.log.Debug("visitor refused: no node reachable", "visitor", c.RemoteAddr())
		reset(c)
		return
	}
	t.relayVisitor(c, st, via.ID(), "node", via.(*remoteMember).node)
}

// ServeForwarded serves a stream another node of the cluster opened for
// visitor of tunnel name (its Forwarder's OpenStream): it opens a stream
// to one of this node's agents serving name and relays the two as they
// are, the agent's status byte first. Without such an agent it answers
// the status "unknown tunnel". It returns when the relay ends; c is
// closed.
func (s *Server) ServeForwarded(ctx context.Context, name, visitor string, c net.Conn) {
	defer c.Close()
	t := s.reg.route(name)
	var members []*session
	if t != nil {
		members = t.live()
	}
	if len(members) == 0 {
		c.SetWriteDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
		c.Write([]byte{byte(protocol.StatusUnknownTunnel)})
		return
	}
	served := inTurn(t, members, func(m *session) bool {
		octx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
		// A UDP tunnel's flow crosses the link in frames (flow 0),
		// relayed as they are.
		st, err := m.openWith(octx, protocol.StreamHeader{Name: name, Visitor: visitor, UDP: t.udp})
		cancel()
		if err != nil {
			return false
		}
		if _, _, err := relay.PipeWith(c, st, relay.Options{HalfCloseTimeout: s.cfg.HalfCloseTimeout}); err != nil {
			t.log.Debug("forwarded visitor ended", "visitor", visitor, "err", err)
		}
		return true
	})
	if !served {
		c.Write([]byte{byte(protocol.StatusRefused)})
	}
}

// rules is the JSON form of a visitor policy that nodes of a cluster
// publish with their holds, so that every node applies a tunnel's rules
// to the visitors it forwards.
type rules struct {
	User  string   `json:"user,omitempty"`
	Pass  string   `json:"pass,omitempty"` // SHA-256 of the password, hex
	Allow []string `json:"allow,omitempty"`
	H2C   bool     `json:"h2c,omitempty"`
	UDP   bool     `json:"udp,omitempty"` // a UDP tunnel (udp.go)
}

// encode is p as rules; nil for a policy with no rule.
func (p *visitorPolicy) encode() []byte {
	r := rules{User: p.user, H2C: p.h2c, UDP: p.udp}
	if p.user != "" {
		r.Pass = hex.EncodeToString(p.pass[:])
	}
	for _, a := range p.allow {
		r.Allow = append(r.Allow, a.String())
	}
	if r.User == "" && len(r.Allow) == 0 && !r.H2C && !r.UDP {
		return nil
	}
	b, _ := json.Marshal(r)
	return b
}

// decodeRules is the policy of encoded rules; an empty policy for none.
func decodeRules(b []byte) (*visitorPolicy, error) {
	p := &visitorPolicy{}
	if len(b) == 0 {
		return p, nil
	}
	var r rules
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	p.user, p.h2c, p.udp = r.User, r.H2C, r.UDP
	if r.User != "" {
		sum, err := hex.DecodeString(r.Pass)
		if err != nil || len(sum) != len(p.pass) {
			return nil, errors.New("bad password digest")
		}
		copy(p.pass[:], sum)
	}
	for _, a := range r.Allow {
		pr, err := netip.ParsePrefix(a)
		if err != nil {
			return nil, fmt.Errorf("allow: %w", err)
		}
		p.allow = append(p.allow, pr)
	}
	return p, nil
}

// SetPublishAll says whether the registerers publish the tunnels that
// only other nodes of the cluster serve too. The node that leads the
// cluster does, and the others run only registerers that concern
// themselves (a log), so that outside systems are told of each tunnel
// once.
func (s *Server) SetPublishAll(all bool) {
	r := s.reg
	r.mu.Lock()
	defer r.mu.Unlock()
	if s.publishAll.Swap(all) == all {
		return
	}
	for _, t := range r.byName {
		t.reconcileLocked()
	}
}
