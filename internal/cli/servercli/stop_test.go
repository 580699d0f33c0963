package servercli

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/diglett/diglett/internal/cli"
	"github.com/diglett/diglett/internal/testutil"
)

func TestHelpListsStopAndVisitorFlags(t *testing.T) {
	for _, tc := range []struct {
		name  string
		run   func(context.Context, []string, io.Writer, io.Writer) error
		flags []string
	}{
		{"server", Server, []string{"--half-close-timeout", "--max-visitors", "--max-visitors-per-tunnel", "DIGLETT_MAX_VISITORS"}},
		{"agent", cli.Agent, []string{"--drain-timeout", "--half-close-timeout", "DIGLETT_DRAIN_TIMEOUT"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var out, errOut bytes.Buffer
			if err := tc.run(context.Background(), []string{"--help"}, &out, &errOut); !cli.IsHelp(err) {
				t.Fatalf("--help: err = %v", err)
			}
			for _, f := range tc.flags {
				if !strings.Contains(out.String(), f) {
					t.Errorf("help does not mention %s:\n%s", f, out.String())
				}
			}
		})
	}
}

func TestFitVisitors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		max          int
		limit        uint64
		fit          int
		reserveAtLst uint64
	}{
		{65536, 1 << 20, 65536, 1 << 18},
		{65536, 20000, 15000, 5000},
		{65536, 4096, 3072, 1024},
		{65536, 1024, 768, 256},
		{100, 1024, 100, 256},
		{65536, 200, 1, 256},
	} {
		fit, reserve := fitVisitors(tc.max, tc.limit)
		if fit != tc.fit || reserve < tc.reserveAtLst {
			t.Errorf("fitVisitors(%d, %d) = %d, %d; want %d, at least %d", tc.max, tc.limit, fit, reserve, tc.fit, tc.reserveAtLst)
		}
	}
}

func TestFitOpenFilesLogs(t *testing.T) {
	t.Parallel()
	limit, ok := openFileLimit()
	if !ok {
		testutil.Unavailable(t, "no open-file limit on this platform")
	}
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	if got := fitOpenFiles(10, log); got != 10 || buf.Len() != 0 {
		t.Errorf("fitOpenFiles(10) = %d, logged %q; want 10 and no log", got, buf.String())
	}
	asked := int(min(limit, 1<<40)) + 1
	got := fitOpenFiles(asked, log)
	if got >= asked || !strings.Contains(buf.String(), "--max-visitors lowered to fit the open-file limit") || !strings.Contains(buf.String(), "level=WARN") {
		t.Errorf("fitOpenFiles(%d) with a limit of %d = %d, logged %q; want it lowered, with a warning", asked, limit, got, buf.String())
	}
}
