package gateway

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/testutil"
)

// While its agent is offline and its lease runs, a tunnel's TCP port
// answers an HTTP request with a 503 that says why (what a reverse proxy
// in front passes on), and resets anything else.
func TestOfflineTunnelAnswers503(t *testing.T) {
	g := startRegGateway(t, Config{Lease: time.Minute})
	ln, _ := g.listen(t, "away")
	public := ln.Addr().String()
	ln.Close()

	ask := func(req string) (string, error) {
		c, err := net.DialTimeout("tcp", public, 5*time.Second)
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, req); err != nil {
			return "", err
		}
		b, err := io.ReadAll(c)
		return string(b), err
	}
	var answer string
	if err := testutil.Poll(10*time.Second, func() error {
		a, _ := ask("GET /page HTTP/1.1\r\nHost: away.example\r\n\r\n")
		if !strings.HasPrefix(a, "HTTP/1.1 503 ") {
			return errors.New("no 503 yet: " + a)
		}
		answer = a
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(answer, "\r\n\r\n"+offlineBody) || !strings.Contains(answer, "Retry-After: 5\r\n") {
		t.Errorf("answer %q", answer)
	}
	// A request with a body the gateway does not read still gets the
	// whole answer.
	if a, _ := ask("POST /upload HTTP/1.1\r\nHost: away.example\r\nContent-Length: 30000\r\n\r\n" + strings.Repeat("x", 30000)); !strings.HasPrefix(a, "HTTP/1.1 503 ") {
		t.Errorf("POST with a body: answer %q", a)
	}
	// Not HTTP (a TLS client hello): reset, nothing written.
	if a, _ := ask("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"); a != "" {
		t.Errorf("a TLS client got %q", a)
	}
	g.Close()
}

func TestIsHTTPRequest(t *testing.T) {
	for in, want := range map[string]bool{
		"GET / HTTP/1.1": true, "HEAD /": true, "DELET": true, "OPTIONS * HT": true,
		"GETX /": false, "\x16\x03\x01\x02": false, "SSH-2.0": false, "GE": false, "": false,
	} {
		if got := isHTTPRequest([]byte(in)); got != want {
			t.Errorf("isHTTPRequest(%q) = %v, want %v", in, got, want)
		}
	}
}
