package servercli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/diglett/diglett/catalog"
	"github.com/diglett/diglett/homenet"
	"github.com/diglett/diglett/internal/cli"
)

const portmapDesc = `Open the ports a service catalog asks for, on a machine that is not a gateway: forward them on the home router (UPnP-IGD, PCP or NAT-PMP), open them in the host firewall and point DNS at the router's public address, following the catalog as it changes.

The ports come from the node's services in a catalog (--source consul: service tags such as "(diglett (tcp_port 25) (udp_port 53))"), from etcd keys under a prefix (--source etcd: PREFIX/NODE/SERVICE = {tcp: [25], udp: [53]}), or from a YAML file (--source file). What to do with them is the nat, firewall and dns sections of a --config file, as for the gateway.

Example:
  diglett-server portmap --config home.yaml --source consul --node nas`

type portmapCmd struct {
	Config          string   `type:"existingfile" placeholder:"FILE" help:"YAML configuration file (version: 1): its nat, firewall and dns sections say what to do with the ports, and a key per flag (consul_addr for --consul-addr)."`
	Source          string   `required:"" enum:"consul,etcd,file" placeholder:"consul|etcd|file" help:"Where the ports come from: consul (the node's services' tags), etcd (keys under --etcd-prefix) or file (--file, watched)."`
	Node            string   `placeholder:"NAME" help:"This machine's node name in the catalog (consul: required; etcd: the keys under PREFIX/NAME/; default the host name)."`
	ConsulAddr      string   `name:"consul-addr" default:"http://127.0.0.1:8500" placeholder:"URL" help:"The catalog agent's HTTP address."`
	ConsulTokenFile string   `name:"consul-token-file" type:"existingfile" placeholder:"FILE" help:"File holding the catalog's ACL token."`
	TagKeyword      string   `name:"tag-keyword" default:"diglett" placeholder:"WORD" help:"The first word of the service tags read: (WORD (tcp_port 25) (udp_port 53)). Set it to read tags written for another tool with the same syntax."`
	Etcd            []string `sep:"," placeholder:"URL" help:"etcd endpoints, e.g. http://127.0.0.1:2379."`
	EtcdPrefix      string   `name:"etcd-prefix" default:"/diglett/ports/" placeholder:"PREFIX" help:"Key prefix of the ports in etcd."`
	File            string   `placeholder:"FILE" help:"YAML file of ports (--source file): ports: [{service: mail, tcp: [25, 587]}, {service: dns, udp: [53]}]."`
	Domain          string   `placeholder:"DOMAIN" help:"The DNS name the dns section keeps pointing at the public address (with *.DOMAIN unless its records are per_tunnel)."`
	cli.LogFlags    `embed:""`
}

// portmap runs the portmap subcommand until ctx ends.
func portmap(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c portmapCmd
	fr := homeResolver()
	if err := cli.Parse(&c, "diglett-server portmap", portmapDesc, args, stdout, stderr, fr); err != nil {
		return err
	}
	log := c.Logger(stderr)
	src, err := c.source(log)
	if err != nil {
		return err
	}
	hs, err := serverFile(fr).HomeOptions(c.Domain)
	if err != nil {
		return err
	}
	if hs == nil {
		return errors.New("nothing to do: give a --config file with a nat, firewall or dns section")
	}
	names := hs.Names
	o := hs.Options
	o.Logger = log
	home, err := homenet.New(ctx, o)
	if err != nil {
		return err
	}
	defer closeHome(home, log)
	log.Info("following the catalog", "source", c.Source, "node", c.Node)
	return src.Watch(ctx, func(ports []catalog.Port) {
		s := homenet.State{Names: names, Ports: make([]homenet.Port, len(ports))}
		for i, p := range ports {
			s.Ports[i] = homenet.Port{Proto: p.Proto, Port: p.Port, Service: p.Service}
		}
		log.Info("ports wanted", "ports", portWords(ports))
		home.Set(s)
	})
}

// source builds the catalog the flags name.
func (c *portmapCmd) source(log *slog.Logger) (catalog.Source, error) {
	node := c.Node
	if node == "" && c.Source != "consul" {
		node, _ = os.Hostname()
	}
	switch c.Source {
	case "consul":
		if c.Node == "" {
			return nil, errors.New("--source consul needs --node, this machine's node name in the catalog")
		}
		var token string
		if c.ConsulTokenFile != "" {
			b, err := os.ReadFile(c.ConsulTokenFile)
			if err != nil {
				return nil, fmt.Errorf("--consul-token-file: %w", err)
			}
			token = strings.TrimSpace(string(b))
		}
		return catalog.NewConsul(catalog.ConsulOptions{Address: c.ConsulAddr, Node: c.Node, Token: token, TagKeyword: c.TagKeyword, Logger: log})
	case "etcd":
		if len(c.Etcd) == 0 {
			return nil, errors.New("--source etcd needs --etcd, the endpoints")
		}
		return catalog.NewEtcd(catalog.EtcdOptions{Endpoints: c.Etcd, Prefix: c.EtcdPrefix, Node: node, Logger: log})
	default:
		if c.File == "" {
			return nil, errors.New("--source file needs --file, the YAML file of ports")
		}
		return catalog.NewFile(catalog.FileOptions{Path: c.File, Logger: log})
	}
}

// portWords words ports for a log line: tcp/25(mail) udp/53(dns).
func portWords(ports []catalog.Port) string {
	w := make([]string, len(ports))
	for i, p := range ports {
		w[i] = fmt.Sprintf("%s/%d(%s)", p.Proto, p.Port, p.Service)
	}
	return strings.Join(w, " ")
}
