package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/alecthomas/kong"
	"github.com/willabides/kongplete"
)

// Shell completion works the way the shells' "complete -C" does: the
// script a shell loads only asks the program itself, with the command
// line in COMP_LINE, for the words that fit; parse answers from the
// program's flag model (kongplete), so the completions never drift from
// the flags. Where no word fits, the shells fall back to file names.

// completionScripts are the scripts of "NAME completion SHELL"; %[1]s is
// the program's name, which must be on the PATH, and %[2]s the name made
// safe for a shell function's name.
var completionScripts = map[string]string{
	"bash": `# bash completion for %[1]s: add to ~/.bashrc
#   source <(%[1]s completion bash)
complete -o default -C %[1]s %[1]s
`,
	"zsh": `# zsh completion for %[1]s: add to ~/.zshrc
#   source <(%[1]s completion zsh)
(( $+functions[compdef] )) || { autoload -U +X compinit && compinit }
autoload -U +X bashcompinit && bashcompinit
complete -o default -C %[1]s %[1]s
`,
	"fish": `# fish completion for %[1]s: save as ~/.config/fish/completions/%[1]s.fish
#   %[1]s completion fish > ~/.config/fish/completions/%[1]s.fish
function __complete_%[2]s
    set -lx COMP_LINE (commandline -cp)
    test -z (commandline -ct)
    and set COMP_LINE "$COMP_LINE "
    %[1]s
end
complete -c %[1]s -a "(__complete_%[2]s)"
`,
}

// completionShells lists the shells completion knows, for messages.
const completionShells = "bash, zsh or fish"

// completion prints the completion script of program name for the shell
// in args: "NAME completion bash|zsh|fish".
func Completion(name string, args []string, stdout, stderr io.Writer) error {
	if len(args) == 1 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Fprintf(stdout, "Usage: %[1]s completion SHELL\n\nPrint the shell completion script of %[1]s for SHELL: %[2]s.\n\n"+
			"  bash: source <(%[1]s completion bash)   (in ~/.bashrc)\n"+
			"  zsh:  source <(%[1]s completion zsh)    (in ~/.zshrc)\n"+
			"  fish: %[1]s completion fish > ~/.config/fish/completions/%[1]s.fish\n", name, completionShells)
		return errHelp
	}
	if len(args) != 1 {
		return fmt.Errorf("completion: want one shell, %s, e.g. %s completion bash", completionShells, name)
	}
	script, ok := completionScripts[args[0]]
	if !ok {
		return fmt.Errorf("completion: unknown shell %q: want %s", args[0], completionShells)
	}
	_, err := fmt.Fprintf(stdout, script, name, strings.ReplaceAll(name, "-", "_"))
	return err
}

// completeWords answers a shell's request for completions (COMP_LINE set
// in the environment by the scripts above) from k's model, and reports
// whether it did: the program then exits.
func completeWords(k *kong.Kong) (answered bool, err error) {
	kongplete.Complete(k,
		kongplete.WithExitFunc(func(int) { answered = true }),
		kongplete.WithErrorHandler(func(e error) { err = errors.Join(err, fmt.Errorf("completion: %w", e)) }),
	)
	return answered, err
}
