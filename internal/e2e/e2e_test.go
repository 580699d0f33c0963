package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"

	"go.uber.org/goleak"

	"github.com/diglett/diglett"

	"github.com/diglett/diglett/auth/tokens"
	"github.com/diglett/diglett/internal/cli"
	"github.com/diglett/diglett/internal/identity"
	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/tlsmux"
)

// TestDataIntegrity sends random data through the tunnel to an echo
// backend and checks every byte that comes back, on one connection and on
// many at once through one agent.
func TestDataIntegrity(t *testing.T) {
	tests := []struct {
		name  string
		conns int
		size  int // bytes each way per connection
	}{
		{"one connection", 1, 16 << 20},
		{"100 concurrent connections", 100, 4 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			g := startGateway(t, gatewayOptions{})
			ln := mustListen(t, agentConfig(t, g, "data"))
			forward(t, ln, startEcho(t))
			addr := ln.Addr().String()

			data := make([]byte, tt.size)
			mrand.NewChaCha8([32]byte{1}).Read(data)
			start := time.Now()
			errs := make(chan error, tt.conns)
			for i := range tt.conns {
				// Each connection sends the data rotated differently, so
				// that crossed streams cannot go unnoticed.
				go func() { errs <- transfer(addr, i, data, i*7919%tt.size) }()
			}
			for range tt.conns {
				if err := <-errs; err != nil {
					t.Error(err)
				}
			}
			t.Logf("%d × %d MiB each way in %v", tt.conns, tt.size>>20, time.Since(start))
		})
	}
}

// transfer sends data rotated by off through visitor connection id to an
// echo backend, half-closes, and checks the length and SHA-256 of what
// comes back.
func transfer(addr string, id int, data []byte, off int) error {
	c, err := net.DialTimeout("tcp", addr, promptly)
	if err != nil {
		return fmt.Errorf("connection %d: %w", id, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	want := sha256.New()
	want.Write(data[off:])
	want.Write(data[:off])

	werr := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, io.MultiReader(bytes.NewReader(data[off:]), bytes.NewReader(data[:off])))
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got := sha256.New()
	n, err := io.Copy(got, c)
	if err != nil {
		return fmt.Errorf("connection %d: read after %d bytes: %w", id, n, err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("connection %d: write: %w", id, err)
	}
	if n != int64(len(data)) {
		return fmt.Errorf("connection %d: got %d bytes back, sent %d", id, n, len(data))
	}
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		return fmt.Errorf("connection %d: the %d bytes that came back differ from those sent", id, n)
	}
	return nil
}

// TestHalfClose checks that EOF crosses the tunnel in each direction on
// its own while the other direction keeps carrying data.
func TestHalfClose(t *testing.T) {
	checkLeaks(t)
	g := startGateway(t, gatewayOptions{})
	request := make([]byte, 1<<20)
	mrand.NewChaCha8([32]byte{2}).Read(request)
	reply := bytes.Repeat([]byte("the backend is still talking after EOF\n"), 8<<10)

	t.Run("visitor closes first", func(t *testing.T) {
		sawEOF := make(chan int64, 1)
		backend := startBackend(t, func(c *net.TCPConn) {
			h := sha256.New()
			n, err := io.Copy(h, c)
			if err != nil {
				return
			}
			sawEOF <- n
			// Only now, after the visitor's EOF, does the backend answer.
			fmt.Fprintf(c, "%d %x\n", n, h.Sum(nil))
			c.Write(reply)
			c.CloseWrite()
		})
		ln := mustListen(t, agentConfig(t, g, "visitor-first"))
		forward(t, ln, backend)

		c := dialVisitor(t, ln.Addr().String())
		c.SetDeadline(time.Now().Add(eventually))
		if _, err := c.Write(request); err != nil {
			t.Fatal(err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		select {
		case n := <-sawEOF:
			if n != int64(len(request)) {
				t.Fatalf("backend got %d bytes before EOF, visitor sent %d", n, len(request))
			}
		case <-time.After(promptly):
			t.Fatal("the backend never saw the visitor's EOF")
		}
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("visitor read after %d bytes: %v", len(got), err)
		}
		sum := sha256.Sum256(request)
		want := append([]byte(fmt.Sprintf("%d %x\n", len(request), sum)), reply...)
		if !bytes.Equal(got, want) {
			t.Fatalf("visitor got %d bytes of reply, want %d (first line %q)", len(got), len(want), firstLine(got))
		}
	})

	t.Run("backend closes first", func(t *testing.T) {
		received := make(chan []byte, 1)
		backend := startBackend(t, func(c *net.TCPConn) {
			if _, err := c.Write(reply); err != nil {
				return
			}
			c.CloseWrite()
			h := sha256.New()
			if _, err := io.Copy(h, c); err == nil {
				received <- h.Sum(nil)
			}
		})
		ln := mustListen(t, agentConfig(t, g, "backend-first"))
		forward(t, ln, backend)

		c := dialVisitor(t, ln.Addr().String())
		c.SetDeadline(time.Now().Add(eventually))
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("visitor read after %d bytes: %v", len(got), err)
		}
		if !bytes.Equal(got, reply) {
			t.Fatalf("visitor got %d bytes before EOF, backend sent %d", len(got), len(reply))
		}
		// After the backend's EOF the visitor still talks, and is heard.
		if _, err := c.Write(request); err != nil {
			t.Fatalf("visitor write after EOF: %v", err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		select {
		case sum := <-received:
			if want := sha256.Sum256(request); !bytes.Equal(sum, want[:]) {
				t.Fatal("the backend received other bytes than the visitor sent after EOF")
			}
		case <-time.After(eventually):
			t.Fatal("the backend never got the visitor's data and EOF")
		}
	})
}

func firstLine(b []byte) []byte {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	return line[:min(len(line), 100)]
}

// TestBackendDown runs the agent command with its backend down: a visitor
// is turned away at once, the agent says why, and the next visitor gets
// through once the backend is up.
func TestBackendDown(t *testing.T) {
	checkLeaks(t)
	g := startGateway(t, gatewayOptions{})
	backend := unusedAddr(t)
	a := startAgentCommand(t, "-g", g.Addr, "-n", "down", "--known-gateways", filepath.Join(t.TempDir(), "known_gateways"), backend)
	public := a.tunnel(t, "down")

	start := time.Now()
	expectTurnedAway(t, public)
	t.Logf("visitor turned away after %v", time.Since(start))
	waitFor(t, "agent log", &a.stderr, "backend refused")
	if !strings.Contains(a.stderr.String(), backend) {
		t.Errorf("agent log does not name the backend %s:\n%s", backend, &a.stderr)
	}

	// Bring the backend up on that address: the tunnel was never broken.
	bl, err := net.Listen("tcp", backend)
	if err != nil {
		t.Fatal(err)
	}
	serveEcho(t, bl)
	mustRoundTrip(t, public, "backend is back")
}

// TestSlowBackend checks that a connection served by the agent command
// stays up however long its first answer takes: the gateway's wait for the
// agent's status bounds reaching the backend, not the backend's replies.
func TestSlowBackend(t *testing.T) {
	parallel(t)
	const statusTimeout = time.Second
	const late = 2*statusTimeout + statusTimeout/2
	g := startGateway(t, gatewayOptions{StatusTimeout: statusTimeout})
	backend := startBackend(t, func(c *net.TCPConn) {
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return
		}
		if line == "slow question\n" {
			time.Sleep(late)
		}
		io.WriteString(c, "answer to "+line)
	})
	a := startAgentCommand(t, "-g", g.Addr, "-n", "slow", "--known-gateways", filepath.Join(t.TempDir(), "known_gateways"), backend)
	public := a.tunnel(t, "slow")

	tests := []struct {
		name     string
		pause    time.Duration // before the visitor speaks
		question string
	}{
		{"backend answers late", 0, "slow question\n"},
		{"visitor speaks late", late, "question\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialVisitor(t, public)
			c.SetDeadline(time.Now().Add(late + eventually))
			time.Sleep(tt.pause)
			if _, err := io.WriteString(c, tt.question); err != nil {
				t.Fatal(err)
			}
			got, err := bufio.NewReader(c).ReadString('\n')
			if want := "answer to " + tt.question; got != want {
				t.Fatalf("visitor got %q (%v), want %q", got, err, want)
			}
		})
	}
}

// TestWrongToken checks that a refused token stops the agent at once, as a
// fatal error, from the library and from the command line.
func TestWrongToken(t *testing.T) {
	checkLeaks(t)
	tokens, err := tokens.New([]tokens.Entry{{Token: "right-token", Names: []string{"app"}}})
	if err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, gatewayOptions{Auth: tokens})

	for _, token := range []string{"wrong-token", ""} {
		t.Run(fmt.Sprintf("token %q", token), func(t *testing.T) {
			cfg := agentConfig(t, g, "app")
			cfg.Token = token
			start := time.Now()
			ln, err := listen(t, cfg)
			if err == nil {
				ln.Close()
				t.Fatal("listen succeeded with a wrong token")
			}
			if d := time.Since(start); d > atOnce {
				t.Errorf("listen took %v to give up: it must not retry a refused token", d)
			}
			if !errors.Is(err, diglett.ErrUnauthorized) || !diglett.IsFatal(err) {
				t.Errorf("err = %v, want a fatal ErrUnauthorized", err)
			}
		})
	}

	t.Run("right token", func(t *testing.T) {
		cfg := agentConfig(t, g, "app")
		cfg.Token = "right-token"
		ln := mustListen(t, cfg)
		forward(t, ln, startEcho(t))
		mustRoundTrip(t, ln.Addr().String(), "authorized")
	})

	t.Run("command line", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		var stdout, stderr testutil.Buffer
		start := time.Now()
		err := cli.Agent(ctx, []string{"-g", g.Addr, "-n", "app", "-t", "wrong-token",
			"--known-gateways", filepath.Join(t.TempDir(), "known_gateways"), "127.0.0.1:9"}, &stdout, &stderr)
		if err == nil {
			t.Fatal("the agent command accepted a wrong token")
		}
		if d := time.Since(start); d > atOnce {
			t.Errorf("the agent command took %v to give up", d)
		}
		if !strings.Contains(err.Error(), "login refused by the gateway: unknown token") {
			t.Errorf("error %q does not say the token was refused", err)
		}
		if stdout.String() != "" {
			t.Errorf("the agent command printed tunnels it does not have:\n%s", &stdout)
		}
	})
}

// TestNameRefused checks that a name the token may not publish is refused
// as a fatal error naming it.
func TestNameRefused(t *testing.T) {
	checkLeaks(t)
	tokens, err := tokens.New([]tokens.Entry{{Token: "tok", Names: []string{"app-*"}}})
	if err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, gatewayOptions{Auth: tokens})
	tests := []struct {
		name    string
		names   []string
		refused string // "" when all are allowed
	}{
		{"name outside the patterns", []string{"other"}, "other"},
		{"refused second name", []string{"app-one", "secret"}, "secret"},
		{"allowed names", []string{"app-one", "app-two"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := agentConfig(t, g, tt.names[0])
			cfg.Names = tt.names[1:]
			cfg.Token = "tok"
			ln, err := listen(t, cfg)
			if tt.refused == "" {
				if err != nil {
					t.Fatalf("listen: %v", err)
				}
				ln.Close()
				return
			}
			if err == nil {
				ln.Close()
				t.Fatalf("names %q were all accepted", tt.names)
			}
			if !errors.Is(err, diglett.ErrNameRefused) || !diglett.IsFatal(err) {
				t.Errorf("err = %v, want a fatal ErrNameRefused", err)
			}
			if !strings.Contains(err.Error(), strconv.Quote(tt.refused)) {
				t.Errorf("error %q does not name %q", err, tt.refused)
			}
		})
	}
}

// TestVersionMismatch checks both sides of a protocol version mismatch.
func TestVersionMismatch(t *testing.T) {
	parallel(t)

	t.Run("gateway refuses a newer agent", func(t *testing.T) {
		g := startGateway(t, gatewayOptions{})
		sess := rawSession(t, g.Addr)
		st, err := sess.OpenStream(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		st.SetDeadline(time.Now().Add(promptly))
		if err := protocol.WriteMessage(st, &protocol.Hello{Version: 99, Software: "diglett-future"}); err != nil {
			t.Fatal(err)
		}
		m, err := protocol.ReadMessage(st)
		if err != nil {
			t.Fatalf("read reply to hello: %v", err)
		}
		e, ok := m.(*protocol.Error)
		if !ok || e.Code != protocol.CodeVersion {
			t.Fatalf("reply to hello version 99 = %#v, want an Error with code %q", m, protocol.CodeVersion)
		}
		for _, want := range []string{"version 99", fmt.Sprintf("version %d", protocol.Version)} {
			if !strings.Contains(e.Message, want) {
				t.Errorf("message %q does not say %q", e.Message, want)
			}
		}
		if _, err := protocol.ReadMessage(st); err == nil || isTimeout(err) {
			t.Errorf("gateway kept the control stream open after refusing the version (read: %v)", err)
		}
		expectSessionEnd(t, sess, promptly)
	})

	tests := []struct {
		name  string
		reply protocol.Message
	}{
		{"gateway answers with a newer hello", &protocol.Hello{Version: 2, Software: "diglett-server-future"}},
		{"gateway refuses the agent's version", &protocol.Error{Code: protocol.CodeVersion,
			Message: "gateway speaks protocol version 2, agent speaks version 1: use an agent of the same release as the gateway"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, hello := fakeGateway(t, tt.reply)
			cfg := diglett.Config{Gateway: addr, Name: "app", KnownGateways: filepath.Join(t.TempDir(), "known_gateways"), Logger: slog.New(slog.DiscardHandler)}
			ln, err := listen(t, cfg)
			if err == nil {
				ln.Close()
				t.Fatal("the agent accepted a gateway of another version")
			}
			if !errors.Is(err, diglett.ErrVersionMismatch) || !diglett.IsFatal(err) {
				t.Errorf("err = %v, want a fatal ErrVersionMismatch", err)
			}
			if !strings.Contains(err.Error(), "version 2") {
				t.Errorf("error %q does not name the gateway's version", err)
			}
			if h := <-hello; h == nil || h.Version != protocol.Version {
				t.Errorf("the agent's hello was %#v, want version %d", h, protocol.Version)
			}
		})
	}
}

// fakeGateway accepts one agent, reads its hello, answers with reply and
// waits for the agent to hang up. The hello it got (nil if none) arrives on
// the returned channel.
func fakeGateway(t *testing.T, reply protocol.Message) (string, <-chan *protocol.Hello) {
	t.Helper()
	cert, err := identity.SelfSigned(newKey(t), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{protocol.ALPN}, MinVersion: tls.VersionTLS13}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	hello := make(chan *protocol.Hello, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var got *protocol.Hello
		defer func() { hello <- got }()
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		sess, err := tlsmux.Server(ctx, conn, tc, transport.Config{})
		if err != nil {
			return
		}
		defer sess.Close()
		st, err := sess.AcceptStream(ctx)
		if err != nil {
			return
		}
		m, err := protocol.ReadMessage(st)
		if err != nil {
			return
		}
		got, _ = m.(*protocol.Hello)
		protocol.WriteMessage(st, reply)
		select {
		case <-sess.Context().Done():
		case <-ctx.Done():
		}
	}()
	t.Cleanup(func() {
		cancel()
		ln.Close()
		<-done
	})
	return ln.Addr().String(), hello
}

// conversation keeps one visitor connection busy with echo round trips
// through a tunnel, to show that other traffic leaves it alone.
type conversation struct {
	rounds atomic.Int64
	stop   chan struct{}
	done   chan error
}

func startConversation(t *testing.T, addr string) *conversation {
	c, err := net.DialTimeout("tcp", addr, promptly)
	if err != nil {
		t.Fatal(err)
	}
	cv := &conversation{stop: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		defer c.Close()
		msg := make([]byte, 16<<10)
		got := make([]byte, len(msg))
		rng := mrand.NewChaCha8([32]byte{3})
		for {
			select {
			case <-cv.stop:
				cv.done <- nil
				return
			default:
			}
			rng.Read(msg)
			c.SetDeadline(time.Now().Add(eventually))
			if _, err := c.Write(msg); err != nil {
				cv.done <- fmt.Errorf("round %d: write: %w", cv.rounds.Load(), err)
				return
			}
			if _, err := io.ReadFull(c, got); err != nil {
				cv.done <- fmt.Errorf("round %d: read: %w", cv.rounds.Load(), err)
				return
			}
			if !bytes.Equal(got, msg) {
				cv.done <- fmt.Errorf("round %d: echo differs", cv.rounds.Load())
				return
			}
			cv.rounds.Add(1)
		}
	}()
	return cv
}

// check fails t if the conversation broke or does not move on.
func (cv *conversation) check(t *testing.T) {
	t.Helper()
	start := cv.rounds.Load()
	deadline := time.Now().Add(eventually)
	for cv.rounds.Load() < start+3 {
		select {
		case err := <-cv.done:
			cv.done <- err
			t.Fatalf("the live tunnel broke: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the live tunnel stalled at round %d", cv.rounds.Load())
		}
	}
}

func (cv *conversation) end(t *testing.T) {
	t.Helper()
	close(cv.stop)
	if err := <-cv.done; err != nil {
		t.Errorf("the live tunnel broke: %v", err)
	}
	t.Logf("the live tunnel made %d round trips", cv.rounds.Load())
}

// TestGarbageHandshake sends the gateway's agent port all kinds of
// rubbish while an agent's tunnel carries data: each garbage connection
// is dropped within the handshake timeout, the tunnel never notices, and
// nothing of the garbage stays behind.
func TestGarbageHandshake(t *testing.T) {
	checkLeaks(t)
	const handshake = 2 * time.Second
	// The flood round opens 52 connections at once from this one address:
	// more than the default share of handshake slots per source.
	g := startGateway(t, gatewayOptions{HandshakeTimeout: handshake, MaxHandshakesPerSource: 64})
	ln := mustListen(t, agentConfig(t, g, "live"))
	forward(t, ln, startEcho(t))
	public := ln.Addr().String()
	cv := startConversation(t, public)
	cv.check(t)
	baseline := goleak.IgnoreCurrent()
	// The sockets the gateway holds on its agent port: the live agent's
	// session, and any garbage connection not dropped yet, parked or not.
	_, agentPort, err := net.SplitHostPort(g.Addr)
	if err != nil {
		t.Fatal(err)
	}
	gwPort, _ := strconv.Atoi(agentPort)
	socketsBefore, haveSockets := socketsOnPort(t, gwPort)
	if !haveSockets && os.Getenv("CI") == "true" {
		t.Fatal("/proc/self/fd is not readable: cannot count the gateway's sockets")
	}

	noise := make([]byte, 64<<10)
	mrand.NewChaCha8([32]byte{4}).Read(noise)
	tcp := func(t *testing.T) net.Conn {
		c, err := net.DialTimeout("tcp", g.Addr, promptly)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	tlsConn := func(t *testing.T, alpn ...string) (*tls.Conn, error) {
		conf := rawTLSConfig()
		conf.NextProtos = alpn
		c := tls.Client(tcp(t), conf)
		ctx, cancel := context.WithTimeout(t.Context(), promptly)
		defer cancel()
		return c, c.HandshakeContext(ctx)
	}
	// control opens what an agent opens first, for garbage inside the
	// protocol.
	control := func(t *testing.T) (*tlsmux.Session, net.Conn) {
		sess := rawSession(t, g.Addr)
		st, err := sess.OpenStream(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		st.SetDeadline(time.Now().Add(handshake + promptly))
		return sess, st
	}
	login := func(t *testing.T, st net.Conn) {
		if err := protocol.WriteMessage(st, &protocol.Hello{Version: protocol.Version}); err != nil {
			t.Fatal(err)
		}
		if m, err := protocol.ReadMessage(st); err != nil || m.Type() != protocol.TypeHello {
			t.Fatalf("reply to hello: %v %v", m, err)
		}
		if err := protocol.WriteMessage(st, &protocol.Login{}); err != nil {
			t.Fatal(err)
		}
		if m, err := protocol.ReadMessage(st); err != nil || m.Type() != protocol.TypeLoginOK {
			t.Fatalf("reply to login: %v %v", m, err)
		}
	}
	// refusedWith reads the gateway's answer to garbage on the control
	// stream: an Error with code, then the end of the session.
	refusedWith := func(t *testing.T, sess *tlsmux.Session, st net.Conn, code protocol.Code) {
		m, err := protocol.ReadMessage(st)
		if err != nil {
			t.Fatalf("no error message from the gateway: %v", err)
		}
		if e, ok := m.(*protocol.Error); !ok || e.Code != code {
			t.Fatalf("gateway answered %#v, want an error with code %q", m, code)
		}
		expectSessionEnd(t, sess, promptly)
	}
	// dropped waits for the gateway to end the session, perhaps after an
	// error message.
	dropped := func(t *testing.T, sess *tlsmux.Session, st net.Conn) {
		for {
			m, err := protocol.ReadMessage(st)
			if isTimeout(err) {
				t.Fatal("control stream still open")
			}
			if err != nil {
				break
			}
			if _, ok := m.(*protocol.Error); !ok {
				t.Fatalf("gateway answered garbage with %#v", m)
			}
		}
		expectSessionEnd(t, sess, promptly)
	}

	tests := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"random bytes", func(t *testing.T) {
			c := tcp(t)
			c.Write(noise)
			expectClosed(t, c, handshake+promptly)
		}},
		{"http request", func(t *testing.T) {
			c := tcp(t)
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: gateway\r\nConnection: keep-alive\r\n\r\n")
			expectClosed(t, c, handshake+promptly)
		}},
		{"silent tcp connection", func(t *testing.T) {
			expectClosed(t, tcp(t), handshake+promptly)
		}},
		{"tls for another protocol", func(t *testing.T) {
			c, err := tlsConn(t, "h2", "http/1.1")
			if err == nil {
				t.Fatalf("gateway accepted ALPN %q", c.ConnectionState().NegotiatedProtocol)
			}
			expectClosed(t, c.NetConn(), handshake+promptly)
		}},
		{"tls then random bytes", func(t *testing.T) {
			c, err := tlsConn(t, protocol.ALPN)
			if err != nil {
				t.Fatal(err)
			}
			c.Write(noise)
			expectClosed(t, c, handshake+promptly)
		}},
		{"tls then silence", func(t *testing.T) {
			c, err := tlsConn(t, protocol.ALPN)
			if err != nil {
				t.Fatal(err)
			}
			expectClosed(t, c, handshake+promptly)
		}},
		{"unknown message type", func(t *testing.T) {
			sess, st := control(t)
			st.Write([]byte{0xee, 0, 2, '{', '}'})
			dropped(t, sess, st)
		}},
		{"oversized frame length", func(t *testing.T) {
			sess, st := control(t)
			st.Write(append([]byte{byte(protocol.TypeHello), 0xff, 0xff}, noise[:1024]...))
			dropped(t, sess, st)
		}},
		{"hello that is not json", func(t *testing.T) {
			sess, st := control(t)
			st.Write([]byte{byte(protocol.TypeHello), 0, 8, 'n', 'o', 't', ' ', 'j', 's', 'o', 'n'})
			dropped(t, sess, st)
		}},
		{"truncated hello then silence", func(t *testing.T) {
			sess, st := control(t)
			st.Write([]byte{byte(protocol.TypeHello), 0, 100, '{', '"'})
			dropped(t, sess, st)
		}},
		{"login before hello", func(t *testing.T) {
			sess, st := control(t)
			protocol.WriteMessage(st, &protocol.Login{Token: "x"})
			refusedWith(t, sess, st, protocol.CodeBadRequest)
		}},
		{"oversized frame after login", func(t *testing.T) {
			sess, st := control(t)
			login(t, st)
			st.Write(append([]byte{byte(protocol.TypeRegister), 0xff, 0xff}, noise[:1024]...))
			refusedWith(t, sess, st, protocol.CodeBadRequest)
		}},
		{"hello again after login", func(t *testing.T) {
			sess, st := control(t)
			login(t, st)
			protocol.WriteMessage(st, &protocol.Hello{Version: protocol.Version})
			refusedWith(t, sess, st, protocol.CodeBadRequest)
		}},
	}
	// The cases run side by side, once and then several times over: each
	// waits for the gateway to drop it, and the tunnel must go on meanwhile.
	for _, round := range []struct {
		name   string
		copies int
	}{{"each", 1}, {"flood", 4}} {
		t.Run(round.name, func(t *testing.T) {
			// Registered first, so it runs after the cases' own cleanups.
			// The live tunnel's session parks whenever the conversation
			// pauses, and the goroutine that resumes it is a new one:
			// woken receive loops are not counted as leaks. Every
			// session's socket is, parked or awake.
			t.Cleanup(func() {
				verifyNoLeaks(t, baseline, goleak.IgnoreAnyFunction("github.com/diglett/diglett/internal/transport/mux.(*Session).wake"))
				if !haveSockets {
					return
				}
				if err := testutil.Poll(eventually, func() error {
					if n, _ := socketsOnPort(t, gwPort); n != socketsBefore {
						return fmt.Errorf("the gateway holds %d connections on its agent port, %d before the round", n, socketsBefore)
					}
					return nil
				}); err != nil {
					t.Error(err)
				}
			})
			var wg sync.WaitGroup
			for range round.copies {
				for _, tt := range tests {
					wg.Go(func() { t.Run(tt.name, tt.run) })
				}
			}
			wg.Wait()
			cv.check(t)
			mustRoundTrip(t, public, "after "+round.name)
		})
	}
	cv.end(t)
}

// TestGatewayRestart replaces the gateway by a new one with the same key
// on the same address: the agent reconnects on its own, keeps its
// Listener, and gets its public port back.
func TestGatewayRestart(t *testing.T) {
	checkLeaks(t)
	g1 := startGateway(t, gatewayOptions{})
	cfg := agentConfig(t, g1, "comeback")
	ln := mustListen(t, cfg)
	forward(t, ln, startEcho(t))
	public := ln.Addr().String()
	mustRoundTrip(t, public, "before the restart")

	g1.Close()
	g2 := startGateway(t, gatewayOptions{Key: g1.Key, Addr: g1.Addr, PortMin: g1.PortMin, PortMax: g1.PortMax})
	if err := testutil.Poll(eventually, func() error { return roundTrip(public, "after the restart") }); err != nil {
		t.Fatalf("no visitor got through the new gateway: %v", err)
	}
	if got := ln.Addr().String(); got != public {
		t.Errorf("public address changed from %s to %s", public, got)
	}
	if err := ln.Err(); err != nil {
		t.Errorf("listener stopped: %v", err)
	}
	if !strings.Contains(g2.Logs.String(), "agent logged in") {
		t.Errorf("the new gateway never saw the agent log in:\n%s", g2.Logs)
	}
}

// TestLease kills an agent's connection: its name and port stay with its
// identity for the lease, another identity cannot take them meanwhile, and
// can once the lease is over.
func TestLease(t *testing.T) {
	checkLeaks(t)
	tokens, err := tokens.New([]tokens.Entry{
		{Token: "alice-token", Identity: "alice", Names: []string{"shared"}},
		{Token: "bob-token", Identity: "bob", Names: []string{"shared"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	const lease = 3 * time.Second
	g := startGateway(t, gatewayOptions{Auth: tokens, Lease: lease})
	echo := startEcho(t)

	// Alice reaches the gateway through a link that will die.
	link := startProxy(t, g.Addr)
	alice := agentConfig(t, g, "shared")
	alice.Token = "alice-token"
	alice.Gateway = link.Addr()
	ln1 := mustListen(t, alice)
	forward(t, ln1, echo)
	public := ln1.Addr().String()
	mustRoundTrip(t, public, "alice")

	link.Kill()
	waitFor(t, "gateway", g.Logs, "agent offline, name and port leased")
	// Nobody serves the port meanwhile: visitors are turned away at once.
	expectTurnedAway(t, public)

	// Alice comes back from elsewhere and gets the same port.
	alice.Gateway = g.Addr
	ln2 := mustListen(t, alice)
	forward(t, ln2, echo)
	if got := ln2.Addr().String(); got != public {
		t.Fatalf("alice came back to %s, had %s", got, public)
	}
	mustRoundTrip(t, public, "alice again")
	ln2.Close()
	waitForN(t, "gateway", g.Logs, "agent offline, name and port leased", 2)

	bob := agentConfig(t, g, "shared")
	bob.Token = "bob-token"
	_, err = listen(t, bob)
	if !errors.Is(err, diglett.ErrNameTaken) {
		t.Fatalf("bob during alice's lease: err = %v, want ErrNameTaken", err)
	}
	if diglett.IsFatal(err) || !strings.Contains(err.Error(), `"shared"`) {
		t.Errorf("ErrNameTaken must be retryable and name the name: %v", err)
	}

	var ln3 *diglett.Listener
	err = testutil.Poll(lease+eventually, func() (err error) {
		ln3, err = listen(t, bob)
		return err
	})
	if err != nil {
		t.Fatalf("bob after alice's lease: %v", err)
	}
	forward(t, ln3, echo)
	mustRoundTrip(t, ln3.Addr().String(), "bob")
}

// TestGatewayKeyChanged puts a gateway with another key at a pinned
// gateway's address: agents refuse it with both fingerprints in the
// message, unless told the new fingerprint.
func TestGatewayKeyChanged(t *testing.T) {
	checkLeaks(t)
	g1 := startGateway(t, gatewayOptions{})
	cfg := agentConfig(t, g1, "pinned")
	ln := mustListen(t, cfg)
	forward(t, ln, startEcho(t))
	mustRoundTrip(t, ln.Addr().String(), "genuine")

	g1.Close()
	g2 := startGateway(t, gatewayOptions{Addr: g1.Addr, PortMin: g1.PortMin, PortMax: g1.PortMax})

	// The running agent tries to reconnect, is refused, and stops.
	select {
	case <-ln.Done():
	case <-time.After(eventually):
		t.Fatal("the agent kept going with a gateway of another key")
	}
	if err := ln.Err(); !errors.Is(err, diglett.ErrGatewayKeyMismatch) {
		t.Errorf("listener stopped with %v, want ErrGatewayKeyMismatch", err)
	}
	if _, err := ln.Accept(); !errors.Is(err, diglett.ErrGatewayKeyMismatch) {
		t.Errorf("Accept returned %v, want ErrGatewayKeyMismatch", err)
	}

	tests := []struct {
		name        string
		fingerprint string
		wantErr     error
	}{
		{"pinned key", "", diglett.ErrGatewayKeyMismatch},
		{"configured fingerprint of the old key", g1.Fingerprint, diglett.ErrGatewayKeyMismatch},
		{"configured fingerprint of the new key", g2.Fingerprint, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := cfg
			c.Fingerprint = tt.fingerprint
			ln, err := listen(t, c)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("listen: %v", err)
				}
				forward(t, ln, startEcho(t))
				mustRoundTrip(t, ln.Addr().String(), "new key")
				return
			}
			if !errors.Is(err, tt.wantErr) || !diglett.IsFatal(err) {
				t.Fatalf("err = %v, want a fatal %v", err, tt.wantErr)
			}
			for _, fp := range []string{g1.Fingerprint, g2.Fingerprint} {
				if !strings.Contains(err.Error(), fp) {
					t.Errorf("error does not show fingerprint %s:\n%v", fp, err)
				}
			}
		})
	}
}

// TestMultipleNames registers several names on one connection: each gets
// its own port and Conn tells its visitors apart.
func TestMultipleNames(t *testing.T) {
	checkLeaks(t)
	g := startGateway(t, gatewayOptions{})
	cfg := agentConfig(t, g, "alpha")
	cfg.Names = []string{"beta", "gamma"}
	ln := mustListen(t, cfg)

	// The app behind the listener says which name and address the visitor
	// reached, and where it came from.
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			vc := c.(*diglett.Conn)
			fmt.Fprintf(vc, "%s %s %s", vc.Name(), vc.LocalAddr(), vc.RemoteAddr())
			vc.Close()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})

	tunnels := ln.Tunnels()
	if len(tunnels) != 3 {
		t.Fatalf("got %d tunnels, want 3: %v", len(tunnels), tunnels)
	}
	if ln.Addr().String() != tunnels[0].Addr.String() {
		t.Errorf("Addr() = %s, want the address of the first name, %s", ln.Addr(), tunnels[0].Addr)
	}
	ports := make(map[int]string)
	for i, want := range []string{"alpha", "beta", "gamma"} {
		tn := tunnels[i]
		if tn.Name != want {
			t.Errorf("tunnel %d is %q, want %q", i, tn.Name, want)
		}
		if other, dup := ports[tn.Addr.Port]; dup {
			t.Errorf("%s and %s share port %d", other, tn.Name, tn.Addr.Port)
		}
		ports[tn.Addr.Port] = tn.Name
		if tn.URL() != "tcp://"+tn.Addr.String() {
			t.Errorf("URL() = %q", tn.URL())
		}

		c := dialVisitor(t, tn.Addr.String())
		c.SetDeadline(time.Now().Add(eventually))
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("%s %s %s", tn.Name, tn.Addr, c.LocalAddr()); string(got) != want {
			t.Errorf("visitor of %s heard %q, want %q", tn.Name, got, want)
		}
	}
}

// TestRequestedPort asks for specific public ports.
func TestRequestedPort(t *testing.T) {
	checkLeaks(t)
	g := startGateway(t, gatewayOptions{})
	echo := startEcho(t)
	free := freePorts(t, g.PortMin, g.PortMax, 3)
	// One port of the range is held by another tunnel, one by another
	// program.
	first := agentConfig(t, g, "first")
	first.Port = free[1]
	forward(t, mustListen(t, first), echo)
	held, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(free[2])))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	tests := []struct {
		name    string
		tunnel  string
		port    int
		wantErr string // "" for success, else a part of the message
	}{
		{"free port in range", "wanted", free[0], ""},
		{"below the range", "low", g.PortMin - 1, fmt.Sprintf("port %d is outside the gateway's range", g.PortMin-1)},
		{"above the range", "high", g.PortMax + 1, fmt.Sprintf("port %d is outside the gateway's range", g.PortMax+1)},
		{"taken by another tunnel", "second", free[1], fmt.Sprintf("port %d is in use", free[1])},
		{"held by another program", "blocked", free[2], fmt.Sprintf("port %d is not available", free[2])},
		{"other port for a registered name", "first", free[0], fmt.Sprintf(`name "first" already has port %d`, free[1])},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := agentConfig(t, g, tt.tunnel)
			cfg.Port = tt.port
			ln, err := listen(t, cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("listen: %v", err)
				}
				if got := ln.Addr().(diglett.Addr).Port; got != tt.port {
					t.Fatalf("got port %d, asked for %d", got, tt.port)
				}
				forward(t, ln, echo)
				mustRoundTrip(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(tt.port)), "requested port")
				return
			}
			if !errors.Is(err, diglett.ErrPortUnavailable) {
				t.Fatalf("err = %v, want ErrPortUnavailable", err)
			}
			if diglett.IsFatal(err) {
				t.Errorf("ErrPortUnavailable must be retryable: %v", err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not say %q", err, tt.wantErr)
			}
		})
	}
}

// freePorts finds n ports of lo-hi that nothing listens on now.
func freePorts(t *testing.T, lo, hi, n int) []int {
	t.Helper()
	var ports []int
	for p := lo; p <= hi && len(ports) < n; p++ {
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		ln.Close()
		ports = append(ports, p)
	}
	if len(ports) < n {
		t.Fatalf("only %d free ports in %d-%d", len(ports), lo, hi)
	}
	return ports
}

// TestCommandLine runs both command lines, as a user would: the gateway
// prints its address and key, the agent pins it with --fingerprint, prints
// its tunnel, and visitors reach the backend.
func TestCommandLine(t *testing.T) {
	checkLeaks(t)
	lo, hi := randomPortWindow()
	srv := startServerCommand(t, "-l", "127.0.0.1:0", "--data-dir", t.TempDir(),
		"--ports", fmt.Sprintf("%d-%d", lo, hi), "--public-bind", "127.0.0.1",
		"--lease", "2s", "--keepalive", "3s")
	gatewayAddr, fp := srv.Addr, srv.Fingerprint

	backend := startEcho(t)
	a := startAgentCommand(t, "-g", gatewayAddr, "-n", "example", "--fingerprint", fp,
		"--known-gateways", filepath.Join(t.TempDir(), "known_gateways"), backend)
	public := a.tunnel(t, "example")
	_, port, _ := net.SplitHostPort(public)
	if p, _ := strconv.Atoi(port); p < lo || p > hi {
		t.Errorf("public port %s is outside --ports %d-%d", port, lo, hi)
	}
	if want := fmt.Sprintf("example: tcp://127.0.0.1:%s -> %s\n", port, backend); a.stdout.String() != want {
		t.Errorf("agent printed %q, want %q", &a.stdout, want)
	}
	waitFor(t, "server log", &srv.stderr, fmt.Sprintf("register domain 'example' -> '%s'", port))
	mustRoundTrip(t, public, "through both command lines")

	if err := a.stop(); err != nil {
		t.Fatalf("agent command: %v", err)
	}
	waitFor(t, "server log", &srv.stderr, "unregister domain 'example'")
	srv.stop()
}
