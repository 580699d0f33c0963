package ingress

// TLS for the HTTPS ingress: handshakes in their own goroutines, and the
// dispatch by ALPN to HTTP/2, HTTP/1 (behind the request guard), the ACME
// TLS-ALPN challenge, or a WebSocket agent.

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/diglett/diglett/internal/accept"
	"github.com/diglett/diglett/internal/httpguard"
	"github.com/diglett/diglett/internal/transport/wstransport"
)

// handshakeListener does the TLS handshakes of an HTTPS listener, each in
// its own goroutine bounded by timeout, and hands the HTTP server
// connections ready to serve: HTTP/2 ones as they are, HTTP/1 ones wrapped
// in the request guard (which needs the plaintext).
type handshakeListener struct {
	net.Listener
	tls     *tls.Config
	timeout time.Duration
	log     *slog.Logger
	ctx     context.Context // ends with the server or when the listener closes
	cancel  context.CancelFunc
	agent   func(*tls.Conn)       // takes WebSocket agent connections
	h1      func(*httpguard.Conn) // if set, takes HTTP/1 connections (see fast.go)
	conns   chan net.Conn
	done    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup

	mu  sync.Mutex
	err error // why Accept fails, once done is closed
}

func newHandshakeListener(ctx context.Context, ln net.Listener, tc *tls.Config, timeout time.Duration, log *slog.Logger, agent func(*tls.Conn), h1 func(*httpguard.Conn)) *handshakeListener {
	ctx, cancel := context.WithCancel(ctx)
	l := &handshakeListener{Listener: ln, tls: tc, timeout: timeout, log: log, ctx: ctx, cancel: cancel, agent: agent, h1: h1,
		conns: make(chan net.Conn), done: make(chan struct{})}
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

func (l *handshakeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		l.mu.Lock()
		defer l.mu.Unlock()
		return nil, l.err
	}
}

func (l *handshakeListener) acceptLoop() {
	defer l.wg.Done()
	for {
		raw, err := accept.Next(l.Listener, l.done, l.log, "accept visitor")
		if err != nil {
			l.mu.Lock()
			l.err = err
			l.mu.Unlock()
			l.Close()
			return
		}
		l.wg.Add(1)
		go l.handshake(raw)
	}
}

func (l *handshakeListener) handshake(raw net.Conn) {
	defer l.wg.Done()
	tc := tls.Server(raw, l.tls)
	ctx, cancel := context.WithTimeout(l.ctx, l.timeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		l.log.Debug("visitor TLS handshake failed", "visitor", raw.RemoteAddr(), "err", err)
		raw.Close()
		return
	}
	var c net.Conn = tc
	switch tc.ConnectionState().NegotiatedProtocol {
	case "h2":
	case "acme-tls/1":
		// A certificate authority checking a TLS-ALPN challenge: the
		// handshake was the whole exchange.
		tc.Close()
		return
	case wstransport.ALPN:
		l.agent(tc)
		return
	default:
		if l.h1 != nil {
			l.h1(httpguard.Wrap(tc))
			return
		}
		c = httpguard.Wrap(tc)
	}
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *handshakeListener) Close() error {
	l.once.Do(func() {
		l.mu.Lock()
		if l.err == nil {
			l.err = net.ErrClosed
		}
		l.mu.Unlock()
		close(l.done)
		l.cancel()
		l.Listener.Close()
	})
	return nil
}

// wait waits for the accept loop and the handshakes in progress to end.
func (l *handshakeListener) wait() {
	l.Close()
	l.wg.Wait()
}
