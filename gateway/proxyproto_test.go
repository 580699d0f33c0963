package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
	"go.uber.org/goleak"

	"github.com/diglett/diglett/internal/readiness"
)

// ppServer is a listener wrapped by newProxyListener whose connections
// are served by echoing back, after the client's half-close, the
// connection's RemoteAddr and the bytes read.
type ppServer struct {
	ln       net.Listener
	pl       *proxyListener
	il       *idleListener // a tunnel port's (startPPPort), or nil
	parks    atomic.Int64  // a tunnel port's loop's deadlines passed
	accepted chan net.Conn
	readErrs chan error
}

func startPPServer(t *testing.T, from string, timeout time.Duration) *ppServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	wrapped := newProxyListener(ln, []netip.Prefix{netip.MustParsePrefix(from)}, timeout, log)
	s := &ppServer{ln: wrapped, pl: wrapped.(*proxyListener), accepted: make(chan net.Conn, 16), readErrs: make(chan error, 16)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := wrapped.Accept()
			if err != nil {
				return
			}
			s.accepted <- c
			go s.serve(c)
		}
	}()
	t.Cleanup(func() {
		wrapped.Close()
		<-done
	})
	return s
}

// ppStart starts a ppServer: its listener takes PROXY headers from the
// sources in from, within timeout.
type ppStart func(t *testing.T, from string, timeout time.Duration) *ppServer

// bothModes runs f with the listener of the HTTP(S) ports (a goroutine
// accepts) and with a tunnel port's (the accept loop accepts, and parks).
func bothModes(t *testing.T, f func(t *testing.T, start ppStart)) {
	t.Run("listener", func(t *testing.T) { f(t, startPPServer) })
	t.Run("port", func(t *testing.T) { f(t, startPPPort) })
}

// ppPortParkAfter is how long a tunnel port's loop in these tests waits
// for a visitor before it parks.
const ppPortParkAfter = 30 * time.Millisecond

// startPPPort is startPPServer with a tunnel port's listener: a parking
// listener on a real poller, read by a loop like a tunnel's accept loop
// (a deadline ppPortParkAfter ahead, parked when it passes).
func startPPPort(t *testing.T, from string, timeout time.Duration) *ppServer {
	t.Helper()
	p, err := readiness.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tl := ln.(*net.TCPListener)
	w, err := p.Watch(tl)
	if err != nil {
		t.Fatal(err)
	}
	il := &idleListener{TCPListener: tl, watch: w, after: ppPortParkAfter}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	pl := newProxyPort(il, []netip.Prefix{netip.MustParsePrefix(from)}, timeout, log)
	s := &ppServer{ln: pl, pl: pl, il: il, accepted: make(chan net.Conn, 16), readErrs: make(chan error, 16)}
	done := make(chan struct{})
	var loop func()
	loop = func() {
		for {
			il.SetDeadline(time.Now().Add(il.after))
			c, err := pl.Accept()
			if errors.Is(err, os.ErrDeadlineExceeded) {
				s.parks.Add(1)
				if il.park(loop, func() { close(done) }) {
					return
				}
				continue
			}
			if err != nil {
				close(done)
				return
			}
			s.accepted <- c
			go s.serve(c)
		}
	}
	go loop()
	t.Cleanup(func() {
		pl.Close()
		<-done
	})
	return s
}

// serve reads c to its EOF, then writes back "REMOTE|DATA" and
// half-closes c.
func (s *ppServer) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	data, err := io.ReadAll(c)
	if err != nil {
		s.readErrs <- err
		return
	}
	io.WriteString(c, c.RemoteAddr().String()+"|"+string(data))
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		s.readErrs <- err
		return
	}
	// The client closes once it has read the reply to its EOF.
	io.Copy(io.Discard, c)
}

// dialFrom connects to s from the local address ip.
func (s *ppServer) dialFrom(t *testing.T, ip string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", s.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(15 * time.Second))
	return c.(*net.TCPConn)
}

// roundTrip writes header (if any) and data, half-closes, and reads the
// reply to its EOF.
func roundTrip(t *testing.T, c *net.TCPConn, header *proxyproto.Header, data string) (string, error) {
	t.Helper()
	if header != nil {
		if _, err := header.WriteTo(c); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := io.WriteString(c, data); err != nil {
		return "", err
	}
	if err := c.CloseWrite(); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

func visitorHeader(version byte) *proxyproto.Header {
	return proxyproto.HeaderProxyFromAddrs(version,
		&net.TCPAddr{IP: net.ParseIP("203.0.113.9"), Port: 4242},
		&net.TCPAddr{IP: net.ParseIP("198.51.100.1"), Port: 443})
}

func TestProxyProtocolListedSource(t *testing.T) {
	bothModes(t, func(t *testing.T, start ppStart) {
		t.Cleanup(func() { goleak.VerifyNone(t) })
		s := start(t, "127.0.0.2/32", 3*time.Second)
		for _, v := range []byte{1, 2} {
			c := s.dialFrom(t, "127.0.0.2")
			got, err := roundTrip(t, c, visitorHeader(v), "hello")
			if err != nil {
				t.Fatalf("v%d: %v", v, err)
			}
			// The visitor is the header's source, the data is intact, and
			// half-close works both ways.
			if want := "203.0.113.9:4242|hello"; got != want {
				t.Fatalf("v%d: got %q, want %q", v, got, want)
			}
		}
	})
}

func TestProxyProtocolListedWithoutHeader(t *testing.T) {
	bothModes(t, func(t *testing.T, start ppStart) {
		t.Cleanup(func() { goleak.VerifyNone(t) })
		s := start(t, "127.0.0.2/32", 3*time.Second)
		c := s.dialFrom(t, "127.0.0.2")
		got, err := roundTrip(t, c, nil, "GET / HTTP/1.0\r\n\r\n")
		if err == nil && got != "" {
			t.Fatalf("served without a header: %q", got)
		}
		// Nothing was accepted: the next connection is the first.
		c2 := s.dialFrom(t, "127.0.0.1")
		if _, err := roundTrip(t, c2, nil, "x"); err != nil {
			t.Fatal(err)
		}
		if first := <-s.accepted; addrIP(first.RemoteAddr()) != netip.MustParseAddr("127.0.0.1") {
			t.Fatalf("accepted %v, want the unlisted client only", first.RemoteAddr())
		}
	})
}

func TestProxyProtocolUnlistedSource(t *testing.T) {
	bothModes(t, func(t *testing.T, start ppStart) {
		t.Cleanup(func() { goleak.VerifyNone(t) })
		s := start(t, "127.0.0.2/32", 3*time.Second)
		t.Run("no header", func(t *testing.T) {
			for _, data := range []string{"hello", "PROBE data", "\r\n\r\nQUIT", ""} {
				c := s.dialFrom(t, "127.0.0.1")
				got, err := roundTrip(t, c, nil, data)
				if err != nil {
					t.Fatalf("%q: %v", data, err)
				}
				if want := c.LocalAddr().String() + "|" + data; got != want {
					t.Fatalf("got %q, want %q", got, want)
				}
			}
		})
		for _, v := range []byte{1, 2} {
			t.Run("forged v"+string('0'+v), func(t *testing.T) {
				c := s.dialFrom(t, "127.0.0.1")
				got, err := roundTrip(t, c, visitorHeader(v), "hello")
				if err == nil && got != "" {
					t.Fatalf("forged header served: %q", got)
				}
				if err := <-s.readErrs; !errors.Is(err, ErrForeignProxyHeader) {
					t.Fatalf("server's read: %v, want ErrForeignProxyHeader", err)
				}
			})
		}
	})
}

func TestProxyProtocolSilentSourceBlocksNoOne(t *testing.T) {
	bothModes(t, func(t *testing.T, start ppStart) {
		t.Cleanup(func() { goleak.VerifyNone(t) })
		const timeout = 3 * time.Second
		s := start(t, "127.0.0.2/32", timeout)
		silent := s.dialFrom(t, "127.0.0.2")
		// Its header is being read.
		if err := waitUntil(10*time.Second, func() bool {
			s.pl.mu.Lock()
			defer s.pl.mu.Unlock()
			return len(s.pl.pending) == 1
		}); err != nil {
			t.Fatal("silent balancer's header not being read:", err)
		}
		// Meanwhile a balancer's and a direct visitor are served.
		c := s.dialFrom(t, "127.0.0.2")
		if got, err := roundTrip(t, c, visitorHeader(2), "a"); err != nil || got != "203.0.113.9:4242|a" {
			t.Fatalf("listed: %q, %v", got, err)
		}
		c = s.dialFrom(t, "127.0.0.1")
		if got, err := roundTrip(t, c, nil, "b"); err != nil || !strings.HasSuffix(got, "|b") {
			t.Fatalf("unlisted: %q, %v", got, err)
		}
		// The silent one is refused once its time is up, never accepted.
		silent.SetReadDeadline(time.Now().Add(timeout + 10*time.Second))
		n, err := silent.Read(make([]byte, 1))
		var ne net.Error
		if n != 0 || err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("silent balancer: read %d, %v; want it closed", n, err)
		}
		for range 2 {
			if a := <-s.accepted; a.RemoteAddr().String() == silent.LocalAddr().String() {
				t.Fatal("silent balancer's connection accepted")
			}
		}
		select {
		case a := <-s.accepted:
			t.Fatalf("accepted %v too", a.RemoteAddr())
		default:
		}
	})
}

func TestProxyProtocolNoSources(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if got := newProxyListener(ln, nil, time.Second, nil); got != ln {
		t.Fatalf("wrapped without sources: %T", got)
	}
}

func TestProxyProtocolCloseEndsPending(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pl := newProxyListener(ln, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, time.Minute, nil).(*proxyListener)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := waitUntil(10*time.Second, func() bool {
		pl.mu.Lock()
		defer pl.mu.Unlock()
		return len(pl.pending) == 1
	}); err != nil {
		t.Fatal("header not being read:", err)
	}
	pl.Close()
	if _, err := pl.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := bufio.NewReader(c).ReadByte(); err == nil {
		t.Fatal("pending connection not closed")
	}
}

// FuzzUnlistedConn checks the first-bytes check of an unlisted source's
// connection: data that opens with a PROXY signature is refused, any
// other comes through intact, however it is split into writes.
func FuzzUnlistedConn(f *testing.F) {
	f.Add([]byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nhello"), uint8(3))
	f.Add(append(append([]byte(nil), proxyproto.SIGV2...), 0x21, 0x11, 0, 0), uint8(7))
	f.Add([]byte("PROPFIND / HTTP/1.1\r\n"), uint8(2))
	f.Add([]byte("\r\n\r\n\x00\r\nQUI"), uint8(5))
	f.Add([]byte(""), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, split uint8) {
		client, server := net.Pipe()
		go func() {
			cut := min(int(split), len(data))
			client.Write(data[:cut])
			client.Write(data[cut:])
			client.Close()
		}()
		c := &unlistedConn{Conn: server, log: slog.New(slog.DiscardHandler)}
		defer c.Close()
		got, err := io.ReadAll(c)
		forged := bytes.HasPrefix(data, proxyproto.SIGV1) || bytes.HasPrefix(data, proxyproto.SIGV2)
		switch {
		case forged && !errors.Is(err, ErrForeignProxyHeader):
			t.Fatalf("%q: read %q, %v; want ErrForeignProxyHeader", data, got, err)
		case !forged && (err != nil || !bytes.Equal(got, data)):
			t.Fatalf("%q: read %q, %v; want it intact", data, got, err)
		}
	})
}

// parkedWithPending waits until s's port loop is parked with n headers
// being read.
func parkedWithPending(t *testing.T, s *ppServer, n int) {
	t.Helper()
	if err := waitUntil(10*time.Second, func() bool {
		s.pl.mu.Lock()
		pending := len(s.pl.pending)
		s.pl.mu.Unlock()
		s.il.mu.Lock()
		defer s.il.mu.Unlock()
		return pending == n && s.il.parked
	}); err != nil {
		t.Fatalf("the port's loop did not park with %d headers being read: %v", n, err)
	}
}

// TestProxyPortHeaderAfterPark: a balancer's connection accepted before
// the port's loop parked, whose header comes only after, wakes the loop
// and is served with the header's visitor; the loop parks again after.
func TestProxyPortHeaderAfterPark(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	s := startPPPort(t, "127.0.0.2/32", 10*time.Second)
	for _, v := range []byte{1, 2} {
		c := s.dialFrom(t, "127.0.0.2")
		parkedWithPending(t, s, 1)
		got, err := roundTrip(t, c, visitorHeader(v), "late")
		if err != nil {
			t.Fatalf("v%d: %v", v, err)
		}
		if want := "203.0.113.9:4242|late"; got != want {
			t.Fatalf("v%d: got %q, want %q", v, got, want)
		}
		parkedWithPending(t, s, 0)
	}
}

// TestProxyPortCloseWhileParked: closing a parked port closes the
// connections whose header is being read, and ends its loop.
func TestProxyPortCloseWhileParked(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	s := startPPPort(t, "127.0.0.2/32", time.Minute)
	c := s.dialFrom(t, "127.0.0.2")
	parkedWithPending(t, s, 1)
	s.pl.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := bufio.NewReader(c).ReadByte(); err == nil {
		t.Fatal("the pending connection was not closed")
	}
	if _, err := s.pl.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
}
