package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/diglett/diglett/internal/testutil"
)

// TestDashboardPage drives the gateway's dashboard in a headless browser:
// on a management listener with a token, the page asks for the token,
// then shows a tunnel an agent command registers, a chart of the requests
// sent through it, a warning of the gateway's log, and drops the tunnel's
// row once the agent is gone and its lease has ended. With
// DIGLETT_SCREENSHOT=1 it also writes docs/dashboard.png.
func TestDashboardPage(t *testing.T) {
	parallel(t)
	browser := testutil.Program(t, "chromium")
	screenshot := os.Getenv("DIGLETT_SCREENSHOT") == "1"

	const token = "dashboard-test-token"
	tokenFile := filepath.Join(t.TempDir(), "admin-token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, adm := adminServer(t, "--admin-token-file", tokenFile, "--lease", "2s",
		"--domain", "dash.test", "--http-addr", "127.0.0.1:0", "--max-visitors-per-tunnel", "1")
	httpAddr := logged(t, s, httpLine)
	a := startAgentCommand(t, "-g", s.Addr, "-n", "web", "--fingerprint", s.Fingerprint,
		"--known-gateways", filepath.Join(t.TempDir(), "known_gateways"), nameBackend(t, "web"))
	public := a.tunnel(t, "web")

	ctx := inspectorBrowser(t, browser)
	run, eval := pageActions(t, ctx)
	const rows = `Array.from(document.querySelectorAll("#tunnels tbody tr")).map(r => r.dataset.name + ":" + r.children[1].className).join(",")`

	run("open the page", chromedp.EmulateViewport(1100, 760), chromedp.Navigate("http://"+adm+"/"))
	const shown = `["login", "board"].map(id => id + ":" + getComputedStyle(document.getElementById(id)).display).join(" ")`
	eval("the page asks for the token", shown, "login:flex board:none")
	run("give a wrong token", chromedp.SendKeys(chromedp.ID("token"), "wrong\n"))
	eval("the wrong token is refused", `document.getElementById("login-error").textContent`, "That token was refused.")
	run("give the token", chromedp.SendKeys(chromedp.ID("token"), token+"\n"))
	eval("the page shows the live tunnel", rows, "web:live")
	eval("and no more the token's form", shown, "login:none board:block")
	eval("and its agent's sessions", `[...new Set(Array.from(document.querySelectorAll("#agents tbody tr td:last-child")).map(td => td.textContent))].join(",")`, "web")

	c := (&testGateway{HTTPAddr: httpAddr}).httpClient(t)
	visit := func(n int) {
		for i := range n {
			if code, body := get(t, c, "http://web.dash.test/page/"+strconv.Itoa(i)); code != 200 || body != "web" {
				t.Fatalf("visitor: %d %q", code, body)
			}
		}
	}
	visit(20)
	if screenshot {
		// Traffic over half a minute, for a chart with a shape.
		tick := time.NewTicker(time.Second)
		for i := range 30 {
			<-tick.C
			visit(1 + (i*7)%13)
		}
		tick.Stop()
	}
	eval("the chart counts the requests", `String(Number(document.querySelector('#chart-requests polyline[data-tunnel="web"]')?.dataset.total) >= 20)`, "true")
	eval("and charts their bytes", `String(Number(document.querySelector('#chart-bytes polyline[data-tunnel="web"]')?.dataset.total) > 0)`, "true")
	eval("on a line of 180 points", `String(document.querySelector('#chart-requests polyline[data-tunnel="web"]').getAttribute("points").split(" ").length)`, "180")

	// One TCP visitor held, a second one is refused: the gateway warns.
	waitVisitors := func(want int64) {
		t.Helper()
		if err := testutil.Poll(eventually, func() error {
			if n := tunnelVisitors(t, adm, token); n != want {
				return fmt.Errorf("%d visitors held, want %d", n, want)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	waitVisitors(0) // the requests above are all done
	held, err := net.DialTimeout("tcp", public, promptly)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	waitVisitors(1)
	// Refused: reset by the gateway, perhaps before the dial returns.
	if refused, err := net.DialTimeout("tcp", public, promptly); err == nil {
		refused.SetDeadline(time.Now().Add(eventually))
		refused.Read(make([]byte, 1)) // closed by the gateway
		refused.Close()
	}
	eval("the warning shows, newest first", `Array.from(document.querySelector("#errors tbody tr")?.children || []).slice(1, 3).map(td => td.textContent).join(" ")`,
		"WARN visitor refused: too many visitors")
	if screenshot {
		var png []byte
		actx, cancel := context.WithTimeout(ctx, eventually)
		png, err = chromedp.Run(actx, chromedp.FullScreenshot(100))
		cancel()
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		if err := os.WriteFile(filepath.Join("..", "..", "docs", "dashboard.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote docs/dashboard.png (%d bytes)", len(png))
	}
	held.Close()

	// The agent goes: the tunnel is leased, then, its lease over, gone.
	if err := a.stop(); err != nil {
		t.Fatalf("agent command: %v", err)
	}
	eval("the row goes once the lease ends", `document.querySelectorAll("#tunnels tbody tr").length + " " + !document.getElementById("no-tunnels").hidden`, "0 true")
	eval("with the agent's", `String(document.querySelectorAll("#agents tbody tr").length)`, "0")
}

// tunnelVisitors is the visitors open of the only tunnel the management
// listener at adm lists.
func tunnelVisitors(t *testing.T, adm, token string) int64 {
	var tl tunnelList
	if code, body := api(t, "GET", adm, "/api/v1/tunnels", token, &tl); code != 200 || len(tl.Tunnels) != 1 {
		t.Fatalf("tunnels: %d %s", code, body)
	}
	return tl.Tunnels[0].Visitors
}
