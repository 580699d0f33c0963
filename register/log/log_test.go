package log

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/diglett/diglett/gateway"
)

// TestRegisterer: the original diglett's lines, word for word.
func TestRegisterer(t *testing.T) {
	var out bytes.Buffer
	r := &Registerer{Logger: slog.New(slog.NewTextHandler(&out, nil))}
	c, err := r.Register(context.Background(), gateway.Route{Name: "example", Port: 33605, Identity: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `msg="register domain 'example' -> '33605'" identity=alice`) {
		t.Fatalf("register logged %q", out.String())
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `msg="unregister domain 'example'" identity=alice`) {
		t.Fatalf("unregister logged %q", out.String())
	}
}
