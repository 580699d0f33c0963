package nginxtest

import (
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestStart runs nginx with a listener that reads PROXY protocol headers
// and checks that it answers and logs the address of a header written by
// hand, and that it is gone once the test's cleanup has run.
func TestStart(t *testing.T) {
	var addr string
	t.Run("serve", func(t *testing.T) {
		s := Start(t, func(port int, dir string) string {
			return fmt.Sprintf(`http {
	log_format pp '$proxy_protocol_addr $request';
	access_log %s pp;
	server {
		listen 127.0.0.1:%d proxy_protocol;
		location / { return 200 "ok\n"; }
	}
}`, filepath.Join(dir, "access.log"), port)
		})
		addr = s.Addr
		c, err := net.DialTimeout("tcp", s.Addr, waitTimeout)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(waitTimeout))
		io.WriteString(c, "PROXY TCP4 192.0.2.7 127.0.0.1 51000 80\r\nGET /hello HTTP/1.0\r\n\r\n")
		b, err := io.ReadAll(c)
		if err != nil || !strings.HasSuffix(string(b), "\r\n\r\nok\n") {
			t.Fatalf("nginx answered %q, %v", b, err)
		}
		s.WaitFile(t, "access.log", "192.0.2.7 GET /hello HTTP/1.0")
	})
	if addr == "" {
		return // skipped or failed
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("nginx still answers on %s after its test ended", addr)
	}
}
