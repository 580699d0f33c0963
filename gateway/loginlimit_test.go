package gateway

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"

	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/tlsmux"
)

func TestLoginFailureDelays(t *testing.T) {
	t.Parallel()
	l := newLoginLimiter(Config{LoginFailureDelay: 250 * time.Millisecond}, slog.New(slog.DiscardHandler))
	defer l.close()
	want := []time.Duration{0, 0, 0, 250 * time.Millisecond, 500 * time.Millisecond, time.Second,
		2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second, 8 * time.Second}
	for i, d := range want {
		if got := l.delayAfter(i + 1); got != d {
			t.Errorf("delay after failure %d = %v, want %v", i+1, got, d)
		}
	}
}

// newTestLimiter is a limiter whose delays are too short to slow a test.
func newTestLimiter(limit int) *loginLimiter {
	return newLoginLimiter(Config{
		LoginFailureLimit:  limit,
		LoginFailureWindow: time.Minute,
		LoginLockout:       time.Minute,
		LoginFailureDelay:  time.Microsecond,
	}, slog.New(slog.DiscardHandler))
}

func TestLoginLockout(t *testing.T) {
	t.Parallel()
	l := newTestLimiter(3)
	defer l.close()
	bad, good := netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("192.0.2.2/32")
	ctx := t.Context()
	for i := range 3 {
		if perr := l.refusal(bad); perr != nil {
			t.Fatalf("refused after %d failures: %v", i, perr)
		}
		l.failed(ctx, bad)
	}
	perr := l.refusal(bad)
	if perr == nil || perr.Code != protocol.CodeTooManyFailures || !strings.Contains(perr.Message, "try again in 1m0s") {
		t.Fatalf("after 3 failures: %+v, want too_many_failures saying when to retry", perr)
	}
	if l.refusal(good) != nil {
		t.Fatal("another source refused")
	}
	l.succeeded(bad)
	if l.refusal(bad) != nil {
		t.Fatal("a success did not reset the source")
	}
	if st := l.stats(); st.Failures != 3 || st.LockedOut != 1 || st.Lockouts != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// A flood of failures from more sources than the limiter remembers does
// not grow it.
func TestLoginLimiterMemoryIsBounded(t *testing.T) {
	t.Parallel()
	l := newTestLimiter(10)
	defer l.close()
	ctx := t.Context()
	base := netip.MustParseAddr("2001:db8::")
	for i := range loginSources + 1000 {
		a := base.As16()
		a[4], a[5], a[6], a[7] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
		src, _ := netip.AddrFrom16(a).Prefix(64)
		l.failed(ctx, src)
	}
	if n := l.stats().Sources; n != loginSources {
		t.Fatalf("limiter remembers %d sources, want at most %d", n, loginSources)
	}
}

// countingAuth counts Authenticate calls; "good" is the only token it
// takes.
type countingAuth struct {
	calls atomic.Int64
}

func (a *countingAuth) Authorize(context.Context, Identity, string) error { return nil }

func (a *countingAuth) Authenticate(ctx context.Context, c Credentials) (Identity, error) {
	a.calls.Add(1)
	if c.Token != "good" {
		return Identity{}, ErrUnauthorized
	}
	return Identity{Name: "good"}, nil
}

// agentLogin connects to addr from the loopback address local and logs in
// with token; it returns the gateway's answer to the login.
func agentLogin(ctx context.Context, local, addr, token string) (protocol.Message, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{protocol.ALPN}, InsecureSkipVerify: true}
	sess, err := tlsmux.Client(ctx, raw, tc, transport.Config{})
	if err != nil {
		return nil, err
	}
	defer sess.Close()
	st, err := sess.OpenStream(ctx)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		st.SetDeadline(dl)
	}
	if err := protocol.WriteMessage(st, &protocol.Hello{Version: protocol.Version}); err != nil {
		return nil, err
	}
	if _, err := protocol.ReadMessage(st); err != nil {
		return nil, fmt.Errorf("read hello: %w", err)
	}
	if err := protocol.WriteMessage(st, &protocol.Login{Token: token}); err != nil {
		return nil, err
	}
	return protocol.ReadMessage(st)
}

// 2000 wrong tokens from one address in parallel reach the authenticator
// only a few times: the source is slowed down, then locked out, and the
// gateway logs a summary instead of a line per failure; meanwhile a good
// token from another address logs in at once.
func TestLoginFlood(t *testing.T) {
	t.Parallel()
	cert := testutil.Cert(t)
	authn := &countingAuth{}
	var logs testutil.Buffer
	const delay = 2 * time.Second
	cfg := Config{
		TLS:                    &tls.Config{Certificates: []tls.Certificate{cert}},
		Auth:                   authn,
		Logger:                 slog.New(slog.NewTextHandler(&logs, nil)), // Info and above
		HandshakeTimeout:       4 * time.Second,
		MaxHandshakesPerSource: 16,
		LoginFailureDelay:      delay,
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	addr := serveLoopback(t, srv)

	const attempts, workers = 2000, 32
	var (
		next                                atomic.Int64
		unauthorized, lockedOut, unanswered atomic.Int64
		wg                                  sync.WaitGroup
	)
	ctx, cancel := context.WithTimeout(t.Context(), 25*time.Second)
	defer cancel()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= attempts && ctx.Err() == nil {
				actx, acancel := context.WithTimeout(ctx, 2*cfg.HandshakeTimeout)
				m, err := agentLogin(actx, "127.0.0.1", addr, "wrong")
				acancel()
				switch {
				case err != nil:
					unanswered.Add(1) // refused busy: the source holds its share of slots
				default:
					if e, ok := m.(*protocol.Error); ok && e.Code == protocol.CodeUnauthorized {
						unauthorized.Add(1)
					} else if ok && e.Code == protocol.CodeTooManyFailures {
						lockedOut.Add(1)
					} else {
						t.Errorf("wrong token answered with %#v", m)
					}
				}
			}
		}()
	}

	// During the flood, once the source is locked out, a good token from
	// another address logs in without delay.
	deadline := time.Now().Add(20 * time.Second)
	for srv.LoginStats().Lockouts == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the flooding source was never locked out")
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	m, err := agentLogin(ctx, "127.0.0.2", addr, "good")
	took := time.Since(start)
	if err != nil {
		t.Fatalf("good login during the flood: %v", err)
	}
	if _, ok := m.(*protocol.LoginOK); !ok {
		t.Fatalf("good login during the flood answered with %#v", m)
	}
	if took >= delay {
		t.Fatalf("good login from another address took %v: slowed down like the flooding source", took)
	}

	wg.Wait()
	if ctx.Err() != nil {
		t.Fatal("the flood did not finish in time")
	}
	calls := authn.calls.Load() - 1 // the good login
	t.Logf("%d attempts: %d reached the authenticator, %d answered unauthorized, %d too_many_failures, %d refused busy",
		attempts, calls, unauthorized.Load(), lockedOut.Load(), unanswered.Load())
	// The calls in flight when the source got locked out (at most its
	// handshake slots) and the ones that locked it out.
	if max := int64(DefaultLoginFailureLimit + cfg.MaxHandshakesPerSource); calls > max || calls < DefaultLoginFailureLimit {
		t.Errorf("%d wrong tokens reached the authenticator, want 10 to %d", calls, max)
	}
	if lockedOut.Load() == 0 {
		t.Error("no attempt was answered too_many_failures")
	}

	srv.Close()
	lines := logs.Lines()
	out := strings.Join(lines, "\n")
	if !strings.Contains(out, `msg="failed agent logins"`) || !strings.Contains(out, `top_sources="127.0.0.1=`) {
		t.Errorf("no summary of failed logins in the log:\n%s", out)
	}
	if len(lines) > 20 {
		t.Errorf("%d log lines for a flood of %d failed logins, want a few summaries:\n%s", len(lines), attempts, out)
	}
}
