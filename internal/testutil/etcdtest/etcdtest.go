// Package etcdtest starts a real etcd (the etcd program, which
// scripts/test-deps.sh installs) for a test: one member on loopback ports
// of its own, its data in the test's temporary directory, killed when the
// test ends.
package etcdtest

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/diglett/diglett/internal/testutil"
)

// startTimeout bounds how long etcd may take to answer.
const startTimeout = 20 * time.Second

// Server is a running etcd.
type Server struct {
	// Endpoint is its client URL, http://127.0.0.1:PORT (https:// with
	// StartTLS).
	Endpoint string
	// Client is a client of it, closed when the test ends.
	Client *clientv3.Client
	// With StartTLS: the PEM files of the CA that signed the server's
	// and the client's certificates, and of a client certificate and
	// key it takes.
	CAFile, ClientCertFile, ClientKeyFile string
}

// Start starts etcd for t. When the program is missing, t fails under CI
// and is skipped elsewhere.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := testutil.Program(t, "etcd")
	// A port picked free may be taken before etcd binds it: try again.
	return testutil.StartRetrying(t, "etcd", func() (*Server, error) { return start(t, bin, nil) })
}

// StartTLS starts etcd for t serving its clients over TLS, with a
// certificate of a CA of the test's, and asking them for a client
// certificate of that CA.
func StartTLS(t testing.TB) *Server {
	t.Helper()
	bin := testutil.Program(t, "etcd")
	files, err := writeTLSFiles(t.TempDir())
	if err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	return testutil.StartRetrying(t, "etcd", func() (*Server, error) { return start(t, bin, files) })
}

func start(t testing.TB, bin string, tf *tlsFiles) (*Server, error) {
	ports, err := testutil.FreePorts(2)
	if err != nil {
		return nil, err
	}
	client, peer := ports[0], ports[1]
	scheme := "http"
	if tf != nil {
		scheme = "https"
	}
	clientURL := scheme + "://127.0.0.1:" + strconv.Itoa(client)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peer)
	out := &testutil.Buffer{}
	args := []string{}
	if tf != nil {
		args = append(args, "--cert-file", tf.serverCert, "--key-file", tf.serverKey,
			"--trusted-ca-file", tf.ca, "--client-cert-auth")
	}
	cmd := exec.Command(bin, append(args,
		"--name", "test",
		"--data-dir", t.TempDir(),
		"--listen-client-urls", clientURL,
		"--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL,
		"--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "test="+peerURL,
		"--initial-cluster-state", "new",
		"--logger", "zap",
		"--log-level", "warn",
	)...)
	cmd.Stdout, cmd.Stderr = out, out
	exited, stop, err := testutil.StartProcess(cmd)
	if err != nil {
		return nil, err
	}

	cc := clientv3.Config{
		Endpoints:   []string{clientURL},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	}
	if tf != nil {
		if cc.TLS, err = tf.clientConfig(); err != nil {
			stop()
			return nil, err
		}
	}
	cli, err := clientv3.New(cc)
	if err != nil {
		stop()
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	for {
		sctx, scancel := context.WithTimeout(ctx, time.Second)
		_, err = cli.Status(sctx, clientURL)
		scancel()
		if err == nil {
			break
		}
		select {
		case werr := <-exited:
			cli.Close()
			return nil, fmt.Errorf("exited (%v): %s", werr, out.String())
		case <-ctx.Done():
			cli.Close()
			stop()
			return nil, fmt.Errorf("not healthy within %v: %v: %s", startTimeout, err, out.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Cleanup(func() {
		cli.Close()
		stop()
	})
	srv := &Server{Endpoint: clientURL, Client: cli}
	if tf != nil {
		srv.CAFile, srv.ClientCertFile, srv.ClientKeyFile = tf.ca, tf.clientCert, tf.clientKey
	}
	return srv, nil
}
