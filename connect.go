package diglett

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"time"

	"golang.org/x/net/http/httpproxy"

	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/quictransport"
	"github.com/diglett/diglett/internal/transport/tlsmux"
	"github.com/diglett/diglett/internal/transport/wstransport"
)

// Software is the version string the agent sends in its hello.
var Software = "diglett"

// Errors of reaching the gateway, which Listen returns at start.
var (
	// ErrGatewayUnreachable: no transport reached the gateway (a wrong
	// host or port, the gateway down, or a firewall on the way); the
	// error wraps each transport's failure.
	ErrGatewayUnreachable = errors.New("gateway unreachable")
	// ErrNotGateway: the gateway's address answered, but not as a
	// diglett gateway: it speaks plain HTTP (the gateway's HTTP port,
	// say, rather than its agent port).
	ErrNotGateway = errors.New("not a diglett gateway")
)

// transportConfig is the sessions' tuning from the agent's Config.
func (c *Config) transportConfig() transport.Config {
	return transport.Config{KeepAlivePeriod: c.KeepAlivePeriod, MaxIdleTimeout: c.MaxIdleTimeout}.WithDefaults()
}

// dial opens a session to the gateway over one transport and
// authenticates the gateway (the TLS configuration's verification).
func (k *link) dial(ctx context.Context, via string) (transport.Session, error) {
	cfg := &k.l.cfg
	tc := k.tls.Clone()
	var sess transport.Session
	var err error
	switch via {
	case TransportQUIC:
		tc.NextProtos = []string{protocol.ALPN}
		sess, err = quictransport.Dial(ctx, k.gateway, tc, cfg.transportConfig())
	case TransportTCP:
		d := net.Dialer{KeepAlive: cfg.transportConfig().KeepAlivePeriod}
		var raw net.Conn
		raw, err = d.DialContext(ctx, "tcp", k.gateway)
		if err != nil {
			return nil, fmt.Errorf("dial gateway: %w", err)
		}
		sess, err = tlsmux.Client(ctx, raw, tc, cfg.transportConfig())
	case TransportWebSocket:
		// The HTTPS port first (a network that lets only HTTPS out
		// reaches it, perhaps through a proxy), then the agent port;
		// each gets its share of the time left.
		addrs := []string{k.webSocketAddr()}
		if k.gateway != addrs[0] {
			addrs = append(addrs, k.gateway)
		}
		for i, addr := range addrs {
			actx, cancel := shareOf(ctx, len(addrs)-i)
			sess, err = wstransport.Dial(actx, addr, tc, k.proxy, cfg.transportConfig())
			cancel()
			if err == nil || ctx.Err() != nil || isTrustError(err) || isBusyAlert(err) {
				break
			}
		}
	default:
		return nil, fmt.Errorf("unknown transport %q", via)
	}
	if err != nil {
		if isTrustError(err) {
			var te *trustError
			errors.As(err, &te)
			return nil, te
		}
		if what := answersPlainText(err); what != "" {
			return nil, fmt.Errorf("connect to gateway %s over %s: it answers %s: %w; agents connect to the gateway's --listen port, 20000 by default",
				k.gateway, via, what, ErrNotGateway)
		}
		if isBusyAlert(err) {
			return nil, fmt.Errorf("connect to gateway %s over %s: %w", k.gateway, via, ErrGatewayBusy)
		}
		return nil, fmt.Errorf("connect to gateway %s over %s: %w", k.gateway, via, err)
	}
	return sess, nil
}

// answersPlainText tells whether err, a failed TLS handshake, met a server
// that answered the client's hello in plain text rather than TLS: "plain
// HTTP" when it starts like an HTTP response (an HTTP server's 400), "in
// plain text" for other text (an old HTTP server's bare error page, a
// banner), "" otherwise.
func answersPlainText(err error) string {
	var re tls.RecordHeaderError
	if !errors.As(err, &re) {
		return ""
	}
	h := re.RecordHeader[:]
	if bytes.HasPrefix(h, []byte("HTTP/")) {
		return "plain HTTP"
	}
	for _, b := range h {
		if (b < 0x20 || b > 0x7e) && b != '\r' && b != '\n' && b != '\t' {
			return ""
		}
	}
	return "in plain text"
}

// isBusyAlert reports whether err, a failed TLS handshake, is the gateway's
// refusal of a TCP connection because it is busy: a fatal TLS alert
// user_canceled before its first handshake message. crypto/tls reports a
// received alert as a *net.OpError "remote error" whose Err is the alert,
// of a type it does not export: its text tells it.
func isBusyAlert(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "remote error" && oe.Err != nil && oe.Err.Error() == "tls: user canceled"
}

// sessionEndWait bounds how long a failed handshake waits for its session
// to end, to learn whether the gateway closed it because it is busy.
const sessionEndWait = 250 * time.Millisecond

// closedBusy reports whether the gateway closed sess because it is busy
// (transport.CodeBusy): over QUIC and WebSocket it refuses sessions that
// way, and it cuts off a handshake that way for a newcomer. err is the
// handshake's failure; the session's end may come a moment after it.
func closedBusy(sess transport.Session, err error) bool {
	var re *RefusedError
	if errors.As(err, &re) {
		return false
	}
	t := time.NewTimer(sessionEndWait)
	defer t.Stop()
	select {
	case <-sess.Context().Done():
	case <-t.C:
		return false
	}
	var pe *transport.PeerClosedError
	return errors.As(context.Cause(sess.Context()), &pe) && pe.Code == transport.CodeBusy
}

// shareOf is ctx with 1/n of the time it has left.
func shareOf(ctx context.Context, n int) (context.Context, context.CancelFunc) {
	dl, ok := ctx.Deadline()
	if !ok || n <= 1 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, time.Until(dl)/time.Duration(n))
}

func isTrustError(err error) bool {
	var te *trustError
	return errors.As(err, &te)
}

// webSocketAddr is where WebSocket sessions go when the agent port is out
// of reach: Config.WebSocketAddr, or port 443 of the gateway's host.
func (k *link) webSocketAddr() string {
	if a := k.l.cfg.WebSocketAddr; a != "" {
		return a
	}
	host, _, _ := net.SplitHostPort(k.gateway)
	return net.JoinHostPort(host, "443")
}

// proxyFunc chooses the proxy of WebSocket sessions: fixed, or from
// HTTPS_PROXY and NO_PROXY (read once, when the listener starts).
func proxyFunc(fixed *url.URL) func(*http.Request) (*url.URL, error) {
	if fixed != nil {
		return http.ProxyURL(fixed)
	}
	env := httpproxy.FromEnvironment().ProxyFunc()
	return func(r *http.Request) (*url.URL, error) { return env(r.URL) }
}

// handshake logs in on sess and registers every name.
func (k *link) handshake(ctx context.Context, sess transport.Session, via string, prev []Tunnel) (*linkSession, error) {
	cfg := &k.l.cfg
	ctrl, err := sess.OpenStream(ctx)
	if err != nil {
		return nil, fmt.Errorf("open control stream: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		ctrl.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { ctrl.SetDeadline(time.Now()) })
	defer stop()

	hi := &protocol.Hello{Version: protocol.Version, Software: Software, Instance: k.l.instance, Features: []string{protocol.FeatureNotice}}
	if err := protocol.WriteMessage(ctrl, hi); err != nil {
		return nil, fmt.Errorf("send hello: %w", err)
	}
	m, err := reply(ctrl, "hello")
	if err != nil {
		return nil, err
	}
	hello, ok := m.(*protocol.Hello)
	if !ok {
		return nil, fmt.Errorf("gateway answered hello with %s", m.Type())
	}
	if hello.Version != protocol.Version {
		return nil, fmt.Errorf("%w: gateway speaks protocol version %d, this agent speaks version %d: use an agent of the same release as the gateway",
			ErrVersionMismatch, hello.Version, protocol.Version)
	}
	if cfg.UDP && !slices.Contains(hello.Features, protocol.FeatureUDP) {
		// Such a gateway would ignore Register.UDP and publish a TCP port.
		return nil, &udpUnsupportedError{gateway: k.gateway}
	}
	login := &protocol.Login{Token: cfg.Token, User: cfg.User, Password: cfg.Password, Names: cfg.names()}
	if cfg.TokenFunc != nil {
		if login.Token, err = cfg.TokenFunc(ctx, k.gateway, login.Names); err != nil {
			return nil, fmt.Errorf("sign a token for the login: %w", err)
		}
	}
	if err := protocol.WriteMessage(ctrl, login); err != nil {
		return nil, fmt.Errorf("send login: %w", err)
	}
	if m, err = reply(ctrl, "login"); err != nil {
		return nil, err
	}
	if _, ok := m.(*protocol.LoginOK); !ok {
		return nil, fmt.Errorf("gateway answered login with %s", m.Type())
	}

	host, _, _ := net.SplitHostPort(k.gateway)
	ls := &linkSession{sess: sess, via: via, ctrl: ctrl}
	for i, name := range cfg.names() {
		req, err := cfg.register(name)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			req.Port = cfg.Port
		}
		for _, t := range prev {
			if t.Name == name {
				req.PreferPort = t.Addr.Port
			}
		}
		if err := protocol.WriteMessage(ctrl, req); err != nil {
			return nil, fmt.Errorf("send register: %w", err)
		}
		m, err := reply(ctrl, "register "+name)
		if err != nil {
			return nil, fmt.Errorf("register %q: %w", name, err)
		}
		r, ok := m.(*protocol.Registered)
		if !ok || r.Name != name {
			return nil, fmt.Errorf("gateway answered register %q with %s", name, m.Type())
		}
		if want := max(req.Port, req.PreferPort); want != 0 && r.Port != want {
			k.log.Warn("the gateway gave the tunnel another port than it had", "tunnel", name, "asked", want, "got", r.Port)
		}
		t := Tunnel{Name: name, Addr: Addr{Host: host, Port: r.Port, UDP: cfg.UDP}, HTTPURL: r.HTTPURL, HTTPSURL: r.HTTPSURL}
		if cfg.UDP {
			t.HTTPURL, t.HTTPSURL = "", "" // a UDP tunnel has no HTTP address
		}
		ls.tunnels = append(ls.tunnels, t)
	}
	ctrl.SetDeadline(time.Time{})
	// The control stream stays open for the session's life; the gateway
	// closing it ends the session.
	go func() {
		defer sess.Close()
		for {
			m, err := protocol.ReadMessage(ctrl)
			if err != nil {
				return
			}
			switch m := m.(type) {
			case *protocol.Error:
				if ls.endedBy(m) {
					// Refused for good (a token revoked, a name
					// taken away): the session ends, the link stops.
					return
				}
				k.log.Warn("the gateway reported an error", "err", refusal(m))
			case *protocol.Notice:
				if m.Event == protocol.NoticeMemberJoined {
					k.log.Info("another agent joined the tunnel: the gateway now shares its visitors among them",
						"tunnel", m.Name, "agents", m.Agents)
				}
			}
		}
	}()
	return ls, nil
}

// udpUnsupportedError is ErrUDPUnsupported for one gateway.
type udpUnsupportedError struct{ gateway string }

func (e *udpUnsupportedError) Error() string {
	return "gateway " + e.gateway + " does not serve UDP tunnels (it predates them): upgrade it"
}

func (e *udpUnsupportedError) Unwrap() error { return ErrUDPUnsupported }

// reply reads the gateway's answer to a request, turning an Error message
// into a *RefusedError.
func reply(ctrl transport.Stream, what string) (protocol.Message, error) {
	m, err := protocol.ReadMessage(ctrl)
	if err != nil {
		return nil, fmt.Errorf("read reply to %s: %w", what, err)
	}
	if e, ok := m.(*protocol.Error); ok {
		return nil, refusal(e)
	}
	return m, nil
}
