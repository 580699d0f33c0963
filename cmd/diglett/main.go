// Command diglett is the agent: it publishes a local service through a
// diglett gateway.
//
//	diglett -g gateway.com:20000 -n example [-t TOKEN] localhost:9000
package main

import (
	"fmt"
	"os"

	"github.com/diglett/diglett/internal/cli"
)

func main() {
	ctx, stop := cli.SignalContext(func() {
		fmt.Fprintln(os.Stderr, "second signal: exiting now")
		os.Exit(1)
	})
	err := cli.Agent(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !cli.IsHelp(err) {
		fmt.Fprintln(os.Stderr, "diglett:", err)
		os.Exit(1)
	}
}
