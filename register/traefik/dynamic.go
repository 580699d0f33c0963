package traefik

import (
	"maps"
	"net"
	"strconv"
	"strings"
)

// dynamic is the proxy's dynamic configuration, as far as this module
// writes it: the same keys in the YAML files of the file provider and in
// the JSON of the http provider. Maps are written with sorted keys, so
// the output of one configuration is always the same bytes.
type dynamic struct {
	HTTP *httpConfig `json:"http,omitempty" yaml:"http,omitempty"`
	TCP  *tcpConfig  `json:"tcp,omitempty" yaml:"tcp,omitempty"`
}

type httpConfig struct {
	Routers  map[string]router      `json:"routers,omitempty" yaml:"routers,omitempty"`
	Services map[string]httpService `json:"services,omitempty" yaml:"services,omitempty"`
}

type tcpConfig struct {
	Routers  map[string]router     `json:"routers,omitempty" yaml:"routers,omitempty"`
	Services map[string]tcpService `json:"services,omitempty" yaml:"services,omitempty"`
}

// router is an HTTP router (rule on Host) or a TCP one (rule on HostSNI);
// their keys are the same.
type router struct {
	Rule        string     `json:"rule" yaml:"rule"`
	EntryPoints []string   `json:"entryPoints,omitempty" yaml:"entryPoints,omitempty"`
	Middlewares []string   `json:"middlewares,omitempty" yaml:"middlewares,omitempty"`
	Service     string     `json:"service" yaml:"service"`
	TLS         *routerTLS `json:"tls,omitempty" yaml:"tls,omitempty"`
}

type routerTLS struct {
	CertResolver string `json:"certResolver,omitempty" yaml:"certResolver,omitempty"`
	Passthrough  bool   `json:"passthrough,omitempty" yaml:"passthrough,omitempty"`
}

type httpService struct {
	LoadBalancer httpLoadBalancer `json:"loadBalancer" yaml:"loadBalancer"`
}

type httpLoadBalancer struct {
	Servers []httpServer `json:"servers" yaml:"servers"`
}

type httpServer struct {
	URL string `json:"url" yaml:"url"`
}

type tcpService struct {
	LoadBalancer tcpLoadBalancer `json:"loadBalancer" yaml:"loadBalancer"`
}

type tcpLoadBalancer struct {
	Servers []tcpServer `json:"servers" yaml:"servers"`
}

type tcpServer struct {
	Address string `json:"address" yaml:"address"`
}

// objectName is the name of the router and of the service of tunnel name.
func objectName(name string) string { return filePrefix + name }

// tunnelConfig is the dynamic configuration of one tunnel reached on
// hosts (at least one) through the gateway's public port.
func (c *Config) tunnelConfig(name string, hosts []string, port int) dynamic {
	id := objectName(name)
	upstream := net.JoinHostPort(c.upstream(), strconv.Itoa(port))
	rt := router{
		EntryPoints: c.EntryPoints,
		Middlewares: c.Middlewares,
		Service:     id,
	}
	if c.TLSPassthrough {
		rt.Rule = rule("HostSNI", hosts)
		rt.TLS = &routerTLS{Passthrough: true}
		return dynamic{TCP: &tcpConfig{
			Routers:  map[string]router{id: rt},
			Services: map[string]tcpService{id: {tcpLoadBalancer{[]tcpServer{{upstream}}}}},
		}}
	}
	rt.Rule = rule("Host", hosts)
	if c.CertResolver != "" {
		rt.TLS = &routerTLS{CertResolver: c.CertResolver}
	}
	return dynamic{HTTP: &httpConfig{
		Routers:  map[string]router{id: rt},
		Services: map[string]httpService{id: {httpLoadBalancer{[]httpServer{{"http://" + upstream}}}}},
	}}
}

// rule matches any of hosts with matcher: Host(`a`) || Host(`b`).
// Hosts are DNS names (checked by Register), so they hold no backquote.
func rule(matcher string, hosts []string) string {
	parts := make([]string, len(hosts))
	for i, h := range hosts {
		parts[i] = matcher + "(`" + h + "`)"
	}
	return strings.Join(parts, " || ")
}

// merge is the configuration of every tunnel of parts together. Tunnels'
// objects have distinct names, so nothing is overwritten.
func merge(parts []dynamic) dynamic {
	var out dynamic
	for _, p := range parts {
		if p.HTTP != nil {
			if out.HTTP == nil {
				out.HTTP = &httpConfig{Routers: map[string]router{}, Services: map[string]httpService{}}
			}
			maps.Copy(out.HTTP.Routers, p.HTTP.Routers)
			maps.Copy(out.HTTP.Services, p.HTTP.Services)
		}
		if p.TCP != nil {
			if out.TCP == nil {
				out.TCP = &tcpConfig{Routers: map[string]router{}, Services: map[string]tcpService{}}
			}
			maps.Copy(out.TCP.Routers, p.TCP.Routers)
			maps.Copy(out.TCP.Services, p.TCP.Services)
		}
	}
	return out
}
