package config

import (
	"strings"
	"testing"
	"time"
)

func TestClusterSection(t *testing.T) {
	p := write(t, "gateway.yaml", `version: 1
cluster:
  etcd: [http://10.0.0.5:2379, https://10.0.0.6:2379]
  prefix: /gw/
  node: gw-1
  advertise: 10.0.0.11:20001
  ttl: 3s
`)
	f, err := LoadServer(p, testSchema)
	if err != nil {
		t.Fatal(err)
	}
	c := f.Cluster
	if c == nil || strings.Join(c.Etcd, " ") != "http://10.0.0.5:2379 https://10.0.0.6:2379" || c.Prefix != "/gw/" ||
		c.Node != "gw-1" || c.Advertise != "10.0.0.11:20001" || c.TTL != 3*time.Second {
		t.Fatalf("cluster: %+v", c)
	}

	for name, tc := range map[string]struct{ content, want string }{
		"no etcd":      {"version: 1\ncluster: {node: a, advertise: h:1}\n", "2: cluster: no etcd"},
		"bad url":      {"version: 1\ncluster: {etcd: [10.0.0.5:2379], node: a, advertise: h:1}\n", `2: cluster.etcd: "10.0.0.5:2379": want an http:// or https:// URL`},
		"no node":      {"version: 1\ncluster: {etcd: [http://e:2379], advertise: h:1}\n", "2: cluster: no node"},
		"bad node":     {"version: 1\ncluster: {etcd: [http://e:2379], node: GW_1, advertise: h:1}\n", `2: cluster.node: "GW_1": want 1 to 63 lowercase letters, digits and hyphens`},
		"no advertise": {"version: 1\ncluster: {etcd: [http://e:2379], node: a}\n", "2: cluster: no advertise"},
		"bad advert":   {"version: 1\ncluster: {etcd: [http://e:2379], node: a, advertise: h}\n", `2: cluster.advertise: "h": want HOST:PORT`},
		"cert alone":   {"version: 1\ncluster: {etcd: [http://e:2379], node: a, advertise: h:1, etcd_cert: c.pem}\n", "2: cluster: etcd_cert and etcd_key go together"},
		"not mapping":  {"version: 1\ncluster: [a]\n", "2: cluster: want a mapping of settings"},
		"unknown":      {"version: 1\ncluster: {etcd: [http://e:2379], node: a, advertise: h:1, nodes: 3}\n", `2: cluster: unknown key "nodes"`},
	} {
		t.Run(name, func(t *testing.T) {
			p := write(t, "gateway.yaml", tc.content)
			_, err := LoadServer(p, testSchema)
			if err == nil || !strings.Contains(err.Error(), p+":"+tc.want) {
				t.Errorf("%v, want %q", err, tc.want)
			}
		})
	}
}
