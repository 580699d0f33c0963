// Package expose holds the Registerer extension point: modules told when a
// tunnel goes live and when it goes away, so they can publish it (a log line
// today; routers and proxies later).
package expose

import (
	"context"
	"io"
	"log/slog"
	"strconv"
)

// Route is a live tunnel as registerers see it.
type Route struct {
	Name     string // tunnel name
	Port     int    // public TCP port on the gateway
	Identity string // owner of the name
}

// Registerer publishes routes. Register is called when a tunnel goes live;
// the returned Closer is closed when it goes away.
type Registerer interface {
	Register(ctx context.Context, r Route) (io.Closer, error)
}

// RegistererFunc adapts a function to a Registerer.
type RegistererFunc func(ctx context.Context, r Route) (io.Closer, error)

// Register calls f.
func (f RegistererFunc) Register(ctx context.Context, r Route) (io.Closer, error) { return f(ctx, r) }

var _ Registerer = RegistererFunc(nil)

// Log is the registerer of the original diglett: it logs
// "register domain 'NAME' -> 'PORT'" and, when the route goes away,
// "unregister domain 'NAME'".
type Log struct {
	Logger *slog.Logger
}

var _ Registerer = (*Log)(nil)

// Register logs the route.
func (l *Log) Register(ctx context.Context, r Route) (io.Closer, error) {
	l.Logger.InfoContext(ctx, "register domain '"+r.Name+"' -> '"+strconv.Itoa(r.Port)+"'", "identity", r.Identity)
	return closerFunc(func() error {
		l.Logger.Info("unregister domain '"+r.Name+"'", "identity", r.Identity)
		return nil
	}), nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }
