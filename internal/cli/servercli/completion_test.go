package servercli

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diglett/diglett/internal/cli"
	"github.com/diglett/diglett/internal/testutil"
)

// run runs program (diglett or diglett-server) with args in-process.
func run(program string, args ...string) (stdout string, err error) {
	var out, errOut bytes.Buffer
	if program == "diglett" {
		err = cli.Agent(context.Background(), args, &out, &errOut)
	} else {
		err = Server(context.Background(), args, &out, &errOut)
	}
	return out.String(), err
}

// Each shell's own parser accepts each script.
func TestCompletionScriptsParse(t *testing.T) {
	for _, program := range []string{"diglett", "diglett-server"} {
		for _, shell := range []string{"bash", "zsh", "fish"} {
			t.Run(program+"/"+shell, func(t *testing.T) {
				script, err := run(program, "completion", shell)
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(script, program) {
					t.Fatalf("the script does not name %s:\n%s", program, script)
				}
				file := filepath.Join(t.TempDir(), program+"."+shell)
				if err := os.WriteFile(file, []byte(script), 0o600); err != nil {
					t.Fatal(err)
				}
				sh := testutil.Program(t, shell)
				if out, err := exec.Command(sh, "-n", file).CombinedOutput(); err != nil {
					t.Fatalf("%s -n: %v\n%s\nscript:\n%s", shell, err, out, script)
				}
			})
		}
	}
}

// Loaded into bash, the script hands the completion of the program to the
// program itself.
func TestCompletionScriptRegistersInBash(t *testing.T) {
	script, err := run("diglett", "completion", "bash")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(testutil.Program(t, "bash"), "-c", script+"\ncomplete -p diglett").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "complete -o default -C 'diglett' diglett" {
		t.Fatalf("complete -p diglett: %v\n%s", err, out)
	}
}

// Loaded into zsh, even one without completion set up, the script hands
// the completion of the program to the program itself.
func TestCompletionScriptRegistersInZsh(t *testing.T) {
	script, err := run("diglett-server", "completion", "zsh")
	if err != nil {
		t.Fatal(err)
	}
	zsh := exec.Command(testutil.Program(t, "zsh"), "-f", "-c", script+"\nprint -r -- ${_comps[diglett-server]}")
	home := t.TempDir() // compinit writes its dump there
	zsh.Env = append(os.Environ(), "HOME="+home, "ZDOTDIR="+home)
	out, err := zsh.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "_bash_complete -o default -C diglett-server" {
		t.Fatalf("zsh: %v\n%s", err, out)
	}
}

func TestCompletionErrors(t *testing.T) {
	for args, want := range map[string]string{
		"":           "want one shell, bash, zsh or fish, e.g. diglett completion bash",
		"tcsh":       `unknown shell "tcsh": want bash, zsh or fish`,
		"bash extra": "want one shell",
	} {
		_, err := run("diglett", append([]string{"completion"}, strings.Fields(args)...)...)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("completion %s: err = %v, want %q", args, err, want)
		}
	}
	out, err := run("diglett-server", "completion", "--help")
	if !cli.IsHelp(err) || !strings.Contains(out, "diglett-server completion fish >") {
		t.Errorf("completion --help: %v\n%s", err, out)
	}
}

// Asked the way the scripts ask (COMP_LINE), the programs answer with
// their flags and their values, and do nothing else.
func TestCompletionAnswers(t *testing.T) {
	for _, tc := range []struct {
		program, line string
		want, not     []string
	}{
		{"diglett", "diglett --tra", []string{"--transport"}, []string{"--token"}},
		{"diglett", "diglett --transport ", []string{"auto", "tcp", "quic", "ws"}, nil},
		{"diglett", "diglett -g gw --re", []string{"--retry"}, nil},
		{"diglett-server", "diglett-server --visitor-access ", []string{"allow", "deny", "require"}, nil},
		{"diglett-server", "diglett-server --http-", []string{"--http-addr", "--http-response-timeout", "--http-body-timeout"}, []string{"--https-addr"}},
	} {
		t.Run(tc.line, func(t *testing.T) {
			t.Setenv("COMP_LINE", tc.line)
			t.Setenv("COMP_POINT", "")
			words := strings.Fields(tc.line)
			out, err := run(tc.program, tc.program, words[len(words)-1], tc.program)
			if !cli.IsHelp(err) {
				t.Fatalf("err = %v, want the program to stop after answering", err)
			}
			got := strings.Fields(out)
			for _, w := range tc.want {
				if !strings.Contains(" "+strings.Join(got, " ")+" ", " "+w+" ") {
					t.Errorf("answers %q lack %q", got, w)
				}
			}
			for _, w := range tc.not {
				if strings.Contains(" "+strings.Join(got, " ")+" ", " "+w+" ") {
					t.Errorf("answers %q hold %q", got, w)
				}
			}
		})
	}
}
