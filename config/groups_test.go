package config

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/diglett/diglett/gateway"
)

func TestGroupsParse(t *testing.T) {
	p := write(t, "gateway.yaml", `version: 1
domain: gw.test
groups:
  - name: web
    hosts: [www.example.org, example.org]
    auth:
      - allow_all: {}
  - name: api
    auth:
      - allow_all: {}
`)
	f, err := LoadServer(p, testSchema)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Groups) != 2 || f.Groups[0].Name != "web" || len(f.Groups[0].Auth) != 1 || f.Groups[1].Name != "api" {
		t.Fatalf("groups %+v", f.Groups)
	}
	h := f.Hosts()
	if len(h) != 2 || h["www.example.org"] != "web" || h["example.org"] != "web" {
		t.Errorf("hosts %v", h)
	}
}

func TestGroupsErrors(t *testing.T) {
	const head = "version: 1\ndomain: gw.test\ngroups:\n"
	for name, tc := range map[string]struct{ content, want string }{
		"not a list":        {"  web: {}\n", `4: groups: want a list`},
		"no name":           {"  - auth: [allow_all: {}]\n", `4: groups[1]: want a name`},
		"bad name":          {"  - name: Web_1\n    auth: [allow_all: {}]\n", `4: groups[1]: name: name "Web_1": only lowercase`},
		"no auth":           {"  - name: web\n", `4: groups[1]: want an auth list`},
		"empty auth":        {"  - name: web\n    auth: []\n", `5: groups[1]: auth: want at least one module`},
		"unknown module":    {"  - name: web\n    auth: [tokns: {}]\n", `5: auth: unknown module "tokns"`},
		"unknown key":       {"  - name: web\n    host: [a.b]\n    auth: [allow_all: {}]\n", `5: groups[1]: unknown key "host" (did you mean "hosts"?)`},
		"bad host":          {"  - name: web\n    hosts: [localhost]\n    auth: [allow_all: {}]\n", `5: groups[1]: hosts: host "localhost": want a DNS name`},
		"host under domain": {"  - name: web\n    hosts: [x.gw.test]\n    auth: [allow_all: {}]\n", `5: groups[1]: hosts: "x.gw.test" is under the domain gw.test, where it is tunnel "x"'s already`},
		"group twice":       {"  - name: web\n    auth: [allow_all: {}]\n  - name: web\n    auth: [allow_all: {}]\n", `6: groups[2]: group "web" given twice (first on line 4)`},
		"host twice": {"  - name: web\n    hosts: [www.example.org]\n    auth: [allow_all: {}]\n  - name: api\n    hosts: [www.example.org]\n    auth: [allow_all: {}]\n",
			`8: groups[2]: hosts: "www.example.org" is another group's already (line 5)`},
	} {
		t.Run(name, func(t *testing.T) {
			p := write(t, "gateway.yaml", head+tc.content)
			_, err := LoadServer(p, testSchema)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), p+":"+tc.want) {
				t.Errorf("error\n%v\ndoes not say\n%s", err, tc.want)
			}
		})
	}
}

func TestGrouped(t *testing.T) {
	ctx := context.Background()
	var closed int
	g := Grouped{
		Global: fakeAuth{"a", "alpha"},
		Groups: []GroupAuth{
			{Name: "web", Auth: Chain{fakeAuth{"w", "unused"}, refuser{"", &closed}}},
			{Name: "api", Auth: Chain{refuser{"wrong api key", &closed}}},
		},
	}
	login := func(token string, names ...string) (gateway.Identity, error) {
		return g.Authenticate(ctx, gateway.Credentials{Token: token, Names: names})
	}

	// A member of web: the group's identity, shared by every member, and
	// the group's name only.
	id, err := login("w", "web")
	if err != nil || id.Name != "group:web" || id.Claims[ClaimMember] != "w" {
		t.Fatalf("member of web: %+v, %v", id, err)
	}
	if err := g.Authorize(ctx, id, "web"); err != nil {
		t.Errorf("member may not publish its group: %v", err)
	}
	if err := g.Authorize(ctx, id, "alpha"); !errors.Is(err, gateway.ErrForbidden) || !strings.Contains(err.Error(), `joined tunnel group "web"`) {
		t.Errorf("member publishes another name: %v", err)
	}
	// A group's credentials count only for an agent that names the group.
	if _, err := login("w", "alpha"); !errors.Is(err, gateway.ErrUnauthorized) {
		t.Errorf("web's credentials, no group named: %v", err)
	}
	// The global identities: their names, never a group's.
	id, err = login("a", "alpha")
	if err != nil || id.Name != "a" {
		t.Fatalf("global identity: %+v, %v", id, err)
	}
	if err := g.Authorize(ctx, id, "alpha"); err != nil {
		t.Errorf("global identity: %v", err)
	}
	if err := g.Authorize(ctx, id, "web"); !errors.Is(err, gateway.ErrForbidden) || !strings.Contains(err.Error(), "tunnel group's") {
		t.Errorf("global identity publishes a group's name: %v", err)
	}
	// An agent refused by the group it names but let in by the global
	// modules is told at its name that the name is the group's; one
	// refused by both hears the group's reason.
	id, err = login("a", "api")
	if err != nil {
		t.Fatalf("global identity naming a group: %v", err)
	}
	if err := g.Authorize(ctx, id, "api"); !errors.Is(err, gateway.ErrForbidden) || !strings.Contains(err.Error(), "tunnel group's") {
		t.Errorf("global identity publishes a group's name: %v", err)
	}
	if _, err := login("zz", "api"); !errors.Is(err, gateway.ErrUnauthorized) || !strings.Contains(err.Error(), "wrong api key") {
		t.Errorf("refused by all: %v, want the group's reason", err)
	}
	// A module's own claim cannot make a member.
	spoof := Grouped{Global: gateway.AuthFuncs{AuthenticateFunc: func(context.Context, gateway.Credentials) (gateway.Identity, error) {
		return gateway.Identity{Name: "x", Claims: map[string]any{ClaimGroup: "web"}}, nil
	}}, Groups: g.Groups}
	id, err = spoof.Authenticate(ctx, gateway.Credentials{Token: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if err := spoof.Authorize(ctx, id, "web"); !errors.Is(err, gateway.ErrForbidden) {
		t.Errorf("a claim made a member: %v", err)
	}
	// Without global modules, only groups' agents get in.
	only := Grouped{Groups: g.Groups}
	if _, err := only.Authenticate(ctx, gateway.Credentials{Token: "a", Names: []string{"alpha"}}); !errors.Is(err, gateway.ErrUnauthorized) {
		t.Errorf("groups only: %v", err)
	}
	if err := g.Close(); err != nil || closed != 2 {
		t.Errorf("Close: %v, %d closed, want 2", err, closed)
	}
}
