package gateway

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"

	"github.com/diglett/diglett/internal/protocol"
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
	ln, err := quictransport.Listen(pconn, tc, s.cfg.Transport)
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
		release, ok := s.trySlot()
		if !ok {
			s.log.Debug("agent session refused: too many handshakes in progress", "agent", sess.RemoteAddr(), "transport", "quic")
			sess.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveSession(sess, "quic", release)
		}()
	}
}

// wsServer serves WebSocket upgrades on connections whose TLS handshake the
// gateway did (ALPN wstransport.ALPN) and hands the sessions to
// serveSession.
type wsServer struct {
	srv   *Server
	http  *http.Server
	conns *connQueue
	done  chan struct{} // closed when Serve returned
}

func (s *Server) startAgentWS() {
	w := &wsServer{srv: s, conns: newConnQueue(), done: make(chan struct{})}
	w.http = &http.Server{
		Handler: wstransport.Handler(wstransport.HandlerConfig{
			Config: s.cfg.Transport,
			Accept: w.accept,
		}),
		ReadHeaderTimeout: s.cfg.HandshakeTimeout,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return s.ctx },
	}
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

func (w *wsServer) accept(sess *tlsmux.Session) {
	release, ok := w.srv.trySlot()
	if !ok {
		w.srv.log.Debug("agent session refused: too many handshakes in progress", "agent", sess.RemoteAddr(), "transport", "ws")
		sess.Close()
		return
	}
	w.srv.wg.Add(1)
	go func() {
		defer w.srv.wg.Done()
		w.srv.serveSession(sess, "ws", release)
	}()
}

func (w *wsServer) close() {
	w.http.Close()
	w.conns.Close()
	<-w.done
}

// agentTLS makes tc (the HTTPS ingress's) answer agents too: a client that
// offers the WebSocket agent ALPN gets the gateway's own certificate (the
// key agents pin), the others tc's.
func (s *Server) agentTLS(tc *tls.Config) *tls.Config {
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
