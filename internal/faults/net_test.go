package faults

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// poll calls f until it returns nil or d has passed, and returns its last
// error.
func poll(d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Public port windows come from a range below the kernel's ephemeral
// ports (so no outgoing connection holds one) and away from the root
// package's tests' range.
const (
	windowLow  = 10000
	windowHigh = 19999
)

var windows struct {
	sync.Mutex
	used map[int]bool
}

// portWindow returns n consecutive ports, free on 127.0.0.1 right now and
// not handed out before in this process.
func portWindow(c *tc, n int) (lo, hi int) {
	c.Helper()
	windows.Lock()
	defer windows.Unlock()
	if windows.used == nil {
		windows.used = make(map[int]bool)
	}
	for range 200 {
		lo = windowLow + mrand.IntN(windowHigh-windowLow-n)
		ok := true
		for p := lo; p < lo+n && ok; p++ {
			ok = !windows.used[p] && portFree(p)
		}
		if ok {
			for p := lo; p < lo+n; p++ {
				windows.used[p] = true
			}
			return lo, lo + n - 1
		}
	}
	c.Fatalf("no window of %d free ports in %d-%d", n, windowLow, windowHigh)
	return 0, 0
}

func portFree(p int) bool {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// connSet tracks a test server's connections so that it can close them all.
type connSet struct {
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func (s *connSet) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return false
	}
	if s.conns == nil {
		s.conns = make(map[net.Conn]struct{})
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *connSet) remove(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
}

// serveTCP accepts on a new loopback listener and hands each connection
// to handle until the case ends; then everything is closed.
func serveTCP(c *tc, handle func(net.Conn)) string {
	c.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		c.Fatalf("listen: %v", err)
	}
	var set connSet
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			if !set.add(conn) {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer set.remove(conn)
				handle(conn)
			}()
		}
	}()
	c.Cleanup(func() {
		ln.Close()
		set.closeAll()
		wg.Wait()
	})
	return ln.Addr().String()
}

// startEcho serves an echo backend: it sends back what it reads, then
// half-closes.
func startEcho(c *tc) string {
	return serveTCP(c, func(conn net.Conn) {
		io.Copy(conn, conn)
		conn.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, conn)
	})
}

// silentBackend reads and discards what visitors send, and never answers
// or closes: the backend that keeps relays open.
type silentBackend struct {
	addr             string
	accepted, gotEOF atomic.Int64
}

func startSilent(c *tc) *silentBackend {
	b := &silentBackend{}
	done := make(chan struct{})
	b.addr = serveTCP(c, func(conn net.Conn) {
		b.accepted.Add(1)
		if _, err := io.Copy(io.Discard, conn); err == nil {
			b.gotEOF.Add(1)
		}
		<-done // held open until the case ends
	})
	c.Cleanup(func() { close(done) }) // runs before serveTCP's clean-up
	return b
}

// roundTrip sends n random bytes to an echo backend behind addr and checks
// that the SHA-256 of what comes back matches, all within d.
func roundTrip(addr string, n int, d time.Duration) error {
	return roundTripFrom(nil, addr, n, d)
}

// roundTripFrom is roundTrip from a chosen local address (nil: any).
func roundTripFrom(local net.Addr, addr string, n int, d time.Duration) error {
	dl := net.Dialer{Timeout: d, LocalAddr: local}
	conn, err := dl.Dial("tcp", addr)
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(d))
	data := make([]byte, n)
	rand.Read(data)
	want := sha256.Sum256(data)
	werr := make(chan error, 1)
	go func() {
		_, err := conn.Write(data)
		if err == nil {
			err = conn.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	h := sha256.New()
	got, err := io.Copy(h, conn)
	if err != nil {
		return fmt.Errorf("read back from %s after %d of %d bytes: %w", addr, got, n, err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("send to %s: %w", addr, err)
	}
	if got != int64(n) || !bytes.Equal(h.Sum(nil), want[:]) {
		return fmt.Errorf("round trip through %s: got %d bytes back of %d, checksum mismatch", addr, got, n)
	}
	return nil
}

// counts are a running program's goroutines and open descriptors.
type counts struct{ goroutines, fds int }

func (c counts) String() string { return fmt.Sprintf("%d goroutines, %d fds", c.goroutines, c.fds) }

// readCounts asks the profiler at debugAddr for the goroutine total and
// counts /proc/PID/fd.
func readCounts(debugAddr string, pid int) (counts, error) {
	var n counts
	client := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + debugAddr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return n, fmt.Errorf("goroutine profile: %w", err)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	resp.Body.Close()
	if err != nil {
		return n, fmt.Errorf("goroutine profile: %w", err)
	}
	total, ok := strings.CutPrefix(strings.TrimSpace(line), "goroutine profile: total ")
	if n.goroutines, err = strconv.Atoi(total); !ok || err != nil {
		return n, fmt.Errorf("goroutine profile: unexpected first line %q", line)
	}
	fds, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return n, fmt.Errorf("descriptors: %w", err)
	}
	n.fds = len(fds)
	return n, nil
}

// isTimeout reports whether err is a deadline that passed.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// closedWithin reports whether the peer closes conn (FIN or reset) within
// d; what it sends before that is read and counted in n.
func closedWithin(conn net.Conn, d time.Duration) (closed bool, n int64) {
	conn.SetReadDeadline(time.Now().Add(d))
	n, err := io.Copy(io.Discard, conn)
	return !isTimeout(err), n
}

// localAddr is a TCP address on loopback host ip, any port: the source of
// a dial that must come from a given address.
func localAddr(ip string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip)} }
