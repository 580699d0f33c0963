package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"slices"

	"github.com/diglett/diglett/cluster/link"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/transport"
)

// A gateway as a node of the cluster: its Member claims names
// (ForGateway), its Link carries visitors between nodes, and Serve keeps
// the gateway's remote tunnels (the ones only other nodes serve) from
// the claims. Options.Cert is the DER form of the link certificate, so
// that the other nodes can pin it.

// Peers are the live members as the link's peers, each with the
// certificate it published; members whose certificate does not parse
// are left out.
func (m *Member) Peers() []link.Peer {
	var out []link.Peer
	for _, n := range m.Nodes() {
		if n.ID == m.o.Node {
			continue
		}
		if p, ok := peerOf(n); ok {
			out = append(out, p)
		}
	}
	return out
}

// Peer is the live member node as the link's peer.
func (m *Member) Peer(node string) (link.Peer, bool) {
	nodes := m.Nodes()
	i := slices.IndexFunc(nodes, func(n Node) bool { return n.ID == node })
	if i < 0 || node == m.o.Node {
		return link.Peer{}, false
	}
	return peerOf(nodes[i])
}

func peerOf(n Node) (link.Peer, bool) {
	c, err := x509.ParseCertificate(n.Cert)
	if err != nil {
		return link.Peer{}, false
	}
	return link.Peer{Node: n.ID, Addr: n.Advertise, Cert: c}, true
}

// NewLink is this member's link to the others, with cert (whose DER form
// is Options.Cert): streams other nodes open are served by srv, which is
// called once the gateway exists (it may be set after NewLink returns,
// before Serve).
func (m *Member) NewLink(cert tls.Certificate, srv func() *gateway.Server, log *slog.Logger) (*link.Link, error) {
	return link.New(link.Options{
		Node:  m.o.Node,
		Cert:  cert,
		Peer:  m.Peer,
		Peers: m.Peers,
		Handle: func(ctx context.Context, from string, h link.Header, s transport.Stream) {
			if g := srv(); g != nil {
				g.ServeForwarded(ctx, h.Tunnel, h.Visitor, s)
			}
		},
		Logger: log,
	})
}

// forwarder sends a gateway's visitors over a link.
type forwarder struct {
	m *Member
	l *link.Link
}

func (f forwarder) OpenStream(ctx context.Context, node, name, visitor string) (net.Conn, error) {
	s, err := f.l.Open(ctx, node, link.Header{Tunnel: name, Visitor: visitor})
	if err != nil {
		return nil, err
	}
	f.m.forwarded.Add(1)
	return s, nil
}

// Forwarded is how many visitors this node sent to other nodes (streams
// opened by Serve's forwarder).
func (m *Member) Forwarded() uint64 { return m.forwarded.Load() }

// Serve keeps srv's remote tunnels, the names other nodes serve, from the
// claims, their visitors sent over l, until ctx ends.
func (m *Member) Serve(ctx context.Context, srv *gateway.Server, l *link.Link) {
	f := forwarder{m, l}
	for {
		var ts []gateway.RemoteTunnel
		for _, c := range m.Claims() {
			nodes := slices.DeleteFunc(slices.Clone(c.Holders), func(n string) bool { return n == m.o.Node })
			if len(c.Holders) > 0 && len(nodes) == 0 {
				continue // this node's alone
			}
			ts = append(ts, gateway.RemoteTunnel{Name: c.Name, Identity: c.Identity, Port: c.Port, Nodes: nodes, Rules: c.Rules})
		}
		srv.SetRemoteTunnels(f, ts)
		select {
		case <-ctx.Done():
			return
		case <-m.ClaimChanges():
		}
	}
}
