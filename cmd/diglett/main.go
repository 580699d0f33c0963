// Command diglett is the agent: it publishes a local service through a
// diglett gateway.
//
//	diglett -g gateway.com:20000 -n example [-t TOKEN] localhost:9000
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
	err := cli.Agent(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !cli.IsHelp(err) {
		fmt.Fprintln(os.Stderr, "diglett:", err)
		os.Exit(1)
	}
}
