package gateway

import (
	"crypto/tls"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
	"github.com/diglett/diglett/internal/transport/tlsmux"
)

// TestRecordBufferAfterBulk: after a real agent sent megabytes to a
// visitor, the gateway's TLS connection to it keeps a record buffer of
// one record at most. A TLS connection keeps that buffer for its life,
// idle or not: fed records that grow a little at a time (the agent's
// dynamic record sizing) or more than a record at a time, it had grown
// to 40 KB, for every session that ever carried data.
func TestRecordBufferAfterBulk(t *testing.T) {
	srv, addr := idleServer(t, Config{})
	ln := idleAgent(t, srv, addr, "bulk")
	const size = 4 << 20
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write(make([]byte, size))
	}()
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(portOf(t, srv, "bulk"))), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if n, err := io.Copy(io.Discard, c); n != size {
		t.Fatalf("the visitor read %d bytes of %d: %v", n, size, err)
	}
	srv.mu.Lock()
	var sessions []*session
	for ss := range srv.sessions {
		sessions = append(sessions, ss)
	}
	srv.mu.Unlock()
	if len(sessions) != 1 {
		t.Fatalf("%d sessions, want 1", len(sessions))
	}
	tc, ok := sessions[0].sess.(*tlsmux.Session).NetConn().(*tls.Conn)
	if !ok {
		t.Fatal("the session does not run over a TLS connection")
	}
	got, err := testutil.RecordBufferCap(tc)
	if err != nil {
		t.Fatal(err)
	}
	// One TLS 1.3 record with its header and overhead, and the 512
	// bytes the connection asks for beyond it: the size class of 18 KiB.
	if got > 18<<10 {
		t.Fatalf("the gateway's TLS record buffer holds %d bytes after the bulk, more than one record", got)
	}
}
