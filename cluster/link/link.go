// Package link is the authenticated node-to-node link of a gateway
// cluster: a node that has no agent session for a tunnel forwards the
// visitor to a node that has one over a stream of this link.
//
// A link is the project's own TLS+multiplexer transport
// (internal/transport/tlsmux): one session per peer, dialled on first use
// and reused by every stream after it. Both sides are authenticated
// against what the peer published when it joined the cluster, with no
// certificate authority: the dialler accepts a server only if its
// certificate has the key of the certificate that node published, and the
// server accepts a client only if its certificate has the key of a live
// member's, which also tells it which node is calling. Each stream starts
// with a small framed Header saying which tunnel and visitor it is for.
//
// The membership itself is the caller's: Options.Peer and Options.Peers
// are asked at every dial, handshake and incoming stream.
package link

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/diglett/diglett/internal/accept"
	"github.com/diglett/diglett/internal/identity"
	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/batchconn"
	"github.com/diglett/diglett/internal/transport/tlsmux"
)

// ALPN is the application protocol a link negotiates: a link port can
// never be taken for an agent port, nor the other way round.
const ALPN = "diglett-link/1"

// Defaults of Options.
const (
	DefaultDialTimeout       = 5 * time.Second
	DefaultMaxStreamsPerPeer = 4096
)

// maxHandshakes bounds the incoming connections in their TLS handshake
// at once; more are closed at once.
const maxHandshakes = 64

// Errors callers branch on. The errors Open returns wrap them, with the
// node and address in their text.
var (
	// ErrNoMember: the node is not a live member of the cluster (Peer
	// does not know it, or it published no certificate).
	ErrNoMember = errors.New("no live member")
	// ErrUnpublishedCertificate: the node answered with a certificate
	// whose key is not the one it published.
	ErrUnpublishedCertificate = errors.New("certificate not published")
	// ErrRefused: the node did not accept this node's certificate (it
	// does not count this node among its live members).
	ErrRefused = errors.New("refused by the peer")
	// ErrClosed: the link is closed.
	ErrClosed = errors.New("link closed")
)

// Peer is a node as it published itself at join.
type Peer struct {
	Node string            // its unique id
	Addr string            // where its link listens, host:port
	Cert *x509.Certificate // the certificate it serves and dials with
}

// Options configure a Link. Zero fields take the documented defaults.
type Options struct {
	// Node is this node's id. Required.
	Node string
	// Cert is this node's certificate and key, the certificate it
	// publishes. Required.
	Cert tls.Certificate
	// Peer looks up a live peer by node id, at each dial and each stream
	// a peer opens. Required.
	Peer func(node string) (Peer, bool)
	// Peers lists all live peers, to recognise a client certificate.
	// Required.
	Peers func() []Peer
	// Handle serves a stream a peer opened, once its header is read. It
	// runs on its own goroutine; ctx ends with the session. The stream is
	// Handle's until it returns, and is closed then: Handle must return
	// when ctx ends or the stream fails. Required.
	Handle func(ctx context.Context, from string, h Header, s transport.Stream)
	// Transport tunes the sessions (keep-alive, dead-peer detection,
	// windows); the zero value takes the transport's defaults.
	Transport transport.Config
	// DialTimeout bounds a dial and its handshake, the opening of a
	// stream, and the wait for the header of a stream a peer opened.
	// Default 5s.
	DialTimeout time.Duration
	// MaxStreamsPerPeer bounds the streams from one peer being handled at
	// once; one more is reset. Default 4096.
	MaxStreamsPerPeer int
	// Logger receives the link's logs; nil discards them.
	Logger *slog.Logger
}

// Link is one node's end of the links to its peers. Its methods are safe
// for concurrent use.
type Link struct {
	o    Options
	log  *slog.Logger
	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup
	hs   chan struct{} // slots of incoming handshakes

	clientTLS tls.Config // template; VerifyConnection set per dial
	serverTLS *tls.Config

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	out       map[string]*outbound       // node -> the session Open uses
	sessions  map[*tlsmux.Session]string // every live session -> its node
	handling  map[string]*peerLoad       // node -> streams being handled
}

// outbound is the session Open uses to reach one node: being dialled
// until ready is closed, then sess or err.
type outbound struct {
	ready chan struct{}
	addr  string
	fp    string // the fingerprint it was dialled for
	sess  *tlsmux.Session
	err   error
}

type peerLoad struct {
	n      int
	warned bool // the refusal over the limit was logged
}

// refusal is an error whose text is msg, wrapping the sentinels errs.
type refusal struct {
	msg  string
	errs []error
}

func (e *refusal) Error() string   { return e.msg }
func (e *refusal) Unwrap() []error { return e.errs }

// New checks o and returns a Link that serves no listener yet.
func New(o Options) (*Link, error) {
	switch {
	case o.Node == "":
		return nil, errors.New("link: no node id")
	case len(o.Cert.Certificate) == 0 || o.Cert.PrivateKey == nil:
		return nil, errors.New("link: no certificate and key")
	case o.Peer == nil || o.Peers == nil:
		return nil, errors.New("link: no peer lookup (Peer and Peers are required)")
	case o.Handle == nil:
		return nil, errors.New("link: no stream handler")
	case o.DialTimeout < 0:
		return nil, fmt.Errorf("link: negative dial timeout %v", o.DialTimeout)
	case o.MaxStreamsPerPeer < 0:
		return nil, fmt.Errorf("link: negative streams per peer %d", o.MaxStreamsPerPeer)
	}
	if _, err := x509.ParseCertificate(o.Cert.Certificate[0]); err != nil {
		return nil, fmt.Errorf("link: certificate: %w", err)
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.MaxStreamsPerPeer == 0 {
		o.MaxStreamsPerPeer = DefaultMaxStreamsPerPeer
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, stop := context.WithCancel(context.Background())
	l := &Link{
		o:         o,
		log:       log.With("node", o.Node),
		ctx:       ctx,
		stop:      stop,
		hs:        make(chan struct{}, maxHandshakes),
		listeners: make(map[net.Listener]struct{}),
		out:       make(map[string]*outbound),
		sessions:  make(map[*tlsmux.Session]string),
		handling:  make(map[string]*peerLoad),
	}
	l.clientTLS = tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{o.Cert},
		NextProtos:   []string{ALPN},
		// The server is checked against the certificate its node
		// published (VerifyConnection), not against a CA.
		InsecureSkipVerify: true,
	}
	l.serverTLS = &tls.Config{
		MinVersion:             tls.VersionTLS13,
		Certificates:           []tls.Certificate{o.Cert},
		NextProtos:             []string{ALPN},
		ClientAuth:             tls.RequireAnyClientCert,
		SessionTicketsDisabled: true, // every connection shows its certificate
		VerifyConnection: func(cs tls.ConnectionState) error {
			if cs.NegotiatedProtocol != ALPN {
				return fmt.Errorf("link: the client does not speak %s", ALPN)
			}
			_, err := l.identify(cs)
			return err
		},
	}
	return l, nil
}

// identify finds the live member whose published certificate has the key
// of the client certificate in cs.
func (l *Link) identify(cs tls.ConnectionState) (string, error) {
	if len(cs.PeerCertificates) == 0 {
		return "", errors.New("link: no client certificate")
	}
	fp := identity.CertFingerprint(cs.PeerCertificates[0])
	node, n := "", 0
	for _, p := range l.o.Peers() {
		if p.Cert != nil && identity.CertFingerprint(p.Cert) == fp {
			node = p.Node
			n++
		}
	}
	switch n {
	case 0:
		return "", &refusal{"link: client certificate of no live member", []error{ErrNoMember}}
	case 1:
		return node, nil
	}
	return "", fmt.Errorf("link: client certificate published by %d members", n)
}

// Serve accepts peers on ln until Close, which closes ln; it returns nil
// then, or the error that stopped ln.
func (l *Link) Serve(ln net.Listener) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		ln.Close()
		return nil
	}
	l.listeners[ln] = struct{}{}
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		delete(l.listeners, ln)
		l.mu.Unlock()
		ln.Close()
	}()
	for {
		conn, err := accept.Next(ln, l.ctx.Done(), l.log, "link: accept")
		if err != nil {
			if l.ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("link: accept: %w", err)
		}
		select {
		case l.hs <- struct{}{}:
		default:
			l.log.Warn("link: too many handshakes at once; connection closed", "remote", conn.RemoteAddr().String(), "max", maxHandshakes)
			conn.Close()
			continue
		}
		if !l.add() {
			<-l.hs
			conn.Close()
			return nil
		}
		go func() {
			defer l.wg.Done()
			l.serveConn(conn)
		}()
	}
}

// add counts one more goroutine of the link, unless it is closed.
func (l *Link) add() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.wg.Add(1)
	return true
}

// accepted is the byte the server sends once it has accepted the
// client's certificate: in TLS 1.3 the client's handshake ends before the
// server has checked the client, so without it a refused dialler would
// only see its first stream fail.
const accepted = 1

// serveConn authenticates an incoming connection and serves its session.
func (l *Link) serveConn(conn net.Conn) {
	ctx, cancel := context.WithTimeout(l.ctx, l.o.DialTimeout)
	defer cancel()
	remote := conn.RemoteAddr().String()
	tc := tls.Server(batchconn.New(conn), l.serverTLS)
	err := tc.HandshakeContext(ctx)
	var node string
	if err == nil {
		node, err = l.identify(tc.ConnectionState())
	}
	if err == nil {
		err = l.writeAccepted(ctx, tc)
	}
	<-l.hs
	if err != nil {
		conn.Close()
		if l.ctx.Err() == nil {
			l.log.Warn("link: peer refused", "remote", remote, "err", err)
		}
		return
	}
	sess, err := tlsmux.New(tc, tc.ConnectionState(), false, l.o.Transport)
	if err != nil {
		l.log.Warn("link: session", "peer", node, "remote", remote, "err", err)
		return
	}
	if !l.track(sess, node) {
		sess.CloseWithError(transport.CodeShuttingDown, "")
		return
	}
	l.log.Debug("link: peer connected", "peer", node, "remote", remote)
	l.serveSession(sess, node)
}

func (l *Link) writeAccepted(ctx context.Context, tc *tls.Conn) error {
	stop := context.AfterFunc(ctx, func() { tc.SetWriteDeadline(time.Unix(1, 0)) })
	_, err := tc.Write([]byte{accepted})
	if !stop() {
		return fmt.Errorf("link: accept: %w", ctx.Err())
	}
	if err != nil {
		return fmt.Errorf("link: accept: %w", err)
	}
	return nil
}

// track records a live session of node, unless the link is closed; the
// caller then serves it.
func (l *Link) track(sess *tlsmux.Session, node string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.sessions[sess] = node
	return true
}

// serveSession hands the streams node opens on sess to Handle, until the
// session or the link ends, then forgets the session.
func (l *Link) serveSession(sess *tlsmux.Session, node string) {
	defer func() {
		l.mu.Lock()
		delete(l.sessions, sess)
		if e := l.out[node]; e != nil && e.sess == sess {
			delete(l.out, node)
		}
		l.mu.Unlock()
		sess.Close()
		l.log.Debug("link: session ended", "peer", node, "cause", context.Cause(sess.Context()))
	}()
	fp := identity.CertFingerprint(sess.ConnectionState().PeerCertificates[0])
	for {
		st, err := sess.AcceptStream(l.ctx)
		if err != nil {
			return
		}
		if p, ok := l.o.Peer(node); !ok || p.Cert == nil || identity.CertFingerprint(p.Cert) != fp {
			st.Reset()
			l.log.Info("link: closing the session of a node that is no longer a member with this certificate", "peer", node)
			sess.CloseWithError(transport.CodeProtocol, "not a live member")
			return
		}
		if !l.acquire(node) {
			st.Reset()
			continue
		}
		if !l.add() {
			l.release(node)
			st.Reset()
			return
		}
		go func() {
			defer l.wg.Done()
			l.serveStream(sess.Context(), node, st)
		}()
	}
}

// acquire takes a slot of node's streams, or logs (once until the load
// falls under the limit again) and refuses.
func (l *Link) acquire(node string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	pl := l.handling[node]
	if pl == nil {
		pl = &peerLoad{}
		l.handling[node] = pl
	}
	if pl.n >= l.o.MaxStreamsPerPeer {
		if !pl.warned {
			pl.warned = true
			l.log.Warn("link: too many streams from a peer; resetting new ones", "peer", node, "max", l.o.MaxStreamsPerPeer)
		}
		return false
	}
	pl.n++
	return true
}

func (l *Link) release(node string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	pl := l.handling[node]
	pl.n--
	if pl.n == 0 {
		delete(l.handling, node)
	} else if pl.n < l.o.MaxStreamsPerPeer {
		pl.warned = false
	}
}

// serveStream reads the header of a stream node opened and hands it to
// Handle. It releases the stream's slot (taken by acquire) before the
// peer can see the stream end, so that the peer's next stream finds it
// free; and logs before that, so that whoever sees the end finds it
// logged.
func (l *Link) serveStream(ctx context.Context, node string, st transport.Stream) {
	st.SetReadDeadline(time.Now().Add(l.o.DialTimeout))
	h, err := ReadHeader(st)
	if err != nil {
		defer st.Reset()
		defer l.release(node)
		var ne net.Error
		switch {
		case errors.Is(err, ErrMalformedHeader):
			l.log.Warn("link: malformed stream header; stream reset", "peer", node, "err", err)
		case errors.As(err, &ne) && ne.Timeout():
			l.log.Warn("link: no stream header in time; stream reset", "peer", node, "timeout", l.o.DialTimeout)
		default:
			l.log.Debug("link: stream ended before its header", "peer", node, "err", err)
		}
		return
	}
	st.SetReadDeadline(time.Time{})
	l.o.Handle(ctx, node, h, st)
	l.release(node)
	st.Close()
}

// Open opens a stream to node for h and writes h on it. The stream rides
// the one session to node, dialled on first use, reused by every Open
// after it, and dialled again when it has ended or when the node's
// published address or key changed. Open waits at most DialTimeout for
// a dial and as long again for the stream, or until ctx ends.
func (l *Link) Open(ctx context.Context, node string, h Header) (transport.Stream, error) {
	hdr, err := AppendHeader(nil, h)
	if err != nil {
		return nil, fmt.Errorf("link: %w", err)
	}
	for attempt := 0; ; attempt++ {
		p, ok := l.o.Peer(node)
		if !ok || p.Cert == nil {
			return nil, &refusal{"link: no live member " + node, []error{ErrNoMember}}
		}
		sess, reused, err := l.session(ctx, node, p)
		if err != nil {
			return nil, err
		}
		st, err := l.openOn(ctx, sess, hdr)
		if err == nil {
			return st, nil
		}
		if !reused || attempt > 0 || ctx.Err() != nil {
			return nil, fmt.Errorf("link: open a stream to %s: %w", node, err)
		}
		// The session died before we knew: dial again, once.
		sess.Close()
	}
}

func (l *Link) openOn(ctx context.Context, sess *tlsmux.Session, hdr []byte) (transport.Stream, error) {
	ctx, cancel := context.WithTimeout(ctx, l.o.DialTimeout)
	defer cancel()
	st, err := sess.OpenStream(ctx)
	if err != nil {
		return nil, err
	}
	deadline, _ := ctx.Deadline()
	st.SetWriteDeadline(deadline)
	if _, err := st.Write(hdr); err != nil {
		st.Reset()
		return nil, fmt.Errorf("write header: %w", err)
	}
	st.SetWriteDeadline(time.Time{})
	return st, nil
}

// session returns the live session to p, dialling it unless there is one
// dialled for p's address and key (reused then says so).
func (l *Link) session(ctx context.Context, node string, p Peer) (sess *tlsmux.Session, reused bool, err error) {
	fp := identity.CertFingerprint(p.Cert)
	for range 3 {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return nil, false, fmt.Errorf("link: %w", ErrClosed)
		}
		e := l.out[node]
		created := false
		var old *outbound
		if e == nil || e.fp != fp || e.addr != p.Addr {
			old = e
			e = &outbound{ready: make(chan struct{}), addr: p.Addr, fp: fp}
			l.out[node] = e
			l.wg.Add(1)
			created = true
		}
		l.mu.Unlock()
		if old != nil {
			l.log.Info("link: peer's address or certificate changed; dialling again", "peer", node, "addr", p.Addr)
			select {
			case <-old.ready:
				if old.sess != nil {
					old.sess.CloseWithError(transport.CodeNone, "superseded")
				}
			default: // still dialling: its dial closes what it gets
			}
		}
		if created {
			go l.dial(node, p, e)
		}
		select {
		case <-e.ready:
		case <-ctx.Done():
			return nil, false, fmt.Errorf("link: dial %s: %w", node, ctx.Err())
		}
		if e.err != nil {
			if errors.Is(e.err, errSuperseded) {
				continue
			}
			return nil, false, e.err
		}
		if e.sess.Context().Err() == nil {
			return e.sess, !created, nil
		}
		l.mu.Lock()
		if l.out[node] == e {
			delete(l.out, node)
		}
		l.mu.Unlock()
	}
	return nil, false, fmt.Errorf("link: %s: its sessions keep ending as soon as they start", node)
}

var errSuperseded = errors.New("superseded")

// dial dials e, the session to node, and serves it.
func (l *Link) dial(node string, p Peer, e *outbound) {
	defer l.wg.Done()
	ctx, cancel := context.WithTimeout(l.ctx, l.o.DialTimeout)
	sess, err := l.dialPeer(ctx, p, e.fp)
	cancel()
	l.mu.Lock()
	switch {
	case err == nil && l.closed:
		err = fmt.Errorf("link: %w", ErrClosed)
	case err == nil && l.out[node] != e:
		err = errSuperseded
	case err == nil:
		l.sessions[sess] = node
		l.wg.Add(1)
	case l.out[node] == e:
		delete(l.out, node)
	}
	if err != nil && sess != nil {
		sess.Close()
		sess = nil
	}
	e.sess, e.err = sess, err
	l.mu.Unlock()
	close(e.ready)
	if err != nil {
		l.log.Debug("link: dial failed", "peer", node, "addr", p.Addr, "err", err)
		return
	}
	l.log.Debug("link: connected to peer", "peer", node, "addr", p.Addr)
	defer l.wg.Done()
	l.serveSession(sess, node)
}

// dialPeer connects to p, checks it presents the key it published (fp),
// and waits for it to accept this node.
func (l *Link) dialPeer(ctx context.Context, p Peer, fp string) (*tlsmux.Session, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", p.Addr)
	if err != nil {
		return nil, fmt.Errorf("link: dial %s at %s: %w", p.Node, p.Addr, err)
	}
	conf := l.clientTLS.Clone()
	unpublished := &refusal{fmt.Sprintf("link: peer %s at %s presented a certificate it did not publish", p.Node, p.Addr), []error{ErrUnpublishedCertificate}}
	conf.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 || identity.CertFingerprint(cs.PeerCertificates[0]) != fp {
			return unpublished
		}
		return nil
	}
	tc := tls.Client(batchconn.New(conn), conf)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		if errors.Is(err, ErrUnpublishedCertificate) {
			return nil, unpublished
		}
		return nil, fmt.Errorf("link: handshake with %s at %s: %w", p.Node, p.Addr, err)
	}
	if cs := tc.ConnectionState(); cs.NegotiatedProtocol != ALPN {
		conn.Close()
		return nil, fmt.Errorf("link: %s at %s does not speak %s", p.Node, p.Addr, ALPN)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	var b [1]byte
	_, err = tc.Read(b[:])
	if !stop() {
		err = ctx.Err()
	}
	if err == nil && b[0] != accepted {
		err = fmt.Errorf("unexpected byte %#x", b[0])
	}
	if err != nil {
		conn.Close()
		return nil, &refusal{fmt.Sprintf("link: %s at %s did not accept this node: %v", p.Node, p.Addr, err), []error{ErrRefused, err}}
	}
	return tlsmux.New(tc, tc.ConnectionState(), true, l.o.Transport)
}

// Sessions reports, for each peer with a live session (either way), the
// streams open on its sessions.
func (l *Link) Sessions() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := make(map[string]int, len(l.sessions))
	for sess, node := range l.sessions {
		m[node] += sess.NumStreams()
	}
	return m
}

// Close stops serving, ends every session and stream, and waits for the
// link's goroutines (Handle calls included) to return. It returns nil.
func (l *Link) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		l.wg.Wait()
		return nil
	}
	l.closed = true
	lns := make([]net.Listener, 0, len(l.listeners))
	for ln := range l.listeners {
		lns = append(lns, ln)
	}
	sessions := make([]*tlsmux.Session, 0, len(l.sessions))
	for sess := range l.sessions {
		sessions = append(sessions, sess)
	}
	l.mu.Unlock()
	l.stop()
	for _, ln := range lns {
		ln.Close()
	}
	for _, sess := range sessions {
		sess.CloseWithError(transport.CodeShuttingDown, "node closing")
	}
	l.wg.Wait()
	return nil
}
