package catalog

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/diglett/diglett/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitFor bounds every wait of these tests for something to happen.
const waitFor = 10 * time.Second

// recorder runs a Source and keeps every set it yields.
type recorder struct {
	mu   sync.Mutex
	sets [][]Port
	logs *testutil.Buffer
	done chan error
}

// testLogger logs everything, at Debug and above, into a buffer the test
// reads.
func testLogger() (*slog.Logger, *testutil.Buffer) {
	buf := &testutil.Buffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// run starts src.Watch until the test ends; the test then checks that
// Watch returned nil.
func run(t *testing.T, src Source, logs *testutil.Buffer) *recorder {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &recorder{logs: logs, done: make(chan error, 1)}
	go func() {
		r.done <- src.Watch(ctx, func(ps []Port) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.sets = append(r.sets, ps)
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("Watch returned %v after its context ended; want nil", err)
			}
		case <-time.After(waitFor):
			t.Error("Watch did not return after its context ended")
		}
		if t.Failed() && logs != nil {
			t.Logf("source's log:\n%s", logs.String())
		}
	})
	return r
}

// updates is a copy of the sets yielded so far.
func (r *recorder) updates() [][]Port {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.sets)
}

// wait waits until the last set yielded is want, and returns how many
// sets were yielded by then.
func (r *recorder) wait(t *testing.T, want ...Port) int {
	t.Helper()
	want = Normalize(want)
	var n int
	err := testutil.Poll(waitFor, func() error {
		sets := r.updates()
		n = len(sets)
		if n == 0 {
			return fmt.Errorf("no set yielded")
		}
		if last := sets[n-1]; !slices.Equal(last, want) {
			return fmt.Errorf("last set %v; want %v", last, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// checkDistinct checks that no set was yielded twice in a row.
func (r *recorder) checkDistinct(t *testing.T) {
	t.Helper()
	sets := r.updates()
	for i := 1; i < len(sets); i++ {
		if slices.Equal(sets[i-1], sets[i]) {
			t.Errorf("set %d yielded twice in a row: %v", i, sets[i])
		}
	}
}

func tcp(port uint16, service string) Port { return Port{Proto: TCP, Port: port, Service: service} }
func udp(port uint16, service string) Port { return Port{Proto: UDP, Port: port, Service: service} }

func TestNormalize(t *testing.T) {
	t.Parallel()
	got := Normalize([]Port{udp(53, "dns"), tcp(587, "mail"), tcp(25, "mail"), tcp(25, "relay"), udp(53, "other"), tcp(25, "third")})
	want := []Port{tcp(25, "mail"), tcp(587, "mail"), udp(53, "dns")}
	if !slices.Equal(got, want) {
		t.Fatalf("Normalize = %v; want %v", got, want)
	}
	if e := Normalize(nil); e == nil || len(e) != 0 {
		t.Fatalf("Normalize(nil) = %#v; want an empty non-nil set", e)
	}
	t.Log("checked: sets sorted by protocol then port, one entry per protocol and port with the first service's name, never nil")
}

func TestParseValue(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want []Port
		err  string
	}{
		{in: "{tcp: [25, 587], udp: [53]}", want: []Port{tcp(25, "s"), tcp(587, "s"), udp(53, "s")}},
		{in: `{"tcp": [80], "udp": []}`, want: []Port{tcp(80, "s")}},
		{in: "tcp:\n  - 443\n", want: []Port{tcp(443, "s")}},
		{in: "", err: "empty"},
		{in: "{tcp: [0]}", err: "tcp port 0"},
		{in: "{udp: [65536]}", err: "udp port 65536"},
		{in: "{tcp: 25}", err: "cannot unmarshal"},
		{in: "{sctp: [25]}", err: "not found"},
		{in: "{tcp: [25]}\n---\n{tcp: [26]}", err: "more than one document"},
		{in: "{tcp: [", err: "did not find"},
	} {
		got, err := parseValue([]byte(tc.in), "s")
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseValue(%q) = %v, %v; want an error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("parseValue(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	t.Log("checked: the {tcp: [...], udp: [...]} value in YAML and JSON, and its errors (empty, range, type, unknown field, two documents, syntax)")
}

func TestSummary(t *testing.T) {
	t.Parallel()
	if got, want := summary([]Port{tcp(25, "mail"), {Proto: UDP, Port: 53}}), "tcp/25 (mail), udp/53"; got != want {
		t.Errorf("summary = %q; want %q", got, want)
	}
	var many []Port
	for i := range maxSummary + 5 {
		many = append(many, tcp(uint16(i+1), "s"))
	}
	if got := summary(many); !strings.HasSuffix(got, "tcp/32 (s), and 5 more") {
		t.Errorf("summary of %d ports = %q; want the first %d and a count", len(many), got, maxSummary)
	}
	t.Log("checked: the log's wording of a set, bounded to its first ports and a count")
}

func FuzzParseValue(f *testing.F) {
	for _, s := range []string{"{tcp: [25, 587], udp: [53]}", `{"tcp": [80]}`, "tcp:\n  - 443\n", "", "{tcp: [0]}", "a: &x [*x]", "---\n---"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ports, err := parseValue(data, "s")
		if err != nil && ports != nil {
			t.Fatalf("parseValue(%q): ports %v with error %v", data, ports, err)
		}
		for _, p := range ports {
			if p.Port == 0 || (p.Proto != TCP && p.Proto != UDP) || p.Service != "s" {
				t.Fatalf("parseValue(%q): bad port %+v", data, p)
			}
		}
	})
}
