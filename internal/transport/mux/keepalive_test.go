package mux

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

// vanishing passes bytes until vanish, then drops everything both ways
// without closing: a peer unplugged, with no FIN and no reset. Once
// vanished, what the far end does (its close, even) is never seen here,
// and closing sends nothing there: the connection is closed for real at
// the test's end.
type vanishing struct {
	net.Conn
	gone   atomic.Bool
	closed chan struct{}
	once   sync.Once
}

func newVanishing(c net.Conn) *vanishing { return &vanishing{Conn: c, closed: make(chan struct{})} }

func (v *vanishing) vanish() { v.gone.Store(true) }

func (v *vanishing) Write(p []byte) (int, error) {
	if v.gone.Load() {
		return len(p), nil
	}
	return v.Conn.Write(p)
}

func (v *vanishing) Read(p []byte) (int, error) {
	for {
		n, err := v.Conn.Read(p)
		if !v.gone.Load() {
			return n, err
		}
		if err != nil {
			<-v.closed // the far end's close is not seen
			return 0, err
		}
	}
}

func (v *vanishing) Close() error {
	v.once.Do(func() { close(v.closed) })
	if v.gone.Load() {
		return nil
	}
	return v.Conn.Close()
}

// pingsSent is how many pings s has sent: the one at its start, then its
// keepalives.
func pingsSent(s *Session) uint32 {
	s.kmu.Lock()
	defer s.kmu.Unlock()
	return s.pingID
}

// TestDeadPeerNoticedWithinMaxIdle: a peer that has answered keepalives
// and then vanishes is noticed MaxIdleTimeout after the last frame heard
// from it, neither sooner nor much later, by the client, which keeps the
// session alive with its pings, and by the server, which pings only when
// the client does not.
func TestDeadPeerNoticedWithinMaxIdle(t *testing.T) {
	const kap, idle = 200 * time.Millisecond, 2 * time.Second
	var v *vanishing
	c, s := tlsConnsOver(t, func(c net.Conn) net.Conn {
		v = newVanishing(c)
		return v
	})
	t.Cleanup(func() { v.Conn.Close() })
	cfg := Config{KeepAlivePeriod: kap, MaxIdleTimeout: idle}
	cs, ss := Client(c, cfg), Server(s, cfg)
	defer cs.Close()
	defer ss.Close()
	// A few keepalives answered, the last one just now.
	if err := testutil.Poll(10*time.Second, func() error {
		if n := pingsSent(cs); n < 4 {
			return fmt.Errorf("the client sent %d pings", n)
		}
		cs.kmu.Lock()
		answered := cs.kaPing.IsZero() || time.Unix(0, cs.lastRecv.Load()).After(cs.kaPing)
		cs.kmu.Unlock()
		if !answered {
			return fmt.Errorf("the client's last ping is not answered yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The server left the pinging to the client.
	if n := pingsSent(ss); n != 1 {
		t.Errorf("the server sent %d pings while its client pinged on time, want only its first", n)
	}
	v.vanish()
	type end struct {
		name  string
		after time.Duration // from the last frame the side received
	}
	ends := make(chan end, 2)
	for name, sess := range map[string]*Session{"client": cs, "server": ss} {
		go func() {
			select {
			case <-sess.Done():
				ends <- end{name, time.Since(time.Unix(0, sess.lastRecv.Load()))}
			case <-time.After(5 * idle):
				ends <- end{name, -1}
			}
		}()
	}
	for range 2 {
		e := <-ends
		switch {
		case e.after < 0:
			t.Fatalf("the %s did not notice its peer vanish", e.name)
		case e.after < idle:
			t.Errorf("the %s gave up %v after the last frame, before MaxIdleTimeout (%v)", e.name, e.after, idle)
		case e.after > idle+idle/4:
			t.Errorf("the %s noticed its peer vanish %v after the last frame, want about MaxIdleTimeout (%v)", e.name, e.after, idle)
		}
	}
	if err := cs.Err(); !errors.Is(err, ErrKeepAliveTimeout) {
		t.Fatalf("the client ended with %v, want %v", err, ErrKeepAliveTimeout)
	}
	if err := ss.Err(); !errors.Is(err, ErrKeepAliveTimeout) {
		t.Fatalf("the server ended with %v, want %v", err, ErrKeepAliveTimeout)
	}
}

// TestServerPingsLater: a server pings half a period after its client
// would, less when the idle timeout leaves less room, so that its ping's
// answer always has at least a period to come back in.
func TestServerPingsLater(t *testing.T) {
	const p = time.Second
	for _, c := range []struct {
		idle, want time.Duration
	}{
		{3 * p, 1500 * time.Millisecond},
		{10 * p, 1500 * time.Millisecond},
		{2200 * time.Millisecond, 1200 * time.Millisecond},
		{2 * p, p},
	} {
		cfg := Config{KeepAlivePeriod: p, MaxIdleTimeout: c.idle}
		srv := &Session{cfg: cfg.withDefaults()}
		cli := &Session{cfg: cfg.withDefaults(), client: true}
		if got := srv.pingAfter(); got != c.want {
			t.Errorf("idle timeout %v: the server pings after %v, want %v", c.idle, got, c.want)
		}
		if got := cli.pingAfter(); got != p {
			t.Errorf("idle timeout %v: the client pings after %v, want the period", c.idle, got)
		}
		if room := c.idle - srv.pingAfter(); room < p {
			t.Errorf("idle timeout %v: the server's ping has %v to be answered, want at least the period", c.idle, room)
		}
	}
}
