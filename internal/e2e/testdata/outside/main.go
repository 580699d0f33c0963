// Command outside is a program in its own module that embeds the diglett
// gateway with an Authenticator and a Registerer of its own, publishes an
// app through it with diglett.Listen, and prints what its modules saw.
// The outside-module test builds and runs it; it uses only public
// packages, as any program outside the diglett module must.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/diglett/diglett"
	"github.com/diglett/diglett/gateway"
)

// teamAuth lets agents in by team token; a team may publish only names
// that start with its own name and a dash.
type teamAuth struct {
	tokens map[string]string // token -> team
}

var _ gateway.Authenticator = teamAuth{}

func (a teamAuth) Authenticate(ctx context.Context, c gateway.Credentials) (gateway.Identity, error) {
	team, ok := a.tokens[c.Token]
	if !ok {
		return gateway.Identity{}, fmt.Errorf("unknown token: %w", gateway.ErrUnauthorized)
	}
	return gateway.Identity{Name: team, Claims: map[string]any{"team": team}}, nil
}

func (a teamAuth) Authorize(ctx context.Context, id gateway.Identity, name string) error {
	team, _ := id.Claims["team"].(string)
	if !strings.HasPrefix(name, team+"-") {
		return fmt.Errorf("%s is not %s's: %w", name, team, gateway.ErrForbidden)
	}
	return nil
}

// routeBook is a Registerer that reports every route that goes live and
// away on events.
type routeBook struct {
	events chan string
}

var _ gateway.Registerer = routeBook{}

func (b routeBook) Register(ctx context.Context, r gateway.Route) (io.Closer, error) {
	b.events <- "register " + r.Name + " identity=" + r.Identity + " port=" + strconv.Itoa(r.Port)
	return unregister(func() error {
		b.events <- "unregister " + r.Name
		return nil
	}), nil
}

type unregister func() error

func (f unregister) Close() error { return f() }

func main() {
	// Never hang: the test waits for this program.
	time.AfterFunc(60*time.Second, func() {
		fmt.Fprintln(os.Stderr, "outside: timed out")
		os.Exit(2)
	})
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "outside:", err)
		os.Exit(1)
	}
}

func run() error {
	cert, fingerprint, err := selfSigned()
	if err != nil {
		return err
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	book := routeBook{events: make(chan string, 8)}
	srv, err := gateway.New(gateway.Config{
		TLS:        &tls.Config{Certificates: []tls.Certificate{cert}},
		Auth:       teamAuth{tokens: map[string]string{"blue-token": "blue"}},
		Registerer: book,
		PublicHost: "127.0.0.1",
		// A route is kept through its tunnel's lease: a short one shows
		// the unregistering soon after the agent leaves.
		Lease:  time.Second,
		Logger: quiet,
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	agents, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go srv.Serve(agents)

	dir, err := os.MkdirTemp("", "outside")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	agent := func(name, token string) (*diglett.Listener, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return diglett.Listen(ctx, diglett.Config{
			Gateway:       agents.Addr().String(),
			Transport:     diglett.TransportTCP,
			Name:          name,
			Token:         token,
			Fingerprint:   fingerprint,
			KnownGateways: filepath.Join(dir, "known_gateways"),
			Logger:        quiet,
		})
	}

	// The Authenticator refuses a wrong token and a name of another team.
	if _, err := agent("blue-app", "wrong"); errors.Is(err, diglett.ErrUnauthorized) {
		fmt.Println("wrong token: refused")
	} else {
		return fmt.Errorf("wrong token: got %v", err)
	}
	if _, err := agent("red-app", "blue-token"); errors.Is(err, diglett.ErrNameRefused) {
		fmt.Println("other team's name: refused")
	} else {
		return fmt.Errorf("other team's name: got %v", err)
	}

	ln, err := agent("blue-app", "blue-token")
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ev, err := next(book.events)
	if err != nil {
		return err
	}
	fmt.Println(strings.Replace(ev, "port="+port, "port=<public port>", 1))

	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s from outside the module", r.URL.Path[1:])
	}))
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + ln.Addr().String() + "/visitor")
	if err != nil {
		return fmt.Errorf("request: %w", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("request: %w", err)
	}
	fmt.Printf("response: %d %s\n", resp.StatusCode, body)

	ln.Close()
	if ev, err = next(book.events); err != nil {
		return err
	}
	fmt.Println(ev)
	return nil
}

// next is the registerer's next event.
func next(events <-chan string) (string, error) {
	select {
	case ev := <-events:
		return ev, nil
	case <-time.After(20 * time.Second):
		return "", errors.New("registerer not called within 20s")
	}
}

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
