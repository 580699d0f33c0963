package gateway

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/testutil"
)

// controlGoroutines counts this process's goroutines that read a control
// stream: the reader of a stream that cannot notify (serveControl) and the
// notified reader (controlReader.run).
func controlGoroutines() int {
	return testutil.GoroutinesIn("gateway.(*session).serveControl") + testutil.GoroutinesIn("gateway.(*controlReader).run")
}

func waitNoControlGoroutine(t *testing.T, when string) {
	t.Helper()
	if err := testutil.Poll(10*time.Second, func() error {
		if n := controlGoroutines(); n != 0 {
			return fmt.Errorf("%s: %d goroutines read a control stream, want none", when, n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func frame(t *testing.T, m protocol.Message) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := protocol.WriteMessage(&b, m); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func expectMsg(t *testing.T, a *rawAgent, what string) protocol.Message {
	t.Helper()
	select {
	case m, ok := <-a.msgs:
		if !ok {
			t.Fatalf("%s: the control stream ended", what)
		}
		return m
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no answer", what)
	}
	return nil
}

// TestControlStreamWithoutGoroutine: an idle session over TLS over TCP has
// no goroutine waiting on its control stream, and the gateway still answers
// what comes on it: a register sent in two parts with a pause between
// (nothing reads meanwhile), two registers in one write, a drain, then a
// message it does not take, which ends the session with a bad request.
func TestControlStreamWithoutGoroutine(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	auth := &tableAuth{
		ids:   map[string]string{"secret-a": "alice"},
		names: map[string][]string{"alice": {"a1", "a2", "a3", "a4"}},
	}
	srv, addr, logs := reloadServer(t, auth)
	agents := []*rawAgent{mustLogin(t, addr, "secret-a", "a1"), mustLogin(t, addr, "secret-a")}
	waitNoControlGoroutine(t, "two idle sessions")

	a := agents[1]
	reg := frame(t, &protocol.Register{Name: "a2"})
	if _, err := a.ctrl.Write(reg[:4]); err != nil {
		t.Fatal(err)
	}
	// The part waits, with no goroutine, and nothing is answered or
	// registered for it.
	waitNoControlGoroutine(t, "part of a message sent")
	select {
	case m := <-a.msgs:
		t.Fatalf("answered %v to part of a message", m)
	case <-time.After(50 * time.Millisecond):
	}
	if n := members(srv, "a2"); n != 0 {
		t.Fatalf("a2 has %d sessions before its register is whole", n)
	}
	if _, err := a.ctrl.Write(reg[4:]); err != nil {
		t.Fatal(err)
	}
	if r, ok := expectMsg(t, a, "register a2").(*protocol.Registered); !ok || r.Name != "a2" {
		t.Fatalf("register a2 in two parts: got %#v", r)
	}

	both := append(frame(t, &protocol.Register{Name: "a3"}), frame(t, &protocol.Register{Name: "a4"})...)
	if _, err := a.ctrl.Write(both); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a3", "a4"} {
		if r, ok := expectMsg(t, a, "register "+name).(*protocol.Registered); !ok || r.Name != name {
			t.Fatalf("register %s in one write with another: got %#v", name, r)
		}
	}
	waitNoControlGoroutine(t, "after three registers")

	if _, err := a.ctrl.Write(frame(t, &protocol.Drain{})); err != nil {
		t.Fatal(err)
	}
	waitForLog(t, logs, "agent draining: sending it no more visitors")

	// A frame of an unknown type: a bad request, and the session ends.
	bad := []byte{0xEE, 0, 2, '{', '}'}
	if _, err := a.ctrl.Write(bad); err != nil {
		t.Fatal(err)
	}
	a.expectRevoked(t, protocol.CodeBadRequest, "malformed message: unknown type 238")
	waitForLog(t, logs, "dropping agent: bad control message")

	// A frame announcing more than a message may hold: the same, as
	// soon as its header is in.
	b := mustLogin(t, addr, "secret-a")
	var hdr [3]byte
	hdr[0] = byte(protocol.TypeRegister)
	binary.BigEndian.PutUint16(hdr[1:], protocol.MaxMessageSize+1)
	if _, err := b.ctrl.Write(hdr[:]); err != nil {
		t.Fatal(err)
	}
	b.expectRevoked(t, protocol.CodeBadRequest, fmt.Sprintf("malformed message: payload of %d bytes exceeds %d", protocol.MaxMessageSize+1, protocol.MaxMessageSize))

	// The first agent hangs up: its session ends on the gateway.
	agents[0].sess.Close()
	if err := testutil.Poll(10*time.Second, func() error {
		if n := strings.Count(logs.String(), `msg="agent disconnected"`); n < 3 {
			return fmt.Errorf("%d sessions ended, want 3", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	waitNoControlGoroutine(t, "every session ended")
}

func waitForLog(t *testing.T, logs *testutil.Buffer, want string) {
	t.Helper()
	if err := testutil.Poll(10*time.Second, func() error {
		if !strings.Contains(logs.String(), want) {
			return fmt.Errorf("no %q in the log", want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
