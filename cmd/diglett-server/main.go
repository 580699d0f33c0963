// Command diglett-server is the gateway: agents dial in, authenticate and
// publish their services on its public ports.
//
//	diglett-server [-l 0.0.0.0:20000] [-d]
package main

import (
	"fmt"
	"os"

	"github.com/diglett/diglett/internal/cli"
	"github.com/diglett/diglett/internal/cli/servercli"
)

func main() {
	ctx, stop := cli.SignalContext(func() {
		fmt.Fprintln(os.Stderr, "second signal: exiting now")
		os.Exit(1)
	})
	err := servercli.Server(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !cli.IsHelp(err) {
		fmt.Fprintln(os.Stderr, "diglett-server:", err)
		os.Exit(1)
	}
}
