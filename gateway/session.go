package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/diglett/diglett/internal/lazylog"
	"github.com/diglett/diglett/internal/printable"
	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/source"
	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/batchconn"
	"github.com/diglett/diglett/internal/transport/tlsmux"
	"github.com/diglett/diglett/internal/transport/wstransport"
)

// session is one live agent connection.
type session struct {
	srv      *Server
	id       uint64 // unique in this server
	sess     transport.Session
	log      *slog.Logger
	identity Identity
	quota    Quota      // the identity's, with the gateway's defaults
	login    loginState // credentials and control stream, for re-checks (reload.go)
	via      string     // the transport: tcp, quic or ws
	since    time.Time  // when the session began
	instance string     // the agent process's, from its hello ("" from older agents)
	notices  bool       // the agent reads notices

	// loggedIn is the identity's name once logged in, for the listings
	// of introspect.go, which read it from other goroutines.
	loggedIn atomic.Pointer[string]

	mu      sync.Mutex
	tunnels []*tunnel // tunnels this session is a member of
	closed  bool
	// member ends when the session leaves its tunnels (see Context). It
	// is made by the first Context call: an idle session holds none.
	member    context.Context
	endMember context.CancelFunc

	flows flowDemux // UDP flows carried in QUIC datagrams (udp.go)
}

func (ss *session) close() { ss.sess.Close() }

// logAttrs are the attributes of the session's log lines: the agent's
// address and transport, and once it has logged in its identity and the
// session's id (as the access log and the management API show it).
func (ss *session) logAttrs() []slog.Attr {
	as := make([]slog.Attr, 2, 4)
	as[0] = slog.String("agent", ss.sess.RemoteAddr().String())
	as[1] = slog.String("transport", ss.via)
	if id := ss.loggedIn.Load(); id != nil {
		as = append(as, slog.String("identity", *id), slog.Uint64("session", ss.id))
	}
	return as
}

// openStream opens a data stream for a visitor of tunnel name and writes its
// header; the agent's status byte is left for the caller to read.
func (ss *session) openStream(ctx context.Context, name, visitor string) (transport.Stream, error) {
	return ss.openWith(ctx, protocol.StreamHeader{Name: name, Visitor: visitor})
}

// openWith opens a data stream with header h (a TCP visitor's, or a UDP
// flow's) and writes the header.
func (ss *session) openWith(ctx context.Context, h protocol.StreamHeader) (transport.Stream, error) {
	hdr, err := protocol.AppendStreamHeader(make([]byte, 0, 80), h)
	if err != nil {
		return nil, fmt.Errorf("stream header: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, ss.srv.cfg.HandshakeTimeout)
	defer cancel()
	st, err := ss.sess.OpenStream(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := st.Write(hdr); err != nil {
		st.Reset()
		return nil, fmt.Errorf("write stream header: %w", err)
	}
	return st, nil
}

// serveConn runs one TCP agent connection: the TLS handshake, then by its
// ALPN either the multiplexer or a WebSocket upgrade (served by the
// gateway's WebSocket server, which hands the session back to
// serveSession). slot is its handshake slot; shedding it closes conn.
func (s *Server) serveConn(conn net.Conn, slot *hsSlot) {
	log := s.log.With("agent", conn.RemoteAddr().String())
	slot.onShed(func() { conn.Close() })
	hsCtx, cancel := context.WithTimeout(s.ctx, s.cfg.HandshakeTimeout)
	defer cancel()
	fb := newFirstByteConn(conn, s.cfg.FirstByteTimeout)
	// Each batch of the multiplexer's frames leaves in one system call
	// (see tlsmux.New).
	tc := tls.Server(batchconn.New(fb), s.tls)
	err := tc.HandshakeContext(hsCtx)
	if err == nil && tc.ConnectionState().Version != tls.VersionTLS13 {
		err = errors.New("agent did not negotiate TLS 1.3")
	}
	if err != nil {
		var ne net.Error
		if !fb.arrived.Load() && errors.As(err, &ne) && ne.Timeout() {
			s.hs.silent.Add(1)
			log.Debug("agent connection closed: it sent nothing", "within", s.cfg.FirstByteTimeout)
		} else {
			log.Debug("agent handshake failed", "err", err)
		}
		conn.Close()
		slot.release()
		return
	}
	if tc.ConnectionState().NegotiatedProtocol == wstransport.ALPN {
		// The slot goes with the connection to the WebSocket server,
		// until the upgrade; the session then takes a slot of its own.
		s.agentWS.pushHandshake(tc, slot)
		return
	}
	idle := s.idleFor(conn)
	ts, err := tlsmux.NewIdle(tc, tc.ConnectionState(), false, s.cfg.Transport, idle)
	if err != nil {
		if idle.Done != nil {
			idle.Done()
		}
		log.Debug("agent session failed", "err", err)
		slot.release()
		return
	}
	s.serveSession(ts, "tcp", slot)
}

// errShed is why a handshake cut off for a newcomer ended.
var errShed = errors.New("handshake cut off: the gateway is full")

// serveSession runs one agent session, over any transport, from its login
// to its end. slot is the session's handshake slot, released once the
// agent has logged in, or when the session ends; shedding it closes the
// session with transport.CodeBusy.
func (s *Server) serveSession(ts transport.Session, via string, slot *hsSlot) {
	defer slot.release()
	hsCtx, cancel := context.WithTimeout(s.ctx, s.cfg.HandshakeTimeout)
	defer cancel()
	hsCtx, shed := context.WithCancelCause(hsCtx)
	defer shed(nil)
	slot.onShed(func() { shed(errShed) })
	stopShed := context.AfterFunc(hsCtx, func() {
		if errors.Is(context.Cause(hsCtx), errShed) {
			ts.CloseWithError(transport.CodeBusy, busyReason)
		}
	})
	defer stopShed()
	ss := &session{srv: s, id: s.nextID.Add(1), sess: ts, via: via, since: time.Now()}
	// The session keeps its logger for its life and rarely writes: the
	// attributes are made for each line (logAttrs).
	ss.log = lazylog.Func(s.log, ss.logAttrs)
	if !s.addSession(ss) {
		ts.CloseWithError(transport.CodeShuttingDown, "gateway shutting down")
		return
	}
	opened := false    // told to the observer
	handedOff := false // the control loop, and the session's end, went to a goroutine of their own
	defer func() {
		if !handedOff {
			ss.end(opened)
		}
	}()

	ctrl, err := ts.AcceptStream(hsCtx)
	if err != nil {
		ss.log.Debug("agent opened no control stream", "err", err)
		return
	}
	defer func() {
		if !handedOff {
			ss.closeControl(ctrl)
		}
	}()
	ctrl.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	if err := ss.handshake(hsCtx, ctrl); err != nil {
		ss.log.Debug("agent handshake refused", "err", err)
		return
	}
	ctrl.SetDeadline(time.Time{})
	stopShed()
	slot.release()
	ss.log.Info("agent logged in")
	s.obs.SessionOpened(via)
	opened = true

	// The control loop goes on without this goroutine, which ends: its
	// stack grew deep in the TLS handshake and the login, and a goroutine
	// keeps its stack until the collector shrinks it, so an idle session
	// would hold it for a long while. Over a multiplexer the stream's
	// notifications drive the loop; over QUIC a goroutine of its own
	// reads.
	handedOff = true
	s.wg.Add(1)
	cr := &controlReader{ss: ss, ctrl: ctrl}
	if ns, ok := ctrl.(notifyStream); ok {
		// No goroutine waits on the control stream of an idle session:
		// the stream says when it has something (control.go).
		cr.ns = ns
		ns.OnReadable(cr.notify)
		return
	}
	go func() {
		defer cr.finish()
		ss.serveControl(ctrl)
	}()
}

// closeControl closes the control stream, and lets the agent read what
// was written on it last (see flush).
func (ss *session) closeControl(ctrl transport.Stream) {
	ctrl.Close()
	ss.srv.flush(ss.sess)
}

// end tears the session down once its control stream is closed: it
// leaves its tunnels and the server's lists. opened says whether the
// observer was told of it (it logged in).
func (ss *session) end(opened bool) {
	s := ss.srv
	ss.sess.Close()
	s.removeSession(ss)
	ss.leave()
	if opened {
		s.obs.SessionClosed(ss.via)
	}
	if ss.identity.Name != "" {
		s.quotas.removeSession(ss.identity.Name)
		ss.log.Info("agent disconnected", "why", context.Cause(ss.sess.Context()))
	}
}

// serveControl reads the agent's control messages until the stream ends
// or the agent breaks the protocol, for a stream that cannot say when it
// has something (QUIC's; control.go reads the others). The agent opens
// only the control stream: the session takes no other
// (Config.Transport.MaxIncomingStreams is 1), so nothing accepts streams
// here.
//
// This goroutine waits for the agent's next message for the session's
// whole life, and a parked goroutine keeps the stack it grew until the
// collector shrinks it, by half per cycle at most. Decoding a message and
// registering a tunnel grow a stack to several kilobytes, so each message
// is handled on a goroutine of its own, and this one only ever reads.
func (ss *session) serveControl(ctrl transport.Stream) {
	for {
		t, payload, err := protocol.ReadFrame(ctrl)
		if err != nil {
			if errors.Is(err, protocol.ErrMalformed) {
				ss.badMessage(ctrl, err)
			} else if !errors.Is(err, io.EOF) {
				ss.log.Debug("control stream ended", "err", err)
			}
			return
		}
		if !onOwnStack(func() bool { return ss.controlMessage(ctrl, t, payload) }) {
			return
		}
	}
}

// controlMessage handles one control message of the agent, and reports
// whether the session goes on.
func (ss *session) controlMessage(ctrl transport.Stream, t protocol.Type, payload []byte) bool {
	m, err := protocol.DecodeMessage(t, payload)
	if err != nil {
		ss.badMessage(ctrl, err)
		return false
	}
	if _, ok := m.(*protocol.Drain); ok {
		// The agent is stopping: no new visitors, and its idle HTTP
		// streams go, so that it need not wait for them; visitors in
		// flight go on until the agent closes the session.
		ss.log.Info("agent draining: sending it no more visitors")
		ss.leave()
		return true
	}
	reg, ok := m.(*protocol.Register)
	if !ok {
		ss.log.Warn("dropping agent: unexpected message", "type", m.Type())
		ss.reply(ctrl, &protocol.Error{Code: protocol.CodeBadRequest, Message: "unexpected " + m.Type().String() + " message"})
		return false
	}
	resp := ss.register(reg)
	return ss.reply(ctrl, resp) == nil
}

// badMessage answers a control message that does not decode before the
// session is dropped.
func (ss *session) badMessage(ctrl transport.Stream, err error) {
	ss.log.Warn("dropping agent: bad control message", "err", err)
	ss.reply(ctrl, &protocol.Error{Code: protocol.CodeBadRequest, Message: err.Error()})
}

// onOwnStack runs f on a goroutine of its own, waits for it and returns
// its result: whatever stack f grows goes when it returns.
func onOwnStack(f func() bool) bool {
	done := make(chan bool, 1)
	go func() { done <- f() }()
	return <-done
}

// flush lets the agent read the last reply (a refusal, say) before the
// session is torn down: the multiplexer sends asynchronously and drops what
// is still queued when the session closes. It waits for the agent to hang
// up, for a second at most.
func (s *Server) flush(ts transport.Session) {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-ts.Context().Done():
	case <-t.C:
	case <-s.ctx.Done():
	}
}

func (ss *session) reply(w io.Writer, m protocol.Message) error {
	ss.login.writeMu.Lock()
	defer ss.login.writeMu.Unlock()
	return protocol.WriteMessage(w, m)
}

// handshake exchanges hellos and authenticates the agent.
func (ss *session) handshake(ctx context.Context, ctrl transport.Stream) error {
	ss.login.ctrl = ctrl
	m, err := protocol.ReadMessage(ctrl)
	if err != nil {
		return fmt.Errorf("read hello: %w", err)
	}
	hello, ok := m.(*protocol.Hello)
	if !ok {
		ss.reply(ctrl, &protocol.Error{Code: protocol.CodeBadRequest, Message: "expected hello, got " + m.Type().String()})
		return fmt.Errorf("expected hello, got %s", m.Type())
	}
	if hello.Version != protocol.Version {
		msg := fmt.Sprintf("gateway speaks protocol version %d, agent speaks version %d: use an agent of the same release as the gateway", protocol.Version, hello.Version)
		ss.reply(ctrl, &protocol.Error{Code: protocol.CodeVersion, Message: msg})
		ss.log.Warn("agent refused: unsupported protocol version", "version", hello.Version, "software", hello.Software)
		ss.srv.obs.LoginRefused(RefusedVersion)
		return errors.New(msg)
	}
	// Set before the session can join a tunnel; read by others after.
	ss.instance, ss.notices = hello.Instance, slices.Contains(hello.Features, protocol.FeatureNotice)
	// The gateway's features are listed to every agent: one that does not
	// know a feature ignores it.
	if err := ss.reply(ctrl, &protocol.Hello{Version: protocol.Version, Software: Software, Features: []string{protocol.FeatureUDP}}); err != nil {
		return err
	}
	m, err = protocol.ReadMessage(ctrl)
	if err != nil {
		return fmt.Errorf("read login: %w", err)
	}
	login, ok := m.(*protocol.Login)
	if !ok {
		ss.reply(ctrl, &protocol.Error{Code: protocol.CodeBadRequest, Message: "expected login, got " + m.Type().String()})
		return fmt.Errorf("expected login, got %s", m.Type())
	}
	src := source.OfAddr(ss.sess.RemoteAddr())
	if perr := ss.srv.logins.refusal(src); perr != nil {
		ss.srv.obs.LoginRefused(RefusedLockedOut)
		ss.reply(ctrl, perr)
		return errors.New(perr.Message)
	}
	names := make([]string, len(login.Names))
	for i, n := range login.Names {
		names[i] = protocol.NormalizeName(n)
	}
	creds := Credentials{Token: login.Token, User: login.User, Password: login.Password, Names: names, Remote: ss.sess.RemoteAddr()}
	id, err := ss.authenticate(ctx, creds)
	if err != nil {
		if errors.Is(err, ErrUnauthorized) {
			// Logged at Debug: the limiter sums failures up at Warn.
			delay := ss.srv.logins.failed(ctx, src)
			ss.log.Debug("agent login failed", "err", err, "delay", delay)
			ss.srv.obs.LoginRefused(RefusedCredentials)
			ss.reply(ctrl, &protocol.Error{Code: protocol.CodeUnauthorized, Message: refusalText(err)})
			return err
		}
		ss.reply(ctrl, &protocol.Error{Code: protocol.CodeInternal, Message: "authentication failed"})
		ss.log.Info("agent refused", "err", err)
		ss.srv.obs.LoginRefused(RefusedError)
		return err
	}
	ss.srv.logins.succeeded(src)
	ss.quota = id.Quota.Or(ss.srv.cfg.Quota)
	if perr := ss.srv.quotas.addSession(id.Name, ss.quota.Sessions); perr != nil {
		ss.reply(ctrl, perr)
		ss.log.Warn("agent refused", "identity", id.Name, "reason", perr.Message)
		ss.srv.obs.LoginRefused(RefusedQuota)
		return errors.New(perr.Message)
	}
	ss.identity = id
	ss.loggedIn.Store(&id.Name)
	return ss.reply(ctrl, &protocol.LoginOK{Identity: id.Name})
}

// register handles one Register request and returns the reply.
func (ss *session) register(req *protocol.Register) protocol.Message {
	ss.mu.Lock()
	n := len(ss.tunnels)
	ss.mu.Unlock()
	if n >= ss.srv.cfg.MaxNamesPerSession {
		return &protocol.Error{Code: protocol.CodeTooManyNames, Message: fmt.Sprintf("at most %d names per connection", ss.srv.cfg.MaxNamesPerSession)}
	}
	auth := ss.srv.authenticator()
	if err := auth.a.Authorize(ss.srv.ctx, ss.identity, req.Name); err != nil {
		ss.log.Info("name refused", "name", req.Name, "err", err)
		if errors.Is(err, ErrForbidden) {
			msg := fmt.Sprintf("name %q is not allowed for this identity", req.Name)
			if why := reasonOf(err, ErrForbidden); why != "" {
				msg += ": " + why
			}
			return &protocol.Error{Code: protocol.CodeForbidden, Message: msg}
		}
		return &protocol.Error{Code: protocol.CodeInternal, Message: "authorization failed"}
	}
	if perr := checkVisitorAccess(ss.srv.cfg.VisitorAccess, req); perr != nil {
		ss.log.Info("name refused", "name", req.Name, "code", perr.Code, "reason", perr.Message)
		return perr
	}
	t, perr := ss.srv.reg.join(ss, req)
	if perr != nil {
		ss.log.Info("name refused", "name", req.Name, "code", perr.Code, "reason", perr.Message)
		return perr
	}
	if perr := ss.confirmName(auth, t); perr != nil {
		return perr
	}
	ss.srv.obs.Registered(t.name)
	if t.udp {
		// A UDP tunnel has no HTTP address.
		return &protocol.Registered{Name: t.name, Port: t.port}
	}
	httpURL, httpsURL := ss.srv.URLs(t.name)
	return &protocol.Registered{Name: t.name, Port: t.port, HTTPURL: httpURL, HTTPSURL: httpsURL}
}

// leave removes the session from every tunnel it joined and ends its
// member context (an HTTP ingress then closes its idle streams); it
// registers nothing more.
func (ss *session) leave() {
	ss.mu.Lock()
	ts := ss.tunnels
	ss.tunnels = nil
	ss.closed = true
	ss.mu.Unlock()
	for _, t := range ts {
		ss.srv.reg.leave(t, ss)
	}
	ss.mu.Lock()
	end := ss.endMember
	ss.mu.Unlock()
	if end != nil {
		end()
	}
}

// serves reports whether the session is a member of tunnel name.
func (ss *session) serves(name string) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for _, t := range ss.tunnels {
		if t.name == name {
			return true
		}
	}
	return false
}

// addTunnel records membership; it fails if the session already ended.
func (ss *session) addTunnel(t *tunnel) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.closed {
		return false
	}
	for _, x := range ss.tunnels {
		if x == t {
			return true
		}
	}
	ss.tunnels = append(ss.tunnels, t)
	return true
}

// Software is the version string the gateway sends in its hello.
var Software = "diglett-server"

// refusalText is what an agent is told of a refused login: the
// authenticator's reason, which its contract says is safe to show, made
// printable and short.
func refusalText(err error) string {
	msg := "login refused by the gateway"
	if why := reasonOf(err, ErrUnauthorized); why != "" {
		msg += ": " + why
	}
	return msg
}

// reasonOf returns what err adds to sentinel ("token expired" of "login
// refused: token expired"), printable and bounded; "" if nothing.
func reasonOf(err, sentinel error) string {
	s, ok := strings.CutPrefix(err.Error(), sentinel.Error()+": ")
	if !ok {
		return ""
	}
	return printable.String(s, printable.MaxRunes)
}
