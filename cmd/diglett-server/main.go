// Command diglett-server is the gateway: agents dial in, authenticate and
// publish their services on its public ports.
//
//	diglett-server [-l 0.0.0.0:20000] [-d]
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/diglett/diglett/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.Server(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !cli.IsHelp(err) {
		fmt.Fprintln(os.Stderr, "diglett-server:", err)
		os.Exit(1)
	}
}
