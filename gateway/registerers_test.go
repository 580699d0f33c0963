package gateway

import (
	"testing"
	"time"

	"go.uber.org/goleak"
)

// SetRegisterers registers the live tunnels with the registerers added,
// unregisters them from those removed, leaves those kept alone, and is
// what tunnels joining later are registered with.
func TestSetRegisterers(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	a, b, c := &regRecorder{}, &regRecorder{}, &regRecorder{}
	g := startRegGateway(t, Config{Registerers: []Registerer{a}})
	active := func(rec *regRecorder, name string, want int) {
		t.Helper()
		awaitReg(t, 10*time.Second, "the routes of the registerers in force", func() bool {
			_, m := rec.snapshot()
			return m[name] == want
		})
	}
	ln, _ := g.listen(t, "web")
	defer ln.Close()
	active(a, "web", 1)

	g.SetRegisterers([]Registerer{b})
	active(b, "web", 1)
	active(a, "web", 0)

	g.SetRegisterers([]Registerer{nil, b, c})
	active(c, "web", 1)
	if ev, _ := b.snapshot(); len(ev) != 1 {
		t.Fatalf("a registerer kept saw %q, want its one register", ev)
	}

	ln2, _ := g.listen(t, "api")
	defer ln2.Close()
	active(b, "api", 1)
	active(c, "api", 1)
	if _, m := a.snapshot(); m["api"] != 0 {
		t.Fatal("a removed registerer got a new tunnel")
	}

	ln.Close()
	active(b, "web", 0)
	active(c, "web", 0)
	g.Close()
	g.SetRegisterers([]Registerer{a}) // after Close: nothing
	if ev, _ := a.snapshot(); len(ev) != 2 {
		t.Fatalf("removed registerer saw %q, want one register and one unregister", ev)
	}
}

// sameRegisterer tells registerers apart without panicking on values that
// cannot be compared.
func TestSameRegisterer(t *testing.T) {
	a := &regRecorder{}
	type sliceReg struct {
		*regRecorder
		s []int
	}
	type valReg struct {
		*regRecorder
		n int
	}
	for _, tc := range []struct {
		x, y Registerer
		want bool
	}{
		{a, a, true},
		{a, &regRecorder{}, false},
		{valReg{a, 1}, valReg{a, 1}, true},
		{valReg{a, 1}, valReg{a, 2}, false},
		{sliceReg{a, nil}, sliceReg{a, nil}, false},
		{a, valReg{a, 1}, false},
	} {
		if got := sameRegisterer(tc.x, tc.y); got != tc.want {
			t.Errorf("sameRegisterer(%T, %T) = %v, want %v", tc.x, tc.y, got, tc.want)
		}
	}
}
