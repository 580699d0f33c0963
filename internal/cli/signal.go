package cli

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// SignalContext returns a context that ends at the first SIGINT or SIGTERM,
// which asks the program to stop gracefully. Once it has ended, a second
// signal calls second, which the main uses to exit at once. stop releases
// the signals.
func SignalContext(second func()) (ctx context.Context, stop func()) {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-done:
			return
		}
		select {
		case <-sigs:
			second()
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		select {
		case <-done:
		default:
			close(done)
		}
		cancel()
	}
}
