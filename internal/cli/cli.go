// Package cli holds the command line of diglett, the agent, and what both
// command lines share: flags from the environment (DIGLETT_*) and the
// --config file, logging set-up, help, completion, the version and the
// signals. diglett-server's own command line is package servercli, so
// that the agent links none of the gateway (a test in cmd/diglett holds
// that boundary). The mains only call them.
package cli

import (
	"errors"
	"fmt"
	"io"

	"github.com/alecthomas/kong"
)

// Version is set at build time with -ldflags "-X ...cli.Version=...".
var Version = "dev"

// errHelp reports that help or the version was printed and the program
// should exit successfully.
var errHelp = errors.New("help printed")

// parse parses args into app. Every flag can also come from the environment
// as DIGLETT_<FLAG>, and from the file of --config when file is not nil.
func Parse(app any, name, desc string, args []string, stdout, stderr io.Writer, file ...*FileResolver) error {
	exited := false
	var opts []kong.Option
	for _, r := range file {
		opts = append(opts, kong.Resolvers(r))
	}
	k, err := kong.New(app, append(opts,
		kong.Name(name),
		kong.Description(desc),
		kong.Writers(stdout, stderr),
		kong.Exit(func(int) { exited = true }),
		kong.DefaultEnvars("DIGLETT"),
		cliOptions(name),
		kong.Vars{"version": versionText(name)},
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}),
	)...)
	if err != nil {
		return fmt.Errorf("command line: %w", err)
	}
	// A shell asking for completions (see completion.go).
	if answered, err := completeWords(k); answered || err != nil {
		if err != nil {
			return err
		}
		return errHelp
	}
	_, err = k.Parse(args)
	if exited {
		return errHelp
	}
	for _, r := range file {
		if r.err != nil {
			return r.err
		}
	}
	if err != nil {
		return fmt.Errorf("%w (see %s --help)", err, name)
	}
	return nil
}

// IsHelp reports whether err only means that help was printed.
func IsHelp(err error) bool { return errors.Is(err, errHelp) }
