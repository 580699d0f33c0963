package faults

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/diglett/diglett/internal/identity"
	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/transport"
	"github.com/diglett/diglett/internal/transport/tlsmux"
)

// login speaks the agent protocol by hand over TLS+mux, from local (nil:
// any address), up to the login, and returns "ok" or the gateway's error
// code; err is set when the gateway ended the exchange without either.
func login(local net.Addr, gw, token string, d time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	dl := net.Dialer{LocalAddr: local}
	conn, err := dl.DialContext(ctx, "tcp", gw)
	if err != nil {
		return "", fmt.Errorf("dial: %w", err)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{protocol.ALPN}, InsecureSkipVerify: true}
	sess, err := tlsmux.Client(ctx, conn, tc, transport.Config{})
	if err != nil {
		return "", err
	}
	defer sess.Close()
	st, err := sess.OpenStream(ctx)
	if err != nil {
		return "", fmt.Errorf("open control stream: %w", err)
	}
	defer st.Close()
	dl2, _ := ctx.Deadline()
	st.SetDeadline(dl2)
	exchange := func(m protocol.Message) (protocol.Message, error) {
		if err := protocol.WriteMessage(st, m); err != nil {
			return nil, fmt.Errorf("send %v: %w", m.Type(), err)
		}
		r, err := protocol.ReadMessage(st)
		if err != nil {
			return nil, fmt.Errorf("reply to %v: %w", m.Type(), err)
		}
		return r, nil
	}
	r, err := exchange(&protocol.Hello{Version: protocol.Version, Software: "faults"})
	if err != nil {
		return "", err
	}
	if e, ok := r.(*protocol.Error); ok {
		return string(e.Code), nil
	}
	if r, err = exchange(&protocol.Login{Token: token}); err != nil {
		return "", err
	}
	switch r := r.(type) {
	case *protocol.LoginOK:
		return "ok", nil
	case *protocol.Error:
		return string(r.Code), nil
	default:
		return "", fmt.Errorf("unexpected reply %v", r.Type())
	}
}

// fakeGateway is a gateway of the test's own that answers every login
// with an error whose text it chooses.
type fakeGateway struct {
	addr, fp string
}

func startFakeGateway(c *tc, refusal *protocol.Error) *fakeGateway {
	c.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		c.Fatal(err)
	}
	cert, err := identity.SelfSigned(key, "localhost")
	if err != nil {
		c.Fatal(err)
	}
	fp, err := identity.Fingerprint(key.Public())
	if err != nil {
		c.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		c.Fatal(err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13, NextProtos: []string{protocol.ALPN}}
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				serveFake(ctx, conn, tc, refusal)
			}()
		}
	}()
	c.Cleanup(func() {
		cancel()
		ln.Close()
		wg.Wait()
	})
	return &fakeGateway{addr: ln.Addr().String(), fp: fp}
}

func serveFake(ctx context.Context, conn net.Conn, tc *tls.Config, refusal *protocol.Error) {
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	sess, err := tlsmux.Server(hctx, conn, tc, transport.Config{})
	if err != nil {
		return
	}
	defer sess.Close()
	st, err := sess.AcceptStream(hctx)
	if err != nil {
		return
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := protocol.ReadMessage(st); err != nil {
		return
	}
	if err := protocol.WriteMessage(st, &protocol.Hello{Version: protocol.Version}); err != nil {
		return
	}
	if _, err := protocol.ReadMessage(st); err != nil {
		return
	}
	protocol.WriteMessage(st, refusal)
	// Let the agent read the refusal before the session goes.
	var b [1]byte
	st.Read(b[:])
}
