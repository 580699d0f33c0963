package portmap

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/huin/goupnp"
	"github.com/huin/goupnp/dcps/internetgateway2"
)

// igdTargets are the device types searched for, newest first.
var igdTargets = []string{
	"urn:schemas-upnp-org:device:InternetGatewayDevice:2",
	"urn:schemas-upnp-org:device:InternetGatewayDevice:1",
}

// igdClient is what the WANIPConnection1, WANIPConnection2 and
// WANPPPConnection1 clients have in common.
type igdClient interface {
	AddPortMappingCtx(ctx context.Context, remoteHost string, externalPort uint16, protocol string,
		internalPort uint16, internalClient string, enabled bool, description string, leaseDuration uint32) error
	DeletePortMappingCtx(ctx context.Context, remoteHost string, externalPort uint16, protocol string) error
	GetExternalIPAddressCtx(ctx context.Context) (string, error)
}

var (
	_ igdClient = (*internetgateway2.WANIPConnection1)(nil)
	_ igdClient = (*internetgateway2.WANIPConnection2)(nil)
	_ igdClient = (*internetgateway2.WANPPPConnection1)(nil)
	_ Mapper    = (*upnpMapper)(nil)
)

// upnpMapper maps ports over UPnP-IGD.
type upnpMapper struct {
	client igdClient
	local  netip.Addr
}

func (u *upnpMapper) Protocol() string { return ProtocolUPnP }

func (u *upnpMapper) ExternalIP(ctx context.Context) (netip.Addr, error) {
	s, err := u.client.GetExternalIPAddressCtx(ctx)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("external address: %w", err)
	}
	ip, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil || ip.IsUnspecified() {
		return netip.Addr{}, fmt.Errorf("external address %q: %w", s, ErrNoExternalAddress)
	}
	return ip.Unmap(), nil
}

func (u *upnpMapper) Map(ctx context.Context, m Mapping) (Mapping, error) {
	if err := check(m); err != nil {
		return Mapping{}, err
	}
	if m.ExternalPort == 0 {
		m.ExternalPort = m.InternalPort
	}
	life := lifetimeOf(m)
	err := u.client.AddPortMappingCtx(ctx, "", m.ExternalPort, strings.ToUpper(m.Proto),
		m.InternalPort, u.local.String(), true, m.Description, life)
	if err != nil {
		return Mapping{}, fmt.Errorf("portmap: upnp map %s %d: %w", m.Proto, m.ExternalPort, err)
	}
	m.Lifetime = time.Duration(life) * time.Second
	return m, nil
}

func (u *upnpMapper) Unmap(ctx context.Context, m Mapping) error {
	if err := check(m); err != nil {
		return err
	}
	if m.ExternalPort == 0 {
		m.ExternalPort = m.InternalPort
	}
	if err := u.client.DeletePortMappingCtx(ctx, "", m.ExternalPort, strings.ToUpper(m.Proto)); err != nil {
		return fmt.Errorf("portmap: upnp unmap %s %d: %w", m.Proto, m.ExternalPort, err)
	}
	return nil
}

// discoverUPnP sends SSDP searches for an Internet gateway device to gw
// itself (unicast, so only the router of this LAN answers), reads the
// description of the first that answers and picks its WANIPConnection
// (version 2, then 1) or WANPPPConnection service. It waits at most
// timeout for an answer.
func discoverUPnP(ctx context.Context, gw, local netip.Addr, timeout time.Duration) (Mapper, error) {
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	loc, err := ssdpSearch(sctx, gw, local)
	if err != nil {
		return nil, err
	}
	dctx, dcancel := context.WithTimeout(ctx, timeout+3*time.Second)
	defer dcancel()
	root, err := goupnp.DeviceByURLCtx(dctx, loc)
	if err != nil {
		return nil, fmt.Errorf("device description: %w", err)
	}
	var client igdClient
	if cs, _ := internetgateway2.NewWANIPConnection2ClientsFromRootDevice(root, loc); len(cs) > 0 {
		client = cs[0]
	} else if cs, _ := internetgateway2.NewWANIPConnection1ClientsFromRootDevice(root, loc); len(cs) > 0 {
		client = cs[0]
	} else if cs, _ := internetgateway2.NewWANPPPConnection1ClientsFromRootDevice(root, loc); len(cs) > 0 {
		client = cs[0]
	} else {
		return nil, fmt.Errorf("device at %s has no WAN connection service", loc)
	}
	return &upnpMapper{client: client, local: local}, nil
}

// ssdpSearch sends M-SEARCH requests from local to gw:1900 and returns the
// location of the first Internet gateway device that answers before ctx
// ends.
func ssdpSearch(ctx context.Context, gw, local netip.Addr) (*url.URL, error) {
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)))
	if err != nil {
		return nil, fmt.Errorf("ssdp: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(gw, 1900))
	for _, st := range igdTargets {
		req := "M-SEARCH * HTTP/1.1\r\n" +
			"HOST: 239.255.255.250:1900\r\n" +
			"MAN: \"ssdp:discover\"\r\n" +
			"MX: 1\r\n" +
			"ST: " + st + "\r\n\r\n"
		if _, err := conn.WriteToUDP([]byte(req), dst); err != nil {
			return nil, fmt.Errorf("ssdp: %w", err)
		}
	}
	buf := make([]byte, 2048)
	for {
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("ssdp: no answer from %s: %w", gw, ctx.Err())
			}
			return nil, fmt.Errorf("ssdp: %w", err)
		}
		if from.Addr().Unmap() != gw {
			continue
		}
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(buf[:n])), nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			continue
		}
		resp.Body.Close()
		st := resp.Header.Get("ST")
		if !strings.HasPrefix(st, "urn:schemas-upnp-org:device:InternetGatewayDevice:") {
			continue
		}
		loc, err := url.Parse(resp.Header.Get("LOCATION"))
		if err != nil || loc.Host == "" {
			continue
		}
		return loc, nil
	}
}
