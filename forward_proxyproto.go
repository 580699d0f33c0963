package diglett

import (
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/pires/go-proxyproto"
)

// The versions of the PROXY protocol header Forward can send a backend
// (ForwardOptions.ProxyProtocol).
const (
	ProxyProtocolV1 = 1 // the text form: "PROXY TCP4 192.0.2.7 10.0.0.2 51000 22\r\n"
	ProxyProtocolV2 = 2 // the binary form
)

// proxyProtocol is the PROXY protocol version for the backend of tunnel:
// 0 for none.
func (o *ForwardOptions) proxyProtocol(tunnel string) int {
	if v, ok := o.ProxyProtocols[tunnel]; ok {
		return v
	}
	return o.ProxyProtocol
}

// checkProxyProtocol refuses a version other than none, 1 and 2.
func (o *ForwardOptions) checkProxyProtocol() error {
	check := func(v int) error {
		if v != 0 && v != ProxyProtocolV1 && v != ProxyProtocolV2 {
			return fmt.Errorf("proxy protocol version %d: want 1 or 2 (or 0 for none)", v)
		}
		return nil
	}
	if err := check(o.ProxyProtocol); err != nil {
		return err
	}
	for name, v := range o.ProxyProtocols {
		if err := check(v); err != nil {
			return fmt.Errorf("tunnel %s: %w", name, err)
		}
	}
	return nil
}

// proxyHeader is the PROXY protocol header of version v for a visitor
// from src whose backend connection goes to dst. The source is the
// visitor's address; a destination that is not a TCP address (a
// connection ForwardOptions.Dial made, say) is the unspecified address
// of the source's family, port 0. A source that is not an IP address and
// port gives a header without addresses (v1 "UNKNOWN", v2 LOCAL): local
// is then true.
func proxyHeader(v int, src, dst net.Addr) (hdr []byte, local bool, err error) {
	if s, ok := src.(*net.TCPAddr); ok {
		if _, ok := dst.(*net.TCPAddr); !ok {
			unspecified := net.IPv6unspecified
			if s.IP.To4() != nil {
				unspecified = net.IPv4zero
			}
			dst = &net.TCPAddr{IP: unspecified}
		}
	}
	h := proxyproto.HeaderProxyFromAddrs(byte(v), src, dst)
	hdr, err = h.Format()
	if err != nil {
		return nil, false, fmt.Errorf("proxy protocol header: %w", err)
	}
	return hdr, h.Command == proxyproto.LOCAL, nil
}

// writeProxyHeader writes the PROXY protocol header of version v for vc
// to its backend connection bc, in one write bounded by timeout (none
// when zero).
func writeProxyHeader(bc net.Conn, vc *Conn, v int, timeout time.Duration, l *slog.Logger) error {
	hdr, local, err := proxyHeader(v, vc.RemoteAddr(), bc.RemoteAddr())
	if err != nil {
		return err
	}
	if local {
		l.Debug("visitor address is not an IP address and port: PROXY protocol header without addresses", "version", v)
	}
	if timeout > 0 {
		bc.SetWriteDeadline(time.Now().Add(timeout))
		defer bc.SetWriteDeadline(time.Time{})
	}
	if _, err := bc.Write(hdr); err != nil {
		return fmt.Errorf("write proxy protocol header: %w", err)
	}
	return nil
}
