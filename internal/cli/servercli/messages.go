package servercli

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
)

// listenFlags is the flag that sets each of the gateway's listeners.
var listenFlags = map[string]string{
	"agents":         "--listen",
	"HTTP visitors":  "--http-addr",
	"HTTPS visitors": "--https-addr",
}

// listenError explains why the listener for what (agents, HTTP visitors...)
// could not listen on addr: a port in use, or a low port without the
// privilege to bind it.
func listenError(what, addr string, err error) error {
	flag := listenFlags[what]
	switch {
	case errors.Is(err, syscall.EADDRINUSE) && flag != "":
		return fmt.Errorf("listen for %s on %s: address already in use: another program (or another diglett-server) holds it; stop it or choose another %s",
			what, addr, flag)
	case errors.Is(err, syscall.EACCES) && flag != "":
		_, port, _ := net.SplitHostPort(addr)
		var b strings.Builder
		fmt.Fprintf(&b, "listen for %s on %s: permission denied: ports below 1024 need root or the capability to bind them", what, addr)
		if (flag == "--http-addr" && port == "80") || (flag == "--https-addr" && port == "443") {
			fmt.Fprintf(&b, " (%s is what --domain listens on by default)", addr)
		}
		fmt.Fprintf(&b, "; choose a port above 1023 with %s (e.g. %s :%s), or grant the capability: sudo setcap 'cap_net_bind_service=+ep' %s",
			flag, flag, suggestPort(port), executable())
		return errors.New(b.String())
	}
	return fmt.Errorf("listen for %s: %w", what, err)
}

func suggestPort(port string) string {
	switch port {
	case "80":
		return "8080"
	case "443":
		return "8443"
	}
	return "20000"
}

// executable is the path of the running program, for commands to copy.
func executable() string {
	if p, err := os.Executable(); err == nil {
		return p
	}
	return "BINARY"
}
