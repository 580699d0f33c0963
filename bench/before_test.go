package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestReadBaselineRealFile reads the repository's baseline (the run of
// commit ccf89af, before issue 17) and checks figures from every kind of
// cell: direct values, values with ratios, added latencies, RSS, and the
// idle-session memory table.
func TestReadBaselineRealFile(t *testing.T) {
	bl, err := readBaseline("before.md")
	if err != nil {
		t.Fatal(err)
	}
	if bl.commit != "ccf89af" {
		t.Errorf("commit %q, want ccf89af", bl.commit)
	}
	if !strings.HasPrefix(bl.date, "2026-12-02 05:44:01") {
		t.Errorf("date %q", bl.date)
	}
	ratios := []struct {
		path, key string
		value     float64
		ratio     float64
	}{
		{"tcp", "bulk1_up", 2.74, 0.22},
		{"tcp", "bulk1_down", 2.78, 0.20},
		{"quic", "bulk1_down", 1.09, 0.08},
		{"floor", "bulk1_up", 6.75, 0.46},
		{"tcp", "host64_rps", 6304, 0.18},
		{"tcp", "tcp64_rps", 11349, 0.31},
		{"library", "tcp64_rps", 17030, 0.46},
		{"cluster", "host256_p99", 154.260, 7.91},
	}
	for _, c := range ratios {
		v, ok := bl.figs.value(c.path, c.key)
		r, rok := bl.figs.ratio(c.path, c.key)
		if !ok || !rok || v != c.value || r != c.ratio {
			t.Errorf("%s %s: %v (%v) %v (%v), want %v (%v×)", c.path, c.key, v, ok, r, rok, c.value, c.ratio)
		}
	}
	values := []struct {
		path, key string
		value     float64
	}{
		{"direct", "bulk1_up", 13.84},
		{"direct", "http64_rps", 36959},
		{"direct", "lat_p50", 0.208},
		{"tcp", "addhost_p50", 0.596},
		{"floor", "addhost_p50", 0.399},
		{"floor", "addtcp_p99", 1.580},
		{"tcp", "host64_rss", 85.3},
		{"tcp", "tcp64_rss", 74.2},
		{"cluster", "tcp64_cpu", 51.7},
	}
	for _, c := range values {
		if v, ok := bl.figs.value(c.path, c.key); !ok || v != c.value {
			t.Errorf("%s %s: %v (%v), want %v", c.path, c.key, v, ok, c.value)
		}
	}
	for _, missing := range [][2]string{{"library", "bulk1_up"}, {"floor", "host64_rss"}, {"direct", "addhost_p50"}} {
		if _, ok := bl.figs.value(missing[0], missing[1]); ok {
			t.Errorf("%s %s: present, want absent (empty cell or dash)", missing[0], missing[1])
		}
	}
	if _, ok := bl.figs.ratio("direct", "http64_rps"); ok {
		t.Error("direct has a ratio")
	}
	if !bl.hasSess || bl.perSess != 83.0 {
		t.Errorf("per session %v (%v), want 83.0 KB", bl.perSess, bl.hasSess)
	}
}

// TestReadBaselineErrors names the file and line of what it cannot read,
// and fails on a missing file.
func TestReadBaselineErrors(t *testing.T) {
	real, err := os.ReadFile("before.md")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(real), "\n")
	lineOf := func(prefix string) int {
		for i, l := range lines {
			if strings.HasPrefix(l, prefix) {
				return i
			}
		}
		t.Fatalf("no line starting %q in before.md", prefix)
		return 0
	}
	edit := func(prefix string, f func(string) string) string {
		ls := append([]string(nil), lines...)
		i := lineOf(prefix)
		ls[i] = f(ls[i])
		return strings.Join(ls, "\n")
	}
	bulk := lineOf("| Bulk TCP, 1 stream, visitor → backend |") + 1
	cases := []struct {
		name, text, want string
	}{
		{"bad ratio", edit("| Bulk TCP, 1 stream, visitor → backend |", func(l string) string {
			return strings.Replace(l, "2.74 (0.22×)", "2.74 (0.22x)", 1)
		}), "before.md:" + strconv.Itoa(bulk) + ": column \"tcp\""},
		{"not a number", edit("| Bulk TCP, 1 stream, visitor → backend |", func(l string) string {
			return strings.Replace(l, "13.84", "fast", 1)
		}), "before.md:" + strconv.Itoa(bulk) + ":"},
		{"cell missing", edit("| Bulk TCP, 1 stream, visitor → backend |", func(l string) string {
			return strings.Replace(l, " 13.84 |", "", 1)
		}), "has 8 cells, the header 9"},
		{"header", edit("| workload | unit | direct |", func(l string) string {
			return strings.Replace(l, "direct", "baseline", 1)
		}), "header is not"},
		{"per session", edit("| 23.9 MB |", func(l string) string {
			return strings.Replace(l, "83.0 KB", "83.0 kB", 1)
		}), "per session \"83.0 kB\""},
		{"no figures", "# diglett benchmark results\n\nnothing\n", "no \"## Figures\" table"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "before.md")
			if err := os.WriteFile(p, []byte(c.text), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := readBaseline(p)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), p) {
				t.Fatalf("error %v, want one naming %s and containing %q", err, p, c.want)
			}
		})
	}
	if _, err := readBaseline(filepath.Join(t.TempDir(), "missing.md")); err == nil {
		t.Error("a missing file read without error")
	}
	// A row this program does not know is skipped, not an error.
	unknown := edit("| Bulk TCP, 1 stream, visitor → backend |", func(l string) string {
		return strings.Replace(l, "Bulk TCP, 1 stream, visitor → backend", "Something new", 1)
	})
	bl, err := parseBaseline("x.md", []byte(unknown))
	if err != nil {
		t.Fatalf("unknown row: %v", err)
	}
	if _, ok := bl.figs.value("tcp", "bulk1_up"); ok {
		t.Error("the renamed row was read as bulk1_up")
	}
}

func ratioFig(v, r float64) fig { return fig{Value: v, Ratio: &r} }

// TestIssue17Verdicts checks each target's verdict against the goals of
// issue 17, with the floor's figures of the same run as goals where the
// issue says so.
func TestIssue17Verdicts(t *testing.T) {
	bl, err := readBaseline("before.md")
	if err != nil {
		t.Fatal(err)
	}
	// A run that passes everything.
	good := func() figureSet {
		fs := figureSet{}
		fs.set("tcp", "host64_rps", ratioFig(15000, 0.41))
		fs.set("tcp", "tcp64_rps", ratioFig(19000, 0.52))
		fs.set("floor", "tcp64_rps", ratioFig(11000, 0.31))
		fs.set("tcp", "bulk1_up", ratioFig(6, 0.44))
		fs.set("tcp", "bulk1_down", ratioFig(6, 0.41))
		fs.set("floor", "bulk1_up", ratioFig(6.7, 0.46))
		fs.set("floor", "bulk1_down", ratioFig(5.4, 0.40))
		for _, k := range []string{"addhost_p50", "addhost_p99", "addtcp_p50", "addtcp_p99"} {
			fs.set("tcp", k, fig{Value: 0.2})
			fs.set("floor", k, fig{Value: 0.3})
		}
		fs.set("tcp", "host64_fresh_rss", fig{Value: 38})
		fs.set("tcp", "tcp64_fresh_rss", fig{Value: 40})
		fs.set("quic", "bulk1_up", ratioFig(3, 0.22))
		fs.set("quic", "bulk1_down", ratioFig(3, 0.21))
		return fs
	}
	verdicts := func(fs figureSet, sess float64, hasSess bool) map[string]string {
		m := map[string]string{}
		for _, r := range issue17(fs, sess, hasSess, bl) {
			m[r.Target] = r.Verdict
		}
		return m
	}
	all := verdicts(good(), 20, true)
	if len(all) != 13 {
		t.Fatalf("%d targets, want 13: %v", len(all), all)
	}
	for k, v := range all {
		if v != verdictPass {
			t.Errorf("%s: %s, want pass", k, v)
		}
	}
	// The before column comes from the baseline.
	for _, r := range issue17(good(), 20, true, bl) {
		switch r.Target {
		case "HTTP by Host, 64 conns":
			if r.Before != "0.18× (floor 0.14×)" || r.After != "0.41×" {
				t.Errorf("%s: before %q after %q", r.Target, r.Before, r.After)
			}
		case "Gateway memory per idle agent session":
			if r.Before != "83.0 KB" {
				t.Errorf("%s: before %q", r.Target, r.Before)
			}
		case "Gateway + agent peak RSS under HTTP by Host, 64 conns (a fresh pair)":
			if r.Before != "85.3 MB (shared gateway)" {
				t.Errorf("%s: before %q", r.Target, r.Before)
			}
		}
	}

	cases := []struct {
		name   string
		change func(figureSet)
		sess   float64
		target string
		want   string
	}{
		{"host below 0.40", func(fs figureSet) { fs.set("tcp", "host64_rps", ratioFig(1, 0.39)) }, 20,
			"HTTP by Host, 64 conns", verdictFail},
		{"tcp port above 0.50 but below the floor", func(fs figureSet) { fs.set("floor", "tcp64_rps", ratioFig(1, 0.55)) }, 20,
			"HTTP via TCP port, 64 conns", verdictFail},
		{"tcp port above the floor but below 0.50", func(fs figureSet) { fs.set("tcp", "tcp64_rps", ratioFig(1, 0.45)) }, 20,
			"HTTP via TCP port, 64 conns", verdictFail},
		{"tcp port without a floor", func(fs figureSet) { delete(fs["floor"], "tcp64_rps") }, 20,
			"HTTP via TCP port, 64 conns", "not judged: floor not measured"},
		{"bulk above 0.35 but below the floor's lower direction", func(fs figureSet) {
			fs.set("tcp", "bulk1_down", ratioFig(1, 0.38))
		}, 20, "Bulk TCP, 1 stream, backend → visitor", verdictFail},
		{"bulk: the floor's lower direction is the goal, not each direction's", func(fs figureSet) {
			fs.set("tcp", "bulk1_up", ratioFig(1, 0.41)) // below the floor's up (0.46), above its down (0.40)
		}, 20, "Bulk TCP, 1 stream, visitor → backend", verdictPass},
		{"bulk below 0.35 with a lower floor", func(fs figureSet) {
			fs.set("tcp", "bulk1_up", ratioFig(1, 0.34))
			fs.set("floor", "bulk1_up", ratioFig(1, 0.30))
			fs.set("floor", "bulk1_down", ratioFig(1, 0.30))
		}, 20, "Bulk TCP, 1 stream, visitor → backend", verdictFail},
		{"latency above the floor's", func(fs figureSet) { fs.set("tcp", "addhost_p99", fig{Value: 0.31}) }, 20,
			"Added latency at 1,000 req/s, by Host, p99", verdictFail},
		{"latency equal to the floor's", func(fs figureSet) { fs.set("tcp", "addtcp_p50", fig{Value: 0.3}) }, 20,
			"Added latency at 1,000 req/s, via TCP port, p50", verdictPass},
		{"latency not measured", func(fs figureSet) { delete(fs["tcp"], "addtcp_p50") }, 20,
			"Added latency at 1,000 req/s, via TCP port, p50", "not judged: tcp not measured"},
		{"session memory above 20 KB", func(figureSet) {}, 20.1,
			"Gateway memory per idle agent session", verdictFail},
		{"fresh RSS above 40 MB", func(fs figureSet) { fs.set("tcp", "tcp64_fresh_rss", fig{Value: 40.1}) }, 20,
			"Gateway + agent peak RSS under HTTP via TCP port, 64 conns (a fresh pair)", verdictFail},
		{"shared RSS alone does not judge", func(fs figureSet) {
			delete(fs["tcp"], "host64_fresh_rss")
			fs.set("tcp", "host64_rss", fig{Value: 30})
		}, 20, "Gateway + agent peak RSS under HTTP by Host, 64 conns (a fresh pair)", "not judged: fresh pair not measured"},
		{"quic below half of tcp", func(fs figureSet) { fs.set("quic", "bulk1_up", ratioFig(1, 0.21)) }, 20,
			"QUIC bulk, 1 stream, visitor → backend", verdictFail},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fs := good()
			c.change(fs)
			got := verdicts(fs, c.sess, true)
			if got[c.target] != c.want {
				t.Errorf("%s: %q, want %q", c.target, got[c.target], c.want)
			}
			for k, v := range got {
				if k != c.target && v != verdictPass {
					t.Errorf("%s changed too: %q", k, v)
				}
			}
		})
	}
	if v := verdicts(good(), 0, false)["Gateway memory per idle agent session"]; v != "not judged: idle sessions not measured" {
		t.Errorf("unmeasured sessions: %q", v)
	}
}

// TestReportBeforeAfter writes a report from made-up figures with the real
// baseline: the targets section comes right after the header, the
// results.json holds every figure, the chart is drawn, and the report
// reads back as a baseline itself.
func TestReportBeforeAfter(t *testing.T) {
	bl, err := readBaseline("before.md")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	b := &bench{
		o:      options{out: out, runs: 2, secs: 2, latSecs: 2, rate: 1000, transports: []string{"tcp", "quic"}, refs: map[string]bool{refFloor: true}},
		errs:   map[string]int64{},
		before: bl,
		targets: []*target{
			{name: "direct", bulkPort: 1},
			{name: "tcp", server: &proc{}, hostName: "x", bulkPort: 1},
			{name: "quic", server: &proc{}, hostName: "y", bulkPort: 1},
			{name: refFloor, hostName: "z", bulkPort: 1},
		},
		mem:       &memResult{transport: "tcp", sessions: 10, before: 20 << 20, after: 20<<20 + 10*19<<10},
		memOthers: []*memResult{{transport: "quic", sessions: 9, errors: 1, before: 20 << 20, after: 20<<20 + 9*60<<10}},
	}
	for run := 0; run < 2; run++ {
		f := float64(run)
		b.results = append(b.results, map[string]map[string]float64{
			"direct": {"bulk1_up": 14, "bulk1_down": 14, "http64_rps": 36000, "lat_p50": 0.2},
			"tcp": {"bulk1_up": 7 + f, "bulk1_down": 6, "host64_rps": 15000, "tcp64_rps": 19000,
				"addhost_p50": 0.3, "host64_rss": 80, "host64_anon": 30, "host64_file": 40, "host64_fresh_rss": 35, "host64_fresh_anon": 12},
			"quic":   {"bulk1_up": 3, "bulk1_down": 3},
			refFloor: {"bulk1_up": 6.5, "bulk1_down": 5.5, "tcp64_rps": 11000, "addhost_p50": 0.4},
		})
	}
	if err := b.report(); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(out, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(md)
	i17, figs := strings.Index(s, "## Issue 17 targets"), strings.Index(s, "## Figures")
	if i17 < 0 || figs < i17 || strings.Count(s[:i17], "\n## ") != 0 {
		t.Fatalf("the targets section is not the first, before Figures:\n%s", s)
	}
	for _, want := range []string{
		"| HTTP by Host, 64 conns | tcp | 0.18× (floor 0.14×) | 0.42× | ≥ 0.40× | pass |",
		"| Bulk TCP, 1 stream, visitor → backend | tcp | 0.22× (floor 0.46×) | 0.54× (floor 0.46×) | ≥ 0.35× and ≥ the floor's lower direction (0.39×) | pass |",
		"| Gateway memory per idle agent session | tcp | 83.0 KB | 19.0 KB | ≤ 20 KB | pass |",
		"| Gateway + agent peak RSS under HTTP by Host, 64 conns (a fresh pair) | tcp | 85.3 MB (shared gateway) | 35.0 MB (anon 12.0 MB) | ≤ 40 MB | pass |",
		"| Added latency at 1,000 req/s, by Host, p99 | tcp | +3.154 ms (floor +2.870 ms) | — | ≤ the floor's | not judged: tcp, floor not measured |",
		"| Gateway + agent peak RSS, HTTP by Host, 64 conns, shared gateway | MB | — | 80.0 |",
		"| Gateway + agent peak RssAnon, HTTP by Host, 64 conns, a fresh pair | MB | — | 12.0 |",
		"| tcp | 10 of 10 | 19.0 KB | — | 0.0 MB |",
		"| quic | 9 of 10 | 60.0 KB | — | 0.0 MB |",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("results.md lacks %q", want)
		}
	}
	data, err := os.ReadFile(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Runs    int `json:"runs"`
		Figures map[string]map[string]struct {
			Label string    `json:"label"`
			Value float64   `json:"median"`
			Ratio *float64  `json:"ratio"`
			Runs  []float64 `json:"runs"`
		} `json:"figures"`
		Issue17 []target17 `json:"issue17_targets"`
		ByTr    map[string]struct {
			PerSessionKB float64 `json:"per_session_kb"`
		} `json:"idle_sessions_by_transport"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.ByTr) != 2 || doc.ByTr["tcp"].PerSessionKB != 19 || doc.ByTr["quic"].PerSessionKB != 60 {
		t.Errorf("idle sessions by transport in results.json: %+v", doc.ByTr)
	}
	up := doc.Figures["tcp"]["bulk1_up"]
	if doc.Runs != 2 || up.Value != 7.5 || up.Ratio == nil || *up.Ratio != 7.5/14 || len(up.Runs) != 2 || up.Label != "Bulk TCP, 1 stream, visitor → backend" {
		t.Errorf("tcp bulk1_up in results.json: %+v", up)
	}
	if d := doc.Figures["direct"]["http64_rps"]; d.Value != 36000 || d.Ratio != nil || d.Label != "HTTP by Host, 64 conns" {
		t.Errorf("direct http64_rps in results.json: %+v", d)
	}
	if len(doc.Issue17) != 13 {
		t.Errorf("%d issue-17 targets in results.json, want 13", len(doc.Issue17))
	}
	if st, err := os.Stat(filepath.Join(out, "results.png")); err != nil || st.Size() == 0 {
		t.Errorf("results.png: %v", err)
	}
	// This report is a baseline for the next one.
	again, err := readBaseline(filepath.Join(out, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := again.figs.value("tcp", "host64_fresh_rss"); !ok || v != 35 {
		t.Errorf("fresh RSS read back: %v %v", v, ok)
	}
	if !again.hasSess || again.perSess != 19 {
		t.Errorf("per session read back: %v %v", again.perSess, again.hasSess)
	}
}
