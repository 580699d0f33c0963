package diglett_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"

	"github.com/diglett/diglett"

	"github.com/diglett/diglett/auth/allowall"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/identity"
)

// startExampleGateway runs a gateway on loopback, as diglett-server would
// on a public host.
func startExampleGateway(dir string) (addr string, stop func()) {
	key, _, err := identity.LoadOrCreateKey(dir)
	if err != nil {
		log.Fatal(err)
	}
	cert, err := identity.SelfSigned(key)
	if err != nil {
		log.Fatal(err)
	}
	srv, err := gateway.New(gateway.Config{
		TLS:        &tls.Config{Certificates: []tls.Certificate{cert}},
		Auth:       allowall.Authenticator{},
		PublicHost: "127.0.0.1",
		PortMin:    45000,
		PortMax:    45999,
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(ln)
	return ln.Addr().String(), func() { srv.Close() }
}

// Publish an HTTP handler through a gateway, with no agent process: the
// listener's connections are the gateway's visitors.
func Example() {
	dir, _ := os.MkdirTemp("", "diglett-example")
	defer os.RemoveAll(dir)
	gatewayAddr, stop := startExampleGateway(dir)
	defer stop()

	ln, err := diglett.Listen(context.Background(), diglett.Config{
		Gateway:       gatewayAddr, // e.g. "gateway.example.com:20000"
		Name:          "example",
		KnownGateways: filepath.Join(dir, "known_gateways"),
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello from behind the NAT")
	}))

	// Anyone can now reach the handler on the gateway's public port.
	resp, err := http.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Print(string(body))
	// Output: hello from behind the NAT
}
