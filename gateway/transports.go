package gateway

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/source"
	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/quictransport"
	"github.com/diglett/diglett/internal/transport/tlsmux"
	"github.com/diglett/diglett/internal/transport/wstransport"
)

// The gateway takes agents over three transports: TLS over TCP with the
// multiplexer and WebSocket (both on the agent port, told apart by ALPN;
// WebSocket also on the HTTPS port, for agents that can only reach port
// 443, perhaps through a proxy), and QUIC on the agent port's number over
// UDP. Every session, whatever carried it, is served by serveSession.

// ServeQUIC accepts agents over QUIC on pconn until the server closes. It
// always closes pconn.
func (s *Server) ServeQUIC(pconn net.PacketConn) error {
	tc := s.tls.Clone()
	tc.NextProtos = []string{protocol.ALPN}
	ln, err := quictransport.Listen(pconn, tc, s.cfg.Transport, quictransport.ListenOptions{ResetKey: s.quicResetKey()})
	if err != nil {
		pconn.Close()
		return fmt.Errorf("gateway: QUIC: %w", err)
	}
	if !s.track(ln) {
		return ErrServerClosed
	}
	defer s.untrack(ln)
	for {
		sess, err := ln.Accept(s.ctx)
		if err != nil {
			if s.shuttingDown() || s.ctx.Err() != nil {
				return ErrServerClosed
			}
			return fmt.Errorf("gateway: QUIC accept: %w", err)
		}
		slot := s.hs.acquire(source.OfAddr(sess.RemoteAddr()))
		if slot == nil {
			sess.CloseWithError(transport.CodeBusy, busyReason)
			continue
		}
		if !s.goTracked(func() { s.serveSession(sess, "quic", slot) }) {
			slot.release()
			sess.CloseWithError(transport.CodeShuttingDown, "gateway shutting down")
			return ErrServerClosed
		}
	}
}

// quicResetKey is the key of the QUIC listener's stateless resets, derived
// from the gateway's private key: stable across restarts, so that an agent
// whose session the gateway no longer knows (it restarted, or dropped the
// session while the agent was frozen) learns it from its next packet. A key
// that cannot be read (a hardware key) gets a random one: resets then work
// until the gateway restarts.
func (s *Server) quicResetKey() *[32]byte {
	var err error
	if len(s.tls.Certificates) > 0 {
		var key *[32]byte
		if key, err = quictransport.ResetKey(s.tls.Certificates[0].PrivateKey); err == nil {
			return key
		}
	} else {
		err = errors.New("no certificate in the TLS configuration")
	}
	key := new([32]byte)
	rand.Read(key[:])
	s.log.Info("QUIC: stateless resets use a random key, so agents of a previous run of the gateway wait for their idle timeout after a restart", "reason", err)
	return key
}

// wsServer serves WebSocket upgrades on connections whose TLS handshake the
// gateway did (ALPN wstransport.ALPN) and hands the sessions to
// serveSession.
type wsServer struct {
	srv   *Server
	http  *http.Server
	conns *connQueue
	done  chan struct{} // closed when Serve returned

	mu        sync.Mutex
	upgrading map[net.Conn]*hsSlot // agent-port connections until their upgrade
}

func (s *Server) startAgentWS() {
	w := &wsServer{srv: s, conns: newConnQueue(), done: make(chan struct{}), upgrading: make(map[net.Conn]*hsSlot)}
	w.http = &http.Server{
		Handler: wstransport.Handler(wstransport.HandlerConfig{
			Config: s.cfg.Transport,
			Accept: w.accept,
		}),
		ReadHeaderTimeout: s.cfg.HandshakeTimeout,
		// An agent sends one request, the upgrade: a connection that
		// sent another one closes after the answer.
		IdleTimeout:    s.cfg.HandshakeTimeout,
		MaxHeaderBytes: 16 << 10,
		ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:    func(net.Listener) context.Context { return s.ctx },
		ConnState:      w.connState,
	}
	w.http.SetKeepAlivesEnabled(false)
	s.agentWS = w
	go func() {
		defer close(w.done)
		w.http.Serve(w.conns)
	}()
}

// push hands a TLS connection that negotiated the WebSocket ALPN to the
// server.
func (w *wsServer) push(c *tls.Conn) {
	if !w.conns.push(wstransport.ServerConn(c)) {
		c.Close()
	}
}

// pushHandshake hands an agent-port TLS connection that negotiated the
// WebSocket ALPN to the server with its handshake slot, held until the
// upgrade (or the connection's end).
func (w *wsServer) pushHandshake(c *tls.Conn, slot *hsSlot) {
	nc := wstransport.ServerConn(c)
	w.mu.Lock()
	w.upgrading[nc] = slot
	w.mu.Unlock()
	if !w.conns.push(nc) {
		w.connState(nc, http.StateClosed)
		c.Close()
	}
}

// connState releases the handshake slot of an agent-port connection once
// it is upgraded (hijacked) or closed.
func (w *wsServer) connState(c net.Conn, state http.ConnState) {
	if state != http.StateHijacked && state != http.StateClosed {
		return
	}
	w.mu.Lock()
	slot := w.upgrading[c]
	delete(w.upgrading, c)
	w.mu.Unlock()
	if slot != nil {
		slot.release()
	}
}

func (w *wsServer) accept(sess *tlsmux.Session) {
	slot := w.srv.hs.acquire(source.OfAddr(sess.RemoteAddr()))
	if slot == nil {
		w.refuse(sess)
		return
	}
	if !w.srv.goTracked(func() { w.srv.serveSession(sess, "ws", slot) }) {
		slot.release()
		sess.CloseWithError(transport.CodeShuttingDown, "gateway shutting down")
	}
}

// refuse closes a session refused for want of a handshake slot with
// transport.CodeBusy. It first reads the agent's hello, for a second at
// most (on the request's goroutine): a TCP connection closed with data
// unread is reset, and the agent could lose the reason.
func (w *wsServer) refuse(sess *tlsmux.Session) {
	ctx, cancel := context.WithTimeout(w.srv.ctx, time.Second)
	defer cancel()
	if st, err := sess.AcceptStream(ctx); err == nil {
		st.SetReadDeadline(time.Now().Add(time.Second))
		protocol.ReadMessage(st)
	}
	sess.CloseWithError(transport.CodeBusy, busyReason)
}

func (w *wsServer) close() {
	w.http.Close()
	w.conns.Close()
	<-w.done
}

// AgentTLS makes tc (the HTTPS ingress's) answer agents too: a client that
// offers the WebSocket agent ALPN gets the gateway's own certificate (the
// key agents pin), the others tc's. tc is not changed; a connection that
// negotiated wstransport.ALPN goes to ServeAgentTLS.
func (s *Server) AgentTLS(tc *tls.Config) *tls.Config {
	tc = tc.Clone()
	agent := s.tls.Clone()
	agent.NextProtos = []string{wstransport.ALPN}
	next := tc.GetConfigForClient
	tc.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if slices.Contains(hello.SupportedProtos, wstransport.ALPN) {
			return agent, nil
		}
		if next != nil {
			return next(hello)
		}
		return nil, nil
	}
	return tc
}

// connQueue is a net.Listener fed with connections by push.
type connQueue struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newConnQueue() *connQueue {
	return &connQueue{conns: make(chan net.Conn), done: make(chan struct{})}
}

// push hands c to Accept; false if the queue is closed.
func (q *connQueue) push(c net.Conn) bool {
	select {
	case q.conns <- c:
		return true
	case <-q.done:
		return false
	}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.conns:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return queueAddr{} }

type queueAddr struct{}

func (queueAddr) Network() string { return "queue" }
func (queueAddr) String() string  { return "gateway" }
