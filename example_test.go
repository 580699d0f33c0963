package diglett_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/diglett/diglett"

	"github.com/diglett/diglett/auth/allowall"
	"github.com/diglett/diglett/gateway"
)

// startExampleGateway runs a gateway on loopback, as diglett-server would
// on a public host, and returns its agent address and the fingerprint of
// its key, which an agent pins ("SHA256:" and the unpadded base64 of the
// SHA-256 of the public key in PKIX form).
func startExampleGateway() (addr, fingerprint string, stop func()) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		log.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		log.Fatal(err)
	}
	sum := sha256.Sum256(pub)
	fingerprint = "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])

	srv, err := gateway.New(gateway.Config{
		TLS:        &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}},
		Auth:       allowall.Authenticator{},
		PublicHost: "127.0.0.1",
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
	return ln.Addr().String(), fingerprint, func() { srv.Close() }
}

// Publish an HTTP handler through a gateway, with no agent process: the
// listener's connections are the gateway's visitors.
func Example() {
	dir, _ := os.MkdirTemp("", "diglett-example")
	defer os.RemoveAll(dir)
	gatewayAddr, fingerprint, stop := startExampleGateway()
	defer stop()

	ln, err := diglett.Listen(context.Background(), diglett.Config{
		Gateway:       gatewayAddr, // e.g. "gateway.example.com:20000"
		Transport:     diglett.TransportTCP,
		Name:          "example",
		Fingerprint:   fingerprint, // or pinned on first use
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

// Publish a local service through a gateway, as the diglett agent does:
// Forward connects every visitor to the service, and when its context
// ends (on SIGTERM, say) it lets the open connections finish before it
// returns.
func ExampleForward() {
	gatewayAddr, fingerprint, stop := startExampleGateway()
	defer stop()

	// The local service, e.g. "localhost:3000".
	svc, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer svc.Close()
	go http.Serve(svc, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello from the local service")
	}))

	ln, err := diglett.Listen(context.Background(), diglett.Config{
		Gateway:     gatewayAddr, // e.g. "gateway.example.com:20000"
		Transport:   diglett.TransportTCP,
		Name:        "web",
		Fingerprint: fingerprint,
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- diglett.Forward(ctx, ln, svc.Addr().String(), diglett.ForwardOptions{DrainTimeout: 5 * time.Second})
	}()

	// Anyone can now reach the service on the gateway's public port.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		log.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Print(string(body))

	cancel() // stop: drain, then disconnect
	fmt.Println("forward:", <-done)
	// Output:
	// hello from the local service
	// forward: <nil>
}
