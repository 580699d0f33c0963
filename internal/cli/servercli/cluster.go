package servercli

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/diglett/diglett/cluster"
	"github.com/diglett/diglett/cluster/certstore"
	"github.com/diglett/diglett/cluster/link"
	"github.com/diglett/diglett/config"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/homenet"
	"github.com/diglett/diglett/internal/identity"
	reglog "github.com/diglett/diglett/register/log"
)

// joinTimeout bounds joining the cluster at start.
const joinTimeout = 30 * time.Second

// clusterNode is the gateway as a node of its cluster: its membership and
// claims in etcd, its link to the other nodes, and its certificates'
// storage there.
type clusterNode struct {
	m     *cluster.Member
	l     *link.Link
	ln    net.Listener
	srv   atomic.Pointer[gateway.Server]
	store *certstore.Storage
	log   *slog.Logger

	stop context.CancelFunc
	done chan struct{}
}

// joinCluster joins the cluster of the file's cluster section (nil
// without one) and opens the link's listener. The link's certificate has
// a key of its own, made at each start and published in etcd at the
// join: the nodes may share one gateway key (agents pin it), but each
// must be told apart on the link.
func joinCluster(ctx context.Context, cs *config.ClusterSettings, log *slog.Logger) (*clusterNode, error) {
	if cs == nil {
		return nil, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("cluster: link key: %w", err)
	}
	linkCert, err := identity.SelfSigned(key, cs.Node)
	if err != nil {
		return nil, fmt.Errorf("cluster: link certificate: %w", err)
	}
	etcdTLS, err := clusterTLS(cs)
	if err != nil {
		return nil, err
	}
	password, err := cs.EtcdPassword()
	if err != nil {
		return nil, err
	}
	addr := cs.LinkListen
	if addr == "" {
		_, port, _ := net.SplitHostPort(cs.Advertise)
		addr = ":" + port
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, listenError("the other nodes (cluster.link_listen)", addr, err)
	}
	log = log.With("part", "cluster")
	jctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	m, err := cluster.Join(jctx, cluster.Options{
		Endpoints: cs.Etcd, TLS: etcdTLS, Username: cs.EtcdUsername, Password: password,
		Prefix: cs.Prefix, Node: cs.Node, Advertise: cs.Advertise, Cert: linkCert.Certificate[0],
		TTL: cs.TTL, Timeout: cs.Timeout, Logger: log,
	})
	if err != nil {
		ln.Close()
		return nil, err
	}
	n := &clusterNode{m: m, ln: ln, log: log}
	if n.l, err = m.NewLink(linkCert, n.srv.Load, log); err != nil {
		ln.Close()
		m.Close(context.Background())
		return nil, err
	}
	return n, nil
}

// clusterTLS is the TLS client configuration for etcd; nil for plain.
func clusterTLS(cs *config.ClusterSettings) (*tls.Config, error) {
	if cs.EtcdCA == "" && cs.EtcdCert == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cs.EtcdCA != "" {
		pem, err := os.ReadFile(cs.EtcdCA)
		if err != nil {
			return nil, fmt.Errorf("cluster.etcd_ca: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("cluster.etcd_ca %s: no PEM certificates in the file", cs.EtcdCA)
		}
	}
	if cs.EtcdCert != "" {
		c, err := tls.LoadX509KeyPair(cs.EtcdCert, cs.EtcdKey)
		if err != nil {
			return nil, fmt.Errorf("cluster.etcd_cert: %w", err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	return tc, nil
}

// start serves the link and keeps srv's remote tunnels from the claims.
func (n *clusterNode) start(srv *gateway.Server) {
	n.srv.Store(srv)
	ctx, stop := context.WithCancel(context.Background())
	n.stop, n.done = stop, make(chan struct{})
	served := make(chan struct{})
	go func() { defer close(served); n.l.Serve(n.ln) }()
	go func() {
		defer close(n.done)
		n.m.Serve(ctx, srv, n.l)
		<-served
	}()
	n.log.Info("serving as a node of the cluster", "link", n.ln.Addr().String(), "nodes", len(n.m.Nodes()))
}

// certStorage is where the node's ACME certificates and account live:
// the cluster's store, shared by every node.
func (n *clusterNode) certStorage(prefix string) (*certstore.Storage, error) {
	if prefix == "" {
		prefix = cluster.DefaultPrefix
	}
	s, err := certstore.New(n.m.Client(), certstore.Options{Prefix: prefix + "certs/", Logger: n.log})
	if err != nil {
		return nil, err
	}
	n.store = s
	return s, nil
}

// close leaves the cluster: the other nodes stop sending visitors here at
// once.
func (n *clusterNode) close() {
	if n.stop != nil {
		n.stop()
	}
	n.l.Close()
	if n.done != nil {
		<-n.done
	} else {
		n.ln.Close()
	}
	if n.store != nil {
		n.store.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.m.Close(ctx); err != nil {
		n.log.Warn("left the cluster without telling it; the others see it go when its lease ends", "err", err)
	}
}

// clusterDigest words the cluster section of f, so a reload can tell it
// changed (it takes effect at a restart).
func clusterDigest(f *config.File) string {
	if f == nil || f.Cluster == nil {
		return ""
	}
	return fmt.Sprintf("%+v", *f.Cluster)
}

// observe adds the cluster's series to reg: members, whether etcd is
// reachable, visitors sent to other nodes, and link streams open.
func (n *clusterNode) observe(reg *prometheus.Registry) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "diglett_cluster_members", Help: "Live nodes of the cluster, this one included."},
			func() float64 { return float64(len(n.m.Nodes())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "diglett_cluster_healthy", Help: "1 while this node reaches the cluster's store, else 0."},
			func() float64 {
				if n.m.Healthy() {
					return 1
				}
				return 0
			}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "diglett_cluster_forwarded_total", Help: "Visitors this node sent to other nodes, whose agents serve their tunnels."},
			func() float64 { return float64(n.m.Forwarded()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "diglett_cluster_link_streams", Help: "Streams open on the links to other nodes, both ways."},
			func() float64 {
				total := 0
				for _, s := range n.l.Sessions() {
					total += s
				}
				return float64(total)
			}),
	)
}

// clusterView is GET /api/v1/cluster.
type clusterView struct {
	Node    string          `json:"node"`
	Healthy bool            `json:"healthy"`
	Members []clusterMember `json:"members"`
	Tunnels []clusterTunnel `json:"tunnels"`
}

type clusterMember struct {
	Node        string    `json:"node"`
	Advertise   string    `json:"advertise"`
	Joined      time.Time `json:"joined"`
	LinkStreams int       `json:"link_streams"`
}

type clusterTunnel struct {
	Name     string   `json:"name"`
	Identity string   `json:"identity"`
	Port     int      `json:"port"`
	Nodes    []string `json:"nodes"`
}

// apiHandler serves the cluster as this node sees it.
func (n *clusterNode) apiHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		streams := n.l.Sessions()
		v := clusterView{Node: n.m.ID(), Healthy: n.m.Healthy(), Members: []clusterMember{}, Tunnels: []clusterTunnel{}}
		for _, m := range n.m.Nodes() {
			v.Members = append(v.Members, clusterMember{Node: m.ID, Advertise: m.Advertise, Joined: m.Joined.UTC(), LinkStreams: streams[m.ID]})
		}
		for _, c := range n.m.Claims() {
			nodes := c.Holders
			if nodes == nil {
				nodes = []string{}
			}
			v.Tunnels = append(v.Tunnels, clusterTunnel{Name: c.Name, Identity: c.Identity, Port: c.Port, Nodes: nodes})
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(v)
	})
}

// leaderGate runs the file's registerers, which tell outside systems, on
// the node that leads the cluster only, and has it publish every tunnel
// of the cluster; the other nodes keep only their log registerers. It
// stands in for the gateway in reloads: a reload's register list takes
// effect on the leader, and is kept for when this node leads.
type leaderGate struct {
	registererSetter                  // the gateway, with its own extra registerers
	home             *homenet.Exposer // its router mappings and DNS records are the leader's to keep; nil without

	mu      sync.Mutex
	regs    []gateway.Registerer
	leading bool
}

// SetRegisterers keeps rgs, and puts them in force when this node leads.
func (g *leaderGate) SetRegisterers(rgs []gateway.Registerer) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.regs = rgs
	g.applyLocked()
}

func (g *leaderGate) applyLocked() {
	if g.registererSetter == nil {
		return
	}
	if g.leading {
		g.registererSetter.SetRegisterers(g.regs)
	} else {
		g.registererSetter.SetRegisterers(localRegisterers(g.regs))
	}
}

// lead runs while this node leads the cluster: srv publishes every
// tunnel through all the registerers until ctx ends.
func (g *leaderGate) lead(ctx context.Context, srv *gateway.Server, log *slog.Logger) {
	log.Info("leading the cluster: publishing every tunnel through the registerers")
	g.mu.Lock()
	g.leading = true
	g.applyLocked()
	srv.SetPublishAll(true)
	if g.home != nil {
		g.home.SetShared(true)
	}
	g.mu.Unlock()
	<-ctx.Done()
	g.mu.Lock()
	g.leading = false
	srv.SetPublishAll(false)
	if g.home != nil {
		g.home.SetShared(false)
	}
	g.applyLocked()
	g.mu.Unlock()
	log.Info("no longer leading the cluster")
}

// localRegisterers are those of rgs that concern this node only: the
// log.
func localRegisterers(rgs []gateway.Registerer) []gateway.Registerer {
	var out []gateway.Registerer
	for _, r := range rgs {
		if _, ok := r.(*reglog.Registerer); ok {
			out = append(out, r)
		}
	}
	return out
}
