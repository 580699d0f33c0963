package event

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/diglett/diglett/gateway"
)

// recorder notifies into a list, failing the events in fail once each.
type recorder struct {
	mu   sync.Mutex
	seen []string
	fail map[string]bool
}

func (r *recorder) notify(_ context.Context, event string, rt *gateway.Route) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	what := event
	if rt != nil {
		what += " " + rt.Name
	}
	if r.fail[event] {
		delete(r.fail, event)
		r.seen = append(r.seen, what+" failed")
		return errors.New(event + " failed")
	}
	r.seen = append(r.seen, what)
	return nil
}

func TestRegisterer(t *testing.T) {
	rec := &recorder{fail: map[string]bool{Unregister: true}}
	e := Registerer{Notify: rec.notify}
	ctx := context.Background()
	if err := e.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := e.Register(ctx, gateway.Route{Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	cc, ok := c.(gateway.ContextCloser)
	if !ok {
		t.Fatalf("the route's Closer %T takes no context", c)
	}
	if err := cc.CloseContext(ctx); err == nil {
		t.Fatal("a failed unregister reported no error")
	}
	// Retried until it succeeds; then closing again tells nothing.
	for range 2 {
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.Join(rec.seen, ", "); got != "sweep, register web, unregister web failed, unregister web" {
		t.Errorf("events: %s", got)
	}
	// A failed register publishes nothing.
	rec.fail[Register] = true
	if c, err := e.Register(ctx, gateway.Route{Name: "api"}); c != nil || err == nil {
		t.Errorf("failed register: %v, %v", c, err)
	}
}
