package e2e

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	gojwt "github.com/golang-jwt/jwt/v5"

	"github.com/diglett/diglett/config"
	"github.com/diglett/diglett/internal/testutil/etcdtest"
)

// gatewayWithAuth writes a gateway config file whose only auth module is
// module, and runs the server command with it.
func gatewayWithAuth(t *testing.T, dir, module string) (*serverCommand, []string) {
	t.Helper()
	lo, hi := randomPortWindow()
	gw := writeFile(t, dir, "gateway.yaml", fmt.Sprintf(`version: 1
listen: 127.0.0.1:0
data_dir: state
ports: %d-%d
public_bind: 127.0.0.1
quic: false
auth:
  - jwt: %s
register:
  - log: {}
`, lo, hi, module))
	srv := startServerCommand(t, "--config", gw)
	common := []string{"-g", srv.Addr, "--fingerprint", srv.Fingerprint, "--known-gateways", filepath.Join(dir, "known_gateways"), "--transport", "tcp", "--connections", "1"}
	return srv, common
}

// waitExit waits for the agent command a to end on its own, within
// eventually, and returns its error, which the test then checks (so the
// command's cleanup does not report it again).
func waitExit(t *testing.T, a *agentCommand, what string) error {
	t.Helper()
	select {
	case err := <-a.errc:
		a.stopOnce.Do(func() {})
		return err
	case <-time.After(eventually):
		t.Fatalf("%s: the agent is still running\nstdout:\n%s\nstderr:\n%s", what, &a.stdout, &a.stderr)
		return nil
	}
}

// TestJWTEtcdRegistry runs the gateway with the jwt module over a real
// etcd: agents signing with their identity keys publish the names etcd
// says they own, and a change in etcd (a name given to another identity,
// an identity removed) closes the sessions it takes the right from, with
// the reason, while the others go on.
func TestJWTEtcdRegistry(t *testing.T) {
	parallel(t)
	etcd := etcdtest.Start(t)
	dir := t.TempDir()
	alice := keygen(t, filepath.Join(dir, "alice.key"))
	bob := keygen(t, filepath.Join(dir, "bob.key"))
	put := func(key, value string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), eventually)
		defer cancel()
		if _, err := etcd.Client.Put(ctx, "/gw1"+key, value); err != nil {
			t.Fatal(err)
		}
	}
	del := func(key string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), eventually)
		defer cancel()
		if _, err := etcd.Client.Delete(ctx, "/gw1"+key); err != nil {
			t.Fatal(err)
		}
	}
	put("/identities/alice", alice.public)
	put("/identities/bob", bob.public)
	put("/names/web", "alice")
	put("/names/api", bob.id)

	srv, common := gatewayWithAuth(t, dir, fmt.Sprintf("{etcd: [%s], etcd_prefix: /gw1, audience: [127.0.0.1]}", etcd.Endpoint))
	web := startAgentCommand(t, append(common, "--identity-key", alice.file, "-n", "web", startGreeter(t, "hello from web"))...)
	webAddr := web.tunnel(t, "web")
	api := startAgentCommand(t, append(common, "--identity-key", bob.file, "-n", "api", startGreeter(t, "hello from api"))...)
	apiAddr := api.tunnel(t, "api")
	if got := readGreeting(t, webAddr); got != "hello from web" {
		t.Fatalf("tunnel web answered %q", got)
	}
	if got := readGreeting(t, apiAddr); got != "hello from api" {
		t.Fatalf("tunnel api answered %q", got)
	}
	_, _, err := runAgent(t, append(common, "--identity-key", bob.file, "-n", "web", startGreeter(t, "x"))...)
	if err == nil || !strings.Contains(err.Error(), "name owned by another identity") {
		t.Fatalf("bob asking for alice's name: %v, want refused", err)
	}

	// The refused agent has exited; its session ends at the gateway once
	// the hang-up arrives, which may be after the next change is seen.
	waitFor(t, "server log", &srv.stderr, `msg="agent disconnected"`)

	// A change that takes nothing from anyone: both sessions go on.
	put("/names/docs", "alice")
	waitFor(t, "server log", &srv.stderr, "sessions_kept=2 sessions_closed=0")
	if got := readGreeting(t, webAddr); got != "hello from web" {
		t.Fatalf("tunnel web after an unrelated change answered %q", got)
	}

	// web is given to bob: alice's agent is told and exits.
	put("/names/web", "bob")
	err = waitExit(t, web, "web given to bob")
	if err == nil || !strings.Contains(err.Error(), `name "web" is no longer allowed for this token`) {
		t.Fatalf("alice's agent after web was given to bob: %v, want the reason", err)
	}
	waitFor(t, "server log", &srv.stderr, "sessions_kept=1 sessions_closed=1")
	if got := readGreeting(t, apiAddr); got != "hello from api" {
		t.Fatalf("tunnel api after web changed hands answered %q", got)
	}

	// bob's identity is removed: his session is closed too.
	del("/identities/bob")
	err = waitExit(t, api, "bob removed")
	if err == nil || !strings.Contains(err.Error(), "token revoked by the gateway's operator") {
		t.Fatalf("bob's agent after his identity was removed: %v, want the reason", err)
	}
	_, _, err = runAgent(t, append(common, "--identity-key", bob.file, "-n", "api", startGreeter(t, "x"))...)
	if err == nil || !strings.Contains(err.Error(), "unknown identity key") {
		t.Fatalf("bob logging in after his identity was removed: %v, want unknown identity key", err)
	}
	srv.stop()
	if strings.Contains(srv.stderr.String(), "etcd watch failed") {
		t.Errorf("the watch failed:\n%s", &srv.stderr)
	}
}

// identityProvider is a test OpenID Connect provider: it serves the JWKS
// of its RSA key and signs RS256 tokens.
type identityProvider struct {
	*httptest.Server
	key     *rsa.PrivateKey
	kid     string
	fetches atomic.Int64
}

const testIssuer = "https://idp.test"

func newIdentityProvider(t *testing.T) *identityProvider {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p := &identityProvider{key: key, kid: "idp-key-1"}
	set, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: &key.PublicKey, KeyID: p.kid, Algorithm: "RS256", Use: "sig"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/keys" {
			http.NotFound(w, r)
			return
		}
		p.fetches.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.Write(set)
	}))
	t.Cleanup(p.Close)
	return p
}

// token signs claims (with iss, aud, sub, iat and exp filled in unless
// given) with key under kid.
func (p *identityProvider) token(t *testing.T, key *rsa.PrivateKey, kid string, claims gojwt.MapClaims) string {
	t.Helper()
	now := time.Now()
	c := gojwt.MapClaims{
		"iss": testIssuer,
		"aud": "127.0.0.1",
		"sub": "system:serviceaccount:apps:web",
		"iat": now.Unix(),
		"exp": now.Add(10 * time.Minute).Unix(),
	}
	for k, v := range claims {
		c[k] = v
	}
	tok := gojwt.NewWithClaims(gojwt.SigningMethodRS256, c)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestJWTIdentityProvider runs the gateway with the jwt module taking
// tokens of an identity provider (issuer, its JWKS, names from a claim of
// their own), as a company's provider or a cluster's service-account
// tokens; agents present them with -t.
func TestJWTIdentityProvider(t *testing.T) {
	parallel(t)
	idp := newIdentityProvider(t)
	dir := t.TempDir()
	srv, common := gatewayWithAuth(t, dir, fmt.Sprintf(
		"{jwks_url: %q, issuer: %s, audience: [127.0.0.1], names_claim: diglett_names, owners: false, cache: 1m, cache_size: 100}",
		idp.URL+"/keys", testIssuer))

	good := idp.token(t, idp.key, idp.kid, gojwt.MapClaims{"diglett_names": []string{"web", "docs-*"}})
	a := startAgentCommand(t, append(common, "-t", good, "-n", "web", startGreeter(t, "hello from web"))...)
	if got := readGreeting(t, a.tunnel(t, "web")); got != "hello from web" {
		t.Fatalf("tunnel web answered %q", got)
	}
	waitFor(t, "server log", &srv.stderr, "identity=oidc:system:serviceaccount:apps:web")

	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, token, tunnel, want string
	}{
		{"pattern", good, "docs-v2", ""},
		{"name not in claim", good, "api", "name not in token"},
		{"wrong issuer", idp.token(t, idp.key, idp.kid, gojwt.MapClaims{"iss": "https://evil.test", "diglett_names": "web"}), "web", "wrong issuer"},
		{"wrong audience", idp.token(t, idp.key, idp.kid, gojwt.MapClaims{"aud": "other.example", "diglett_names": "web"}), "web", "wrong audience"},
		{"expired", idp.token(t, idp.key, idp.kid, gojwt.MapClaims{"exp": time.Now().Add(-time.Hour).Unix(), "diglett_names": "web"}), "web", "token expired"},
		{"key not in the set", idp.token(t, other, "made-up", gojwt.MapClaims{"diglett_names": "web"}), "web", "unknown identity key"},
		{"set's kid, other key", idp.token(t, other, idp.kid, gojwt.MapClaims{"diglett_names": "web"}), "web", "bad signature"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.want == "" {
				b := startAgentCommand(t, append(common, "-t", tc.token, "-n", tc.tunnel, startGreeter(t, "hello from "+tc.tunnel))...)
				if got := readGreeting(t, b.tunnel(t, tc.tunnel)); got != "hello from "+tc.tunnel {
					t.Fatalf("tunnel %s answered %q", tc.tunnel, got)
				}
				return
			}
			_, _, err := runAgent(t, append(common, "-t", tc.token, "-n", tc.tunnel, startGreeter(t, "x"))...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("agent: %v, want refused with %q", err, tc.want)
			}
		})
	}
	// The key set was fetched once for all of these: the made-up kid
	// comes within the refetch bound of the first fetch.
	if n := idp.fetches.Load(); n != 1 {
		t.Errorf("the provider's key set was fetched %d times, want 1", n)
	}
	if err := a.stop(); err != nil {
		t.Errorf("agent: %v", err)
	}
	srv.stop()
}

// TestJWTRegistrySettings checks the settings of the jwt module's HTTP
// and etcd registries as the gateway reads them from its config file.
func TestJWTRegistrySettings(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	writeFile(t, dir, "identities.yaml", "identities: {}\n")
	for _, tc := range []struct{ module, want string }{
		{"{jwks_url: https://idp.test/keys, owners: false, audience: [gw], cache: 1m, cache_size: 10}", ""},
		{"{jwks_url: https://idp.test/keys, names_url: https://reg.test/owner, audience: [gw]}", ""},
		{"{jwks_url: https://idp.test/keys, audience: [gw]}", "jwks_url without names_url"},
		{"{jwks_url: https://idp.test/keys, owners: true, audience: [gw]}", "jwks_url without names_url"},
		{"{jwks_url: ftp://idp.test/keys, owners: false, audience: [gw]}", "jwks url: \"ftp://idp.test/keys\": not an http or https url"},
		{"{jwks_url: https://idp.test/keys, names_url: /owner, audience: [gw]}", "names url"},
		{"{jwks_url: https://idp.test/keys, owners: false, cache_size: -1, audience: [gw]}", "negative max entries"},
		{"{jwks_url: https://idp.test/keys, owners: false, cache: 1 minute, audience: [gw]}", "jwt.cache: want a duration"},
		{"{jwks_url: https://idp.test/keys, etcd: [http://127.0.0.1:1], audience: [gw]}", "want exactly one registry"},
		{"{identities: identities.yaml, etcd_prefix: /x, audience: [gw]}", "etcd_prefix goes with etcd, not identities"},
		{"{etcd: [http://127.0.0.1:1], names_url: https://reg.test/owner, audience: [gw]}", "names_url goes with jwks_url, not etcd"},
		{"{etcd: [], audience: [gw]}", "no etcd endpoints"},
		{"{etcd: [http://127.0.0.1:1], etcd_prefix: diglett, audience: [gw]}", "want a leading slash"},
		{"{etcd: {a: b}, audience: [gw]}", "jwt.etcd: want a list of strings"},
		{"{etcd: [http://127.0.0.1:1], audience: [gw]}", "etcd [http://127.0.0.1:1]: load /diglett/identities/"},
	} {
		t.Run(tc.module, func(t *testing.T) {
			file := writeFile(t, dir, "gateway.yaml", "version: 1\nauth:\n  - jwt: "+tc.module+"\n")
			f, err := config.LoadServer(file, config.Schema{})
			if err == nil {
				_, err = f.Authenticators(config.Env{})
			}
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("jwt: %s: %v", tc.module, err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("jwt: %s: %v, want %q", tc.module, err, tc.want)
			}
		})
	}
}
