package cli

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/diglett/diglett/config/configfile"
)

// TestAgentProxyProtocolErrors: a --proxy-protocol value that is not
// off, v1 or v2, from the command line, the environment, the file's
// top-level key or a tunnel's, is refused naming the flag or the key,
// and the file's line.
func TestAgentProxyProtocolErrors(t *testing.T) {
	topLevel := writeConfig(t, "top.yaml", "version: 1\ngateway: [127.0.0.1:1]\nproxy_protocol: v3\ntunnels:\n  - {name: web, backend: \"3000\"}\n")
	perTunnel := writeConfig(t, "tunnel.yaml", "version: 1\ngateway: [127.0.0.1:1]\ntunnels:\n  - {name: web, backend: \"3000\"}\n  - name: ssh\n    backend: \"22\"\n    proxy_protocol: 1\n")
	tests := []struct {
		name string
		args []string
		env  string
		want []string
	}{
		{"flag v3", []string{"-g", "127.0.0.1:1", "-n", "x", "--proxy-protocol", "v3", "1"}, "", []string{"--proxy-protocol", `"v3"`}},
		{"flag 1", []string{"-g", "127.0.0.1:1", "-n", "x", "--proxy-protocol", "1", "1"}, "", []string{"--proxy-protocol", `"1"`}},
		{"environment", []string{"-g", "127.0.0.1:1", "-n", "x", "1"}, "V2", []string{"--proxy-protocol", `"V2"`}},
		{"file", []string{"--config", topLevel}, "", []string{"top.yaml:3: proxy_protocol: want one of off, v1, v2, got \"v3\""}},
		{"tunnel", []string{"--config", perTunnel}, "", []string{"tunnel.yaml:7: tunnels[2].proxy_protocol: want one of off, v1, v2, got \"1\""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env != "" {
				t.Setenv("DIGLETT_PROXY_PROTOCOL", tt.env)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := Agent(ctx, tt.args, io.Discard, io.Discard)
			if err == nil || IsHelp(err) {
				t.Fatalf("err = %v", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// TestAgentProxyProtocolGroups: --proxy-protocol (flag, environment or
// the file's top-level key) applies to every tunnel; a tunnel's
// proxy_protocol overrides it, off included.
func TestAgentProxyProtocolGroups(t *testing.T) {
	p := writeConfig(t, "agent.yaml", `version: 1
gateway: [127.0.0.1:1]
proxy_protocol: v2
tunnels:
  - {name: web, backend: "3000"}
  - {name: ssh, backend: "22", proxy_protocol: v1}
  - {name: www, backend: "3001", proxy_protocol: off}
  - {name: db, backend: "5432", port: 30432}
`)
	tests := []struct {
		name string
		args []string
		env  string
		want []map[string]int
	}{
		{"file", []string{"--config", p}, "", []map[string]int{{"web": 2, "ssh": 1}, {"db": 2}}},
		{"flag over file", []string{"--config", p, "--proxy-protocol", "off"}, "", []map[string]int{{"ssh": 1}, nil}},
		{"environment over file", []string{"--config", p}, "v1", []map[string]int{{"web": 1, "ssh": 1}, {"db": 1}}},
		{"command line", []string{"-n", "a", "-n", "b", "--proxy-protocol", "v1", "9000"}, "", []map[string]int{{"a": 1, "b": 1}}},
		{"environment", []string{"-n", "a", "9000"}, "v2", []map[string]int{{"a": 2}}},
		{"default off", []string{"-n", "a", "9000"}, "", []map[string]int{nil}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env != "" {
				t.Setenv("DIGLETT_PROXY_PROTOCOL", tt.env)
			}
			var c agentCmd
			fr := &FileResolver{Load: configfile.LoadAgent}
			args := append([]string{"-g", "127.0.0.1:1"}, tt.args...)
			if err := Parse(&c, "diglett", "", args, io.Discard, io.Discard, fr); err != nil {
				t.Fatal(err)
			}
			groups, err := c.tunnelGroups(fr.file)
			if err != nil {
				t.Fatal(err)
			}
			var got []map[string]int
			for _, g := range groups {
				got = append(got, g.proxyProto)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("PROXY protocol versions by group = %v; want %v", got, tt.want)
			}
		})
	}
}

// TestLocalProxyHeader: a replay's connection starts with a header the
// library parses as carrying no address (v2 LOCAL, v1 UNKNOWN).
func TestLocalProxyHeader(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, v := range []int{1, 2} {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if err := localProxyHeader(c, v); err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET / HTTP/1.1\r\n")
		c.Close()
		s.SetReadDeadline(time.Now().Add(10 * time.Second))
		all, err := io.ReadAll(s)
		s.Close()
		if err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(bytes.NewReader(all))
		h, err := proxyproto.Read(br)
		if err != nil {
			t.Fatalf("v%d: %q: %v", v, all, err)
		}
		rest, _ := io.ReadAll(br)
		if h.Version != byte(v) || h.TransportProtocol != proxyproto.UNSPEC || (v == 2 && h.Command != proxyproto.LOCAL) || string(rest) != "GET / HTTP/1.1\r\n" {
			t.Errorf("v%d: header %+v, then %q", v, h, rest)
		}
	}
}
