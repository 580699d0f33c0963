package gateway_test

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
	"github.com/diglett/diglett/gateway"
)

// announcer is a Registerer: it tells events when a tunnel goes live and
// when it goes away. A real one would update a reverse proxy or a DNS
// zone.
type announcer struct {
	events chan string
}

func (a announcer) Register(ctx context.Context, r gateway.Route) (io.Closer, error) {
	a.events <- fmt.Sprintf("register %s for %s", r.Name, r.Identity)
	return closer(func() error {
		a.events <- "unregister " + r.Name
		return nil
	}), nil
}

type closer func() error

func (c closer) Close() error { return c() }

// selfSigned makes the gateway's key and certificate, and the fingerprint
// an agent pins: "SHA256:" and the unpadded base64 of the SHA-256 of the
// public key in PKIX form.
func selfSigned() (tls.Certificate, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return tls.Certificate{}, "", err
	}
	sum := sha256.Sum256(pub)
	fp := "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, fp, nil
}

// A gateway with its own Authenticator and Registerer, embedded in a
// program, and an app published through it with diglett.Listen.
func Example() {
	cert, fingerprint, err := selfSigned()
	if err != nil {
		log.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	// Agents log in with the token "s3cret" and may publish names that
	// start with "demo".
	auth := gateway.AuthFuncs{
		AuthenticateFunc: func(ctx context.Context, c gateway.Credentials) (gateway.Identity, error) {
			if c.Token != "s3cret" {
				return gateway.Identity{}, gateway.ErrUnauthorized
			}
			return gateway.Identity{Name: "alice"}, nil
		},
		AuthorizeFunc: func(ctx context.Context, id gateway.Identity, name string) error {
			if len(name) < 4 || name[:4] != "demo" {
				return gateway.ErrForbidden
			}
			return nil
		},
	}
	events := make(chan string, 4)
	srv, err := gateway.New(gateway.Config{
		TLS:        &tls.Config{Certificates: []tls.Certificate{cert}},
		Auth:       auth,
		Registerer: announcer{events},
		PublicHost: "127.0.0.1", // where the tunnels' public ports listen
		Lease:      time.Second, // how long an offline agent's name is kept
		Logger:     quiet,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	agents, err := net.Listen("tcp", "127.0.0.1:0") // e.g. ":20000"
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(agents)

	// The app, anywhere behind a NAT: its listener's connections come
	// from the gateway.
	dir, err := os.MkdirTemp("", "diglett-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ln, err := diglett.Listen(context.Background(), diglett.Config{
		Gateway:       agents.Addr().String(),
		Transport:     diglett.TransportTCP,
		Name:          "demo",
		Token:         "s3cret",
		Fingerprint:   fingerprint,
		KnownGateways: filepath.Join(dir, "known_gateways"),
		Logger:        quiet,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(<-events)
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello from behind the NAT")
	}))

	// A visitor reaches the app on the tunnel's public port.
	resp, err := http.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		log.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Print(string(body))

	// The app goes away; its route stays through the lease, then goes.
	ln.Close()
	fmt.Println(<-events)

	// Output:
	// register demo for alice
	// hello from behind the NAT
	// unregister demo
}
