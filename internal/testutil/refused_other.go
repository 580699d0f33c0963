//go:build !unix

package testutil

import (
	"net"
	"testing"
)

// RefusedAddr returns a 127.0.0.1 TCP address where nothing listened a
// moment ago.
func RefusedAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
