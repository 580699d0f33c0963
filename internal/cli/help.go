package cli

import (
	"reflect"
	"strings"
	"time"

	"github.com/alecthomas/kong"
)

// cliOptions are the kong options of every program of this package beyond
// its name and writers: durations that say how to write them, and
// helpLayout.
func cliOptions(name string) kong.Option {
	return kong.OptionFunc(func(k *kong.Kong) error {
		if err := kong.TypeMapper(reflect.TypeFor[time.Duration](), durationMapper()).Apply(k); err != nil {
			return err
		}
		return helpLayout(name).Apply(k)
	})
}

// helpLayout is the kong option that shapes the flags of program name
// once the model is built: it names every flag's environment variable
// DIGLETT_<FLAG> with the flag's own spelling (kong's default splits
// digits apart: DIGLETT_H_2_C for --h2c), files the flags under the topics
// of flagGroups, and ends the description with the program's examples.
func helpLayout(name string) kong.Option {
	return kong.PostBuild(func(k *kong.Kong) error {
		groups := flagGroups[name]
		for _, f := range k.Model.Node.Flags {
			envNames(f)
			if g, ok := groups[f.Name]; ok && f.Group == nil {
				f.Group = g
			}
		}
		if ex := examples[name]; ex != "" {
			k.Model.Help = strings.TrimRight(k.Model.Help, "\n") + "\n\nExamples:\n" + ex
		}
		return nil
	})
}

// envNames renames the environment variable kong derived from f's name
// to DIGLETT_ and the name in upper case with "-" as "_"; a variable a
// field names itself (env:"...") is left alone.
func envNames(f *kong.Flag) {
	camel := "DIGLETT_" + strings.ToUpper(strings.Join(camelWords(f.Name), "_"))
	want := "DIGLETT_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
	for _, envs := range [][]string{f.Envs, f.Value.Tag.Envs} {
		for i, e := range envs {
			if e == camel {
				envs[i] = want
			}
		}
	}
}

// camelWords splits a flag name the way kong's default environment names
// do: at dashes, and between letters and digits.
func camelWords(name string) []string {
	var words []string
	for _, part := range strings.Split(name, "-") {
		start := 0
		for i := 1; i < len(part); i++ {
			if isDigit(part[i]) != isDigit(part[i-1]) {
				words = append(words, part[start:i])
				start = i
			}
		}
		words = append(words, part[start:])
	}
	return words
}

func isDigit(b byte) bool { return b >= '0' && b <= '9' }

// Topics of the flags in --help.
var (
	groupGateway = &kong.Group{Key: "gateway", Title: "Gateway and login:"}
	groupTunnel  = &kong.Group{Key: "tunnel", Title: "Tunnel:"}
	groupConnect = &kong.Group{Key: "connect", Title: "Connection to the gateway:"}
	groupBackend = &kong.Group{Key: "backend", Title: "Backend connections:"}
	groupLogs    = &kong.Group{Key: "logs", Title: "Logs and debugging:"}

	groupAgents  = &kong.Group{Key: "agents", Title: "Agents:"}
	groupTunnels = &kong.Group{Key: "tunnels", Title: "Tunnels and TCP ports:"}
	groupHTTP    = &kong.Group{Key: "http", Title: "HTTP(S) on shared ports:"}
	groupLimits  = &kong.Group{Key: "limits", Title: "Limits:"}
)

// flagGroups files each program's flags under a topic; flags not listed
// (--help, --version, --config) stay at the top.
var flagGroups = map[string]map[string]*kong.Group{
	"diglett": groupsOf(map[*kong.Group][]string{
		groupGateway: {"gateway", "retry", "token", "token-file", "user", "password-file", "identity-key", "fingerprint", "ca", "known-gateways"},
		groupTunnel:  {"name", "port", "h2c", "basic-auth", "allow-ips", "udp"},
		groupConnect: {"transport", "connections", "ws-addr", "proxy", "keep-alive-period", "max-idle-timeout"},
		groupBackend: {"dial-timeout", "drain-timeout", "half-close-timeout", "proxy-protocol", "udp-idle-timeout", "udp-max-flows"},
		groupLogs:    {"debug", "log-level", "log-format", "debug-addr", "inspect", "inspect-size"},
	}),
	"diglett-server": groupsOf(map[*kong.Group][]string{
		groupAgents:  {"listen", "quic", "cert", "key", "data-dir", "tokens", "watch", "keep-alive-period", "max-idle-timeout"},
		groupTunnels: {"ports", "public-bind", "lease", "visitor-access", "half-close-timeout", "udp-idle-timeout", "udp-max-flows", "udp-max-flows-per-source"},
		groupHTTP: {"domain", "http-addr", "https-addr", "trusted-proxies", "http-response-timeout", "http-body-timeout",
			"http-max-requests-per-source", "acme-email", "acme-ca", "acme-staging", "acme-ca-root"},
		groupLimits: {"max-names-per-identity", "max-ports-per-identity", "max-sessions-per-identity", "max-cert-orders-per-hour",
			"max-handshakes", "max-handshakes-per-source", "max-visitors", "max-visitors-per-tunnel"},
		groupLogs: {"debug", "log-level", "log-format", "access-log", "debug-addr", "admin-addr", "admin-token-file"},
	}),
}

func groupsOf(m map[*kong.Group][]string) map[string]*kong.Group {
	out := map[string]*kong.Group{}
	for g, names := range m {
		for _, n := range names {
			out[n] = g
		}
	}
	return out
}

// examples end each program's description in --help.
var examples = map[string]string{
	"diglett": `  diglett -g gateway.com -n example localhost:9000
      publish the local service on port 9000 as "example" (port 20000 of
      gateway.com; http://localhost:9000 works as well)
  diglett -g gateway.com -n example --token-file /etc/diglett/token 9000
      log in with a token kept in a file
  diglett -g gateway.com -n web -n api --retry 3000
      two names for one backend; keep trying while the gateway is down
  diglett -g gateway.com -n vpn --udp localhost:51820
      publish a UDP service (a VPN endpoint, say) on a public UDP port
  diglett --config /etc/diglett/agent.yaml
      the tunnels of a configuration file
  source <(diglett completion bash)
      complete diglett's flags in bash (also zsh and fish)`,
	"diglett-server": `  diglett-server -d
      a gateway on port 20000, public TCP ports 30000-40000, debug logs
  diglett-server --tokens tokens.yaml --domain gateway.com
      tunnels as NAME.gateway.com on ports 80 and 443 for agents with tokens
  diglett-server --domain gateway.com --http-addr :8080
      HTTP on port 8080 instead of 80 (no root needed)
  diglett-server --config /etc/diglett/server.yaml
      the modules and settings of a configuration file
  source <(diglett-server completion bash)
      complete diglett-server's flags in bash (also zsh and fish)`,
}
