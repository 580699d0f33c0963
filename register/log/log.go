// Package log is the registerer of the original diglett: it logs
// "register domain 'NAME' -> 'PORT'" when a tunnel goes live and
// "unregister domain 'NAME'" when it goes away.
package log

import (
	"context"
	"io"
	"log/slog"
	"strconv"

	"github.com/diglett/diglett/gateway"
)

// Registerer logs routes to Logger.
type Registerer struct {
	Logger *slog.Logger
}

var _ gateway.Registerer = (*Registerer)(nil)

// Register logs the route.
func (l *Registerer) Register(ctx context.Context, r gateway.Route) (io.Closer, error) {
	l.Logger.InfoContext(ctx, "register domain '"+r.Name+"' -> '"+strconv.Itoa(r.Port)+"'", "identity", r.Identity)
	return closerFunc(func() error {
		l.Logger.Info("unregister domain '"+r.Name+"'", "identity", r.Identity)
		return nil
	}), nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }
