package servercli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/diglett/diglett/admin"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/cli"
	"github.com/diglett/diglett/register/traefik"
)

// The gateway's management listener (--admin-addr): the admin package's
// handler over the gateway, the reloads of reload.go and the gateway's
// readiness; and "diglett-server status", its client.

// defaultAdminAddr is the address the status command asks by default, and
// the one the documentation suggests for --admin-addr.
const defaultAdminAddr = "127.0.0.1:20001"

// errNoReloadSource answers a reload asked for through the API when the
// gateway has nothing to reload.
var errNoReloadSource = fmt.Errorf("no --tokens or --config file: %w", admin.ErrNothingToReload)

// reloadRequest asks the reload loop (serveReloads) for a reload, as a
// SIGHUP does; the outcome is sent on done, which has room for it.
type reloadRequest struct {
	done chan<- reloadResult
}

// reloadResult is a reload's outcome: the attributes of its log line.
type reloadResult struct {
	changes []any
	err     error
}

// reloadVia returns the admin API's reload: a request to the reload loop
// on requests, answered within ctx.
func reloadVia(requests chan<- reloadRequest) admin.ReloadFunc {
	return func(ctx context.Context) (map[string]any, error) {
		done := make(chan reloadResult, 1)
		select {
		case requests <- reloadRequest{done: done}:
		case <-ctx.Done():
			return nil, fmt.Errorf("reload not started: %w", ctx.Err())
		}
		select {
		case res := <-done:
			if res.err != nil {
				return nil, res.err
			}
			return changeMap(res.changes), nil
		case <-ctx.Done():
			return nil, fmt.Errorf("reload still running (see the gateway's log): %w", ctx.Err())
		}
	}
}

// changeMap turns log attributes (key, value, key, value...) into a map.
func changeMap(attrs []any) map[string]any {
	m := make(map[string]any, len(attrs)/2)
	for i := 0; i+1 < len(attrs); i += 2 {
		if k, ok := attrs[i].(string); ok {
			m[k] = attrs[i+1]
		}
	}
	return m
}

// adminAddr is the management listener's address from --admin-addr, or
// from --debug-addr, its deprecated name; "" when off.
func (c *serverCmd) adminAddr(log *slog.Logger) (string, error) {
	if c.DebugAddr == "" {
		return c.AdminAddr, nil
	}
	if c.AdminAddr != "" && c.AdminAddr != c.DebugAddr {
		return "", errors.New("--debug-addr is the old name of --admin-addr: give only --admin-addr")
	}
	log.Warn("--debug-addr is deprecated: use --admin-addr (the profiler moved to the management listener)", "addr", c.DebugAddr)
	return c.DebugAddr, nil
}

// adminServer is the management listener.
type adminServer struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}

	// state is adminStarting, adminReady or adminStopping.
	state atomic.Int32
}

const (
	adminStarting int32 = iota
	adminReady
	adminStopping
)

// listenAdmin opens the management listener on addr. Anywhere but a
// loopback address it needs a token (tokenFile), which is returned.
func listenAdmin(addr, tokenFile string) (net.Listener, string, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, "", fmt.Errorf("--admin-addr %q: want HOST:PORT, e.g. %s", addr, defaultAdminAddr)
	}
	var token string
	if tokenFile != "" {
		if token, err = readAdminToken(tokenFile); err != nil {
			return nil, "", err
		}
	}
	refused := fmt.Errorf("--admin-addr %s is not a loopback address: the management API shows every tunnel and can disconnect agents, so anywhere but loopback it needs --admin-token-file FILE (a file holding a bearer token); or use %s", addr, defaultAdminAddr)
	if token == "" && !loopbackHost(host) {
		return nil, "", refused
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("listen for the management API (--admin-addr): %w", err)
	}
	if ta, ok := ln.Addr().(*net.TCPAddr); token == "" && (!ok || !ta.IP.IsLoopback()) {
		ln.Close()
		return nil, "", refused
	}
	return ln, token, nil
}

// loopbackHost reports whether host names a loopback address.
func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// maxAdminTokenBytes bounds a token file.
const maxAdminTokenBytes = 4096

// readAdminToken reads the bearer token of file: its content without
// surrounding white space.
func readAdminToken(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", fmt.Errorf("--admin-token-file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxAdminTokenBytes+1))
	if err != nil {
		return "", fmt.Errorf("--admin-token-file: %w", err)
	}
	if len(data) > maxAdminTokenBytes {
		return "", fmt.Errorf("--admin-token-file %s: longer than %d bytes: want one token", file, maxAdminTokenBytes)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("--admin-token-file %s: empty: write a long random token in it, e.g. with: openssl rand -hex 32", file)
	}
	if strings.ContainsAny(token, " \t\r\n") {
		return "", fmt.Errorf("--admin-token-file %s: want one token on one line, without spaces", file)
	}
	return token, nil
}

// startAdmin serves the management API for gw on ln until close; reloads
// go to requests. metrics, if not nil, is served at /metrics, and page,
// if not nil, at / (admin.Config.Page).
func startAdmin(ln net.Listener, token string, gw admin.Gateway, requests chan<- reloadRequest, metrics http.Handler, extra map[string]http.Handler, page http.Handler, log *slog.Logger) (*adminServer, error) {
	a := &adminServer{ln: ln, done: make(chan struct{})}
	h, err := admin.Handler(admin.Config{
		Gateway: gw,
		Reload:  reloadVia(requests),
		Ready:   a.ready,
		Token:   token,
		Metrics: metrics,
		Extra:   extra,
		Page:    page,
		Logger:  log,
	})
	if err != nil {
		return nil, err
	}
	a.srv = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	go func() {
		defer close(a.done)
		if err := a.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("management listener stopped", "err", err)
		}
	}()
	addr := ln.Addr().String()
	log.Info("serving the management API", "addr", addr, "url", "http://"+addr+"/api/v1/", "token", token != "")
	log.Info("serving the profiler", "url", "http://"+addr+"/debug/pprof/")
	if page != nil {
		log.Info("serving the dashboard", "url", "http://"+addr+"/")
	}
	return a, nil
}

// ready is the gateway's readiness for /readyz.
func (a *adminServer) ready() error {
	switch a.state.Load() {
	case adminStarting:
		return errors.New("starting")
	case adminStopping:
		return errors.New("shutting down")
	}
	return nil
}

func (a *adminServer) setState(s int32) {
	if a != nil {
		a.state.Store(s)
	}
}

// close stops the listener and waits for it.
func (a *adminServer) close() {
	if a == nil {
		return
	}
	a.srv.Close()
	<-a.done
}

// statusCmd is "diglett-server status".
type statusCmd struct {
	AdminAddr      string `name:"admin-addr" default:"127.0.0.1:20001" placeholder:"ADDR" help:"Address of the gateway's management listener (its --admin-addr)."`
	AdminTokenFile string `name:"admin-token-file" type:"existingfile" placeholder:"FILE" help:"File holding the listener's bearer token (its --admin-token-file)."`
	JSON           bool   `name:"json" help:"Print the tunnels as the API gives them, in JSON."`
}

const statusDesc = "Print the live tunnels of a running gateway, from its management listener (--admin-addr)."

// statusTimeout bounds the status command's request.
const statusTimeout = 10 * time.Second

// status runs "diglett-server status".
func status(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c statusCmd
	if err := cli.Parse(&c, "diglett-server status", statusDesc, args, stdout, stderr); err != nil {
		return err
	}
	var token string
	if c.AdminTokenFile != "" {
		var err error
		if token, err = readAdminToken(c.AdminTokenFile); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.AdminAddr+"/api/v1/tunnels", nil)
	if err != nil {
		return fmt.Errorf("status: --admin-addr %q: want HOST:PORT", c.AdminAddr)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	client := &http.Client{Timeout: statusTimeout}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("status: cannot reach the management listener at %s (is the gateway running with --admin-addr %s?): %w", c.AdminAddr, c.AdminAddr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("status: read the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		msg := resp.Status
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		if resp.StatusCode == http.StatusUnauthorized && token == "" {
			return fmt.Errorf("status: the management listener at %s wants a token: give --admin-token-file FILE (%s)", c.AdminAddr, msg)
		}
		return fmt.Errorf("status: %s answered %d: %s", c.AdminAddr, resp.StatusCode, msg)
	}
	if c.JSON {
		_, err := stdout.Write(body)
		return err
	}
	var list struct {
		Tunnels []gateway.TunnelInfo `json:"tunnels"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return fmt.Errorf("status: %s did not answer as a diglett management listener: %w", c.AdminAddr, err)
	}
	return printTunnels(stdout, list.Tunnels, time.Now())
}

// printTunnels prints tunnels as a table.
func printTunnels(w io.Writer, tunnels []gateway.TunnelInfo, now time.Time) error {
	if len(tunnels) == 0 {
		_, err := fmt.Fprintln(w, "no tunnels")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tPORT\tSTATE\tMEMBERS\tVISITORS\tIDENTITY\tHOSTS")
	for _, t := range tunnels {
		state := t.State
		if t.State == gateway.StateLeased && !t.LeaseEnds.IsZero() {
			state += " (" + t.LeaseEnds.Sub(now).Round(time.Second).String() + " left)"
		}
		port := "-"
		if t.Port != 0 {
			port = strconv.Itoa(t.Port)
			if t.Protocol == "udp" {
				// A UDP tunnel's port says so; TCP's stays a number.
				port = "udp/" + port
			}
		}
		members := make([]string, len(t.Members))
		for i, m := range t.Members {
			members[i] = m.Address + "/" + m.Transport
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", t.Name, port, state, orDash(strings.Join(members, ",")),
			t.Visitors, t.Identity, orDash(strings.Join(t.Hosts, ",")))
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// traefikProvider serves, at /traefik of the management listener, the
// whole dynamic configuration of the traefik registerer in force (the
// first of the register list), for a proxy polling it with its http
// provider; 404 when no traefik registerer is in force. It follows
// reloads.
type traefikProvider struct{ held *heldAuth }

func (p traefikProvider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.held.mu.Lock()
	var tr *traefik.Registerer
	for _, rg := range p.held.regs {
		if t, ok := rg.(*traefik.Registerer); ok {
			tr = t
			break
		}
	}
	p.held.mu.Unlock()
	if tr == nil {
		http.Error(w, "no traefik registerer in the register list", http.StatusNotFound)
		return
	}
	tr.Handler().ServeHTTP(w, r)
}
