package configfile

import (
	"fmt"
	"net"
	"os"
	"regexp"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/diglett/diglett/internal/yamlerr"
)

// The cluster section makes the gateway a node of a cluster on etcd:
//
//	cluster:
//	  etcd: ["http://10.0.0.5:2379"]
//	  prefix: /diglett/
//	  node: gw-1
//	  advertise: 10.0.0.11:20001
var clusterSchema = Schema{"etcd": List, "prefix": String, "node": String, "advertise": String,
	"link_listen": String, "ttl": Duration, "timeout": Duration,
	"etcd_username": String, "etcd_password_file": Path, "etcd_ca": Path, "etcd_cert": Path, "etcd_key": Path}

var nodeID = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ClusterSettings is the cluster section of a file.
type ClusterSettings struct {
	Etcd                      []string
	Prefix, Node              string
	Advertise, LinkListen     string
	TTL, Timeout              time.Duration
	EtcdUsername              string
	EtcdPasswordFile          string
	EtcdCA, EtcdCert, EtcdKey string
}

// parseCluster checks the cluster section into f.Cluster.
func parseCluster(errs *errorList, dir string, v *yaml.Node, f *File) {
	if v.Kind != yaml.MappingNode {
		errs.add(v.Line, "cluster: want a mapping of settings such as {etcd: [http://10.0.0.5:2379], node: gw-1, advertise: 10.0.0.11:20001}, got %s", yamlerr.Describe(v))
		return
	}
	s := parseSettings(errs, dir, "cluster", clusterSchema, v)
	c := &ClusterSettings{
		Etcd: s["etcd"].List, Prefix: s["prefix"].Value, Node: s["node"].Value,
		Advertise: s["advertise"].Value, LinkListen: s["link_listen"].Value,
		TTL: durationOf(s, "ttl", 0), Timeout: durationOf(s, "timeout", 0),
		EtcdUsername: s["etcd_username"].Value, EtcdPasswordFile: s["etcd_password_file"].Value,
		EtcdCA: s["etcd_ca"].Value, EtcdCert: s["etcd_cert"].Value, EtcdKey: s["etcd_key"].Value,
	}
	if len(c.Etcd) == 0 {
		errs.add(v.Line, "cluster: no etcd: give the endpoints of the cluster's store, such as [http://10.0.0.5:2379]")
	}
	for _, e := range c.Etcd {
		if !strings.HasPrefix(e, "http://") && !strings.HasPrefix(e, "https://") {
			errs.add(s["etcd"].Line, "cluster.etcd: %q: want an http:// or https:// URL", e)
		}
	}
	if st, ok := s["node"]; !ok {
		errs.add(v.Line, "cluster: no node: give this gateway's id in the cluster, such as gw-1 (unique among the nodes)")
	} else if !nodeID.MatchString(c.Node) {
		errs.add(st.Line, "cluster.node: %q: want 1 to 63 lowercase letters, digits and hyphens", c.Node)
	}
	if st, ok := s["advertise"]; !ok {
		errs.add(v.Line, "cluster: no advertise: give the HOST:PORT where the other nodes reach this one")
	} else if h, p, err := net.SplitHostPort(c.Advertise); err != nil || h == "" || p == "" || p == "0" {
		errs.add(st.Line, "cluster.advertise: %q: want HOST:PORT, such as 10.0.0.11:20001", c.Advertise)
	}
	if st, ok := s["link_listen"]; ok {
		if _, _, err := net.SplitHostPort(c.LinkListen); err != nil {
			errs.add(st.Line, "cluster.link_listen: %q: want HOST:PORT or :PORT", c.LinkListen)
		}
	}
	if (c.EtcdCert == "") != (c.EtcdKey == "") {
		errs.add(v.Line, "cluster: etcd_cert and etcd_key go together")
	}
	if (c.EtcdPasswordFile != "") && c.EtcdUsername == "" {
		errs.add(v.Line, "cluster: etcd_password_file needs etcd_username")
	}
	f.Cluster = c
}

// EtcdPassword reads the password file, if any.
func (c *ClusterSettings) EtcdPassword() (string, error) {
	if c.EtcdPasswordFile == "" {
		return "", nil
	}
	b, err := os.ReadFile(c.EtcdPasswordFile)
	if err != nil {
		return "", fmt.Errorf("cluster.etcd_password_file: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}
