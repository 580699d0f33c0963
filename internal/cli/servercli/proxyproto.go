package servercli

import (
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/diglett/diglett/config"
)

// proxyProtocolFrom is the proxy_protocol section's sources of f: none
// without the section (or the file).
func proxyProtocolFrom(f *config.File) []netip.Prefix {
	if f == nil || f.ProxyProtocol == nil {
		return nil
	}
	return f.ProxyProtocol.From
}

// logProxyProtocol tells the operator which sources must send a PROXY
// protocol header.
func logProxyProtocol(f *config.File, log *slog.Logger) {
	if from := proxyProtocolFrom(f); len(from) > 0 {
		log.Info("PROXY protocol header required from the load balancers listed, refused from anyone else", "from", from)
	}
}

// proxyProtocolDigest words the proxy_protocol section of f, so a reload
// can tell it changed (it needs a restart).
func proxyProtocolDigest(f *config.File) string {
	return fmt.Sprint(proxyProtocolFrom(f))
}
