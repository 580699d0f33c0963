package diglett

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/tlsmux"
)

// Software is the version string the agent sends in its hello.
var Software = "diglett"

// connect dials the gateway, logs in and registers every name. prev holds
// the ports of an earlier session: they are asked for again as hints, so a
// restarted gateway gives the same ports back when it can.
func (l *Listener) connect(ctx context.Context, prev []Tunnel) (transport.Session, []Tunnel, error) {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.DialTimeout)
	defer cancel()
	d := net.Dialer{KeepAlive: l.cfg.KeepAlive}
	raw, err := d.DialContext(ctx, "tcp", l.cfg.Gateway)
	if err != nil {
		return nil, nil, fmt.Errorf("dial gateway: %w", err)
	}
	sess, err := tlsmux.Client(ctx, raw, l.tls, tlsmux.Config{KeepAlive: l.cfg.KeepAlive})
	if err != nil {
		// Our own verification verdict explains itself; drop TLS's wrapping.
		var te *trustError
		if errors.As(err, &te) {
			return nil, nil, te
		}
		return nil, nil, fmt.Errorf("connect to gateway %s: %w", l.cfg.Gateway, err)
	}
	tunnels, err := l.handshake(ctx, sess, prev)
	if err != nil {
		sess.Close()
		return nil, nil, err
	}
	return sess, tunnels, nil
}

func (l *Listener) handshake(ctx context.Context, sess transport.Session, prev []Tunnel) ([]Tunnel, error) {
	ctrl, err := sess.OpenStream(ctx)
	if err != nil {
		return nil, fmt.Errorf("open control stream: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		ctrl.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { ctrl.SetDeadline(time.Now()) })
	defer stop()

	if err := protocol.WriteMessage(ctrl, &protocol.Hello{Version: protocol.Version, Software: Software}); err != nil {
		return nil, fmt.Errorf("send hello: %w", err)
	}
	m, err := l.reply(ctrl, "hello")
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
	if err := protocol.WriteMessage(ctrl, &protocol.Login{Token: l.cfg.Token}); err != nil {
		return nil, fmt.Errorf("send login: %w", err)
	}
	if m, err = l.reply(ctrl, "login"); err != nil {
		return nil, err
	}
	if _, ok := m.(*protocol.LoginOK); !ok {
		return nil, fmt.Errorf("gateway answered login with %s", m.Type())
	}

	var tunnels []Tunnel
	for i, name := range l.cfg.names() {
		req, err := l.cfg.register(name)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			req.Port = l.cfg.Port
		}
		for _, t := range prev {
			if t.Name == name {
				req.PreferPort = t.Addr.Port
			}
		}
		if err := protocol.WriteMessage(ctrl, req); err != nil {
			return nil, fmt.Errorf("send register: %w", err)
		}
		m, err := l.reply(ctrl, "register "+name)
		if err != nil {
			return nil, fmt.Errorf("register %q: %w", name, err)
		}
		r, ok := m.(*protocol.Registered)
		if !ok || r.Name != name {
			return nil, fmt.Errorf("gateway answered register %q with %s", name, m.Type())
		}
		tunnels = append(tunnels, Tunnel{Name: name, Addr: Addr{Host: l.host, Port: r.Port}, HTTPURL: r.HTTPURL, HTTPSURL: r.HTTPSURL})
	}
	ctrl.SetDeadline(time.Time{})
	l.mu.Lock()
	l.ctrl = ctrl
	l.mu.Unlock()
	// The control stream stays open for the session's life; the gateway
	// closing it ends the session.
	go func() {
		defer sess.Close()
		for {
			if _, err := protocol.ReadMessage(ctrl); err != nil {
				return
			}
		}
	}()
	return tunnels, nil
}

// reply reads the gateway's answer to a request, turning an Error message
// into a *RefusedError.
func (l *Listener) reply(ctrl transport.Stream, what string) (protocol.Message, error) {
	m, err := protocol.ReadMessage(ctrl)
	if err != nil {
		return nil, fmt.Errorf("read reply to %s: %w", what, err)
	}
	if e, ok := m.(*protocol.Error); ok {
		return nil, refusal(e)
	}
	return m, nil
}
