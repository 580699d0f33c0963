package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// fig is one figure of one path: the median over the runs and, where the
// figure has a direct counterpart, the median of the per-run ratios.
type fig struct {
	Value float64  `json:"value"`
	Ratio *float64 `json:"ratio,omitempty"`
}

// figureSet holds figures by path ("direct", a transport, a reference
// path), then by key (the keys of rows(): bulk1_up, host64_rps, ...;
// direct's under their direct keys: http64_rps, lat_p50, ...).
type figureSet map[string]map[string]fig

func (fs figureSet) set(path, key string, f fig) {
	if fs[path] == nil {
		fs[path] = map[string]fig{}
	}
	fs[path][key] = f
}

// ratio is path's ratio to direct for key.
func (fs figureSet) ratio(path, key string) (float64, bool) {
	f, ok := fs[path][key]
	if !ok || f.Ratio == nil {
		return 0, false
	}
	return *f.Ratio, true
}

// value is path's figure for key.
func (fs figureSet) value(path, key string) (float64, bool) {
	f, ok := fs[path][key]
	return f.Value, ok
}

// figures collects this run's medians (and ratios) of every key measured.
func (b *bench) figures() figureSet {
	dkeys := map[string]string{}
	for _, r := range rows() {
		if r.dkey != "" {
			dkeys[r.key] = r.dkey
		}
	}
	fs := figureSet{}
	for _, t := range b.targets {
		keys := map[string]bool{}
		for _, res := range b.results {
			for k := range res[t.name] {
				keys[k] = true
			}
		}
		for k := range keys {
			dkey := ""
			if !t.direct() {
				dkey = dkeys[k]
			}
			v, r, ok := b.figure(t.name, k, dkey)
			f := fig{Value: v}
			if ok {
				f.Ratio = &r
			}
			fs.set(t.name, k, f)
		}
	}
	return fs
}

// baseline is the "before" of a comparison: a results.md written by an
// earlier run (bench/before.md), read back.
type baseline struct {
	file    string
	commit  string // as the file's "- Commit:" line gives it
	date    string
	figs    figureSet
	perSess float64 // gateway KB per idle agent session
	hasSess bool
}

// legacyLabels maps workload labels of earlier results.md files that have
// since been renamed to their keys.
var legacyLabels = map[string]string{
	"Gateway + agent peak RSS, HTTP by Host, 64 conns":      "host64_rss",
	"Gateway + agent peak RSS, HTTP via TCP port, 64 conns": "tcp64_rss",
}

// readBaseline parses the "Figures" table and the idle-session memory
// table of a results.md file. Workload rows it does not know are skipped
// (a newer or older file may have rows this program lacks); anything else
// it does not understand is an error naming the file and line.
func readBaseline(path string) (*baseline, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read baseline: %w", err)
	}
	return parseBaseline(path, data)
}

func parseBaseline(path string, data []byte) (*baseline, error) {
	labels := map[string]row{}
	for _, r := range rows() {
		labels[r.label] = r
	}
	for l, k := range legacyLabels {
		if _, ok := labels[l]; !ok {
			labels[l] = row{label: l, key: k, added: true}
		}
	}
	bl := &baseline{file: path, figs: figureSet{}}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	bad := func(i int, format string, args ...any) error {
		return fmt.Errorf("%s:%d: %s", path, i+1, fmt.Sprintf(format, args...))
	}
	section := ""
	figures, sessions := false, false
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if h, ok := strings.CutPrefix(l, "## "); ok {
			section = strings.TrimSpace(h)
			continue
		}
		if section == "" {
			if v, ok := strings.CutPrefix(l, "- Commit: "); ok {
				bl.commit, _, _ = strings.Cut(v, ",")
			}
			if v, ok := strings.CutPrefix(l, "- Date: "); ok {
				bl.date, _, _ = strings.Cut(v, " (")
			}
			continue
		}
		if !strings.HasPrefix(l, "|") {
			continue
		}
		switch {
		case section == "Figures" && !figures:
			n, err := parseFigures(lines, i, labels, bl.figs, bad)
			if err != nil {
				return nil, err
			}
			figures = true
			i += n - 1
		case section == "Gateway memory with idle agent sessions" && !sessions:
			n, err := parseSessions(lines, i, bl, bad)
			if err != nil {
				return nil, err
			}
			sessions = true
			i += n - 1
		}
	}
	if !figures {
		return nil, fmt.Errorf("%s: no \"## Figures\" table (is it a results.md written by the bench?)", path)
	}
	return bl, nil
}

// cells splits a markdown table line into its trimmed cells.
func cells(l string) ([]string, bool) {
	l = strings.TrimSpace(l)
	if !strings.HasPrefix(l, "|") || !strings.HasSuffix(l, "|") || len(l) < 2 {
		return nil, false
	}
	cs := strings.Split(l[1:len(l)-1], "|")
	for i := range cs {
		cs[i] = strings.TrimSpace(cs[i])
	}
	return cs, true
}

// parseFigures reads the Figures table starting at its header line
// lines[at] into fs, and returns how many lines the table spans.
func parseFigures(lines []string, at int, labels map[string]row, fs figureSet, bad func(int, string, ...any) error) (int, error) {
	head, ok := cells(lines[at])
	if !ok || len(head) < 4 || head[0] != "workload" || head[1] != "unit" || head[2] != "direct" {
		return 0, bad(at, "the Figures table's header is not \"| workload | unit | direct | PATH... |\": %q", lines[at])
	}
	paths := head[2:]
	if at+1 >= len(lines) || !strings.HasPrefix(strings.TrimSpace(lines[at+1]), "| ---") {
		return 0, bad(at+1, "no separator line under the Figures table's header")
	}
	i := at + 2
	for ; i < len(lines) && strings.HasPrefix(strings.TrimSpace(lines[i]), "|"); i++ {
		cs, ok := cells(lines[i])
		if !ok || len(cs) != len(head) {
			return 0, bad(i, "a Figures row has %d cells, the header %d: %q", len(cs), len(head), lines[i])
		}
		r, known := labels[cs[0]]
		if !known {
			continue
		}
		for j, p := range paths {
			c := cs[2+j]
			if c == "" || c == "—" {
				continue
			}
			f, err := parseCell(c)
			if err != nil {
				return 0, bad(i, "column %q of %q: %v", p, cs[0], err)
			}
			key := r.key
			if p == "direct" {
				if r.dkey == "" {
					return 0, bad(i, "%q has a direct figure %q where none is expected", cs[0], c)
				}
				key = r.dkey
				f.Ratio = nil
			}
			fs.set(p, key, f)
		}
	}
	return i - at, nil
}

// parseCell reads "2.74 (0.22×)", "13.84", "+0.596" or "-0.1".
func parseCell(c string) (fig, error) {
	v, rest, hasRatio := strings.Cut(c, " (")
	x, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return fig{}, fmt.Errorf("%q is not \"VALUE\" or \"VALUE (RATIO×)\"", c)
	}
	f := fig{Value: x}
	if hasRatio {
		rs, ok := strings.CutSuffix(rest, "×)")
		if !ok {
			return fig{}, fmt.Errorf("%q: the ratio does not end in \"×)\"", c)
		}
		r, err := strconv.ParseFloat(rs, 64)
		if err != nil {
			return fig{}, fmt.Errorf("%q: ratio: %v", c, err)
		}
		f.Ratio = &r
	}
	return f, nil
}

// parseSessions reads the idle-session memory table starting at its header
// line lines[at] (a "per session" column in KB) and returns its span.
func parseSessions(lines []string, at int, bl *baseline, bad func(int, string, ...any) error) (int, error) {
	head, _ := cells(lines[at])
	col := -1
	for j, h := range head {
		if h == "per session" {
			col = j
		}
	}
	if col < 0 {
		return 0, bad(at, "the idle-session memory table has no \"per session\" column: %q", lines[at])
	}
	if at+2 >= len(lines) || !strings.HasPrefix(strings.TrimSpace(lines[at+1]), "| ---") {
		return 0, bad(at+1, "the idle-session memory table has no separator line and row")
	}
	cs, ok := cells(lines[at+2])
	if !ok || len(cs) != len(head) {
		return 0, bad(at+2, "the idle-session memory row has %d cells, the header %d: %q", len(cs), len(head), lines[at+2])
	}
	v, ok := strings.CutSuffix(cs[col], " KB")
	x, err := strconv.ParseFloat(v, 64)
	if !ok || err != nil {
		return 0, bad(at+2, "per session %q is not \"N KB\"", cs[col])
	}
	bl.perSess, bl.hasSess = x, true
	return 3, nil
}

// target17 is one line of the "Issue 17 targets" table.
type target17 struct {
	Target  string `json:"target"`
	Path    string `json:"path"`
	Before  string `json:"before"`
	After   string `json:"after"`
	Goal    string `json:"goal"`
	Verdict string `json:"verdict"` // "pass", "FAIL", or "not measured"/"not judged: ..."
}

const (
	verdictPass = "pass"
	verdictFail = "FAIL"
	verdictNone = "not measured"
)

// judge is the verdict of a target made of conditions, each measured or
// not: any measured condition failing fails it; else any unmeasured one
// leaves it unjudged, naming what is missing.
func judge(conds ...cond) string {
	var missing []string
	for _, c := range conds {
		if !c.measured {
			missing = append(missing, c.what)
			continue
		}
		if !c.pass {
			return verdictFail
		}
	}
	if len(missing) > 0 {
		return "not judged: " + strings.Join(missing, ", ") + " not measured"
	}
	return verdictPass
}

type cond struct {
	what           string
	measured, pass bool
}

// issue17 judges the targets of issue 17 on this run's figures (after),
// the idle-session memory (afterSess, KB per session, when measured), and
// shows the baseline's figures beside them (before may be nil). All the
// ratios are to direct in the same run; the floor's figures used as goals
// are the same run's.
func issue17(after figureSet, afterSess float64, hasAfterSess bool, before *baseline) []target17 {
	var out []target17
	bfs := figureSet{}
	if before != nil {
		bfs = before.figs
	}
	x := func(v float64, ok bool) string {
		if !ok {
			return "—"
		}
		return fmt.Sprintf("%.2f×", v)
	}
	withFloor := func(fs figureSet, key string) string {
		r, ok := fs.ratio("tcp", key)
		s := x(r, ok)
		if fr, ok := fs.ratio(refFloor, key); ok {
			s += fmt.Sprintf(" (floor %.2f×)", fr)
		}
		return s
	}

	// Throughput ratios with an absolute goal.
	{
		key := "host64_rps"
		r, ok := after.ratio("tcp", key)
		out = append(out, target17{"HTTP by Host, 64 conns", "tcp", withFloor(bfs, key), withFloor(after, key), "≥ 0.40×",
			judge(cond{"tcp", ok, r >= 0.40})})
	}
	{
		key := "tcp64_rps"
		r, ok := after.ratio("tcp", key)
		fr, fok := after.ratio(refFloor, key)
		goal := "≥ 0.50× and ≥ the floor"
		if fok {
			goal = fmt.Sprintf("≥ 0.50× and ≥ the floor (%.2f×)", fr)
		}
		out = append(out, target17{"HTTP via TCP port, 64 conns", "tcp", withFloor(bfs, key), withFloor(after, key), goal,
			judge(cond{"tcp", ok, r >= 0.50}, cond{"floor", fok, !ok || r >= fr})})
	}
	fu, fuok := after.ratio(refFloor, "bulk1_up")
	fd, fdok := after.ratio(refFloor, "bulk1_down")
	floorLow, floorOK := min(fu, fd), fuok && fdok
	for _, d := range []struct{ label, key string }{
		{"Bulk TCP, 1 stream, visitor → backend", "bulk1_up"},
		{"Bulk TCP, 1 stream, backend → visitor", "bulk1_down"},
	} {
		r, ok := after.ratio("tcp", d.key)
		goal := "≥ 0.35× and ≥ the floor's lower direction"
		if floorOK {
			goal = fmt.Sprintf("≥ 0.35× and ≥ the floor's lower direction (%.2f×)", floorLow)
		}
		out = append(out, target17{d.label, "tcp", withFloor(bfs, d.key), withFloor(after, d.key), goal,
			judge(cond{"tcp", ok, r >= 0.35}, cond{"floor", floorOK, !ok || r >= floorLow})})
	}

	// Added latency: no more than the floor's in the same run.
	ms := func(fs figureSet, key string) string {
		v, ok := fs.value("tcp", key)
		if !ok {
			return "—"
		}
		s := fmt.Sprintf("%+.3f ms", v)
		if f, ok := fs.value(refFloor, key); ok {
			s += fmt.Sprintf(" (floor %+.3f ms)", f)
		}
		return s
	}
	for _, w := range []struct{ name, key string }{{"by Host", "host"}, {"via TCP port", "tcp"}} {
		for _, q := range []string{"p50", "p99"} {
			key := "add" + w.key + "_" + q
			v, ok := after.value("tcp", key)
			f, fok := after.value(refFloor, key)
			goal := "≤ the floor's"
			if fok {
				goal = fmt.Sprintf("≤ the floor's (%+.3f ms)", f)
			}
			out = append(out, target17{"Added latency at 1,000 req/s, " + w.name + ", " + q, "tcp", ms(bfs, key), ms(after, key), goal,
				judge(cond{"tcp", ok, !fok || v <= f}, cond{"floor", fok, true})})
		}
	}

	// Memory.
	{
		b := "—"
		if before != nil && before.hasSess {
			b = fmt.Sprintf("%.1f KB", before.perSess)
		}
		a := "—"
		if hasAfterSess {
			a = fmt.Sprintf("%.1f KB", afterSess)
		}
		out = append(out, target17{"Gateway memory per idle agent session", "tcp", b, a, "≤ 20 KB",
			judge(cond{"idle sessions", hasAfterSess, afterSess <= 20})})
	}
	for _, w := range []struct{ name, key string }{{"HTTP by Host", "host64"}, {"HTTP via TCP port", "tcp64"}} {
		// The baseline has only the shared gateway's figure (or a fresh
		// pair's, when it is a newer file).
		bs := "—"
		if v, ok := bfs.value("tcp", w.key+"_fresh_rss"); ok {
			bs = fmt.Sprintf("%.1f MB", v)
		} else if v, ok := bfs.value("tcp", w.key+"_rss"); ok {
			bs = fmt.Sprintf("%.1f MB (shared gateway)", v)
		}
		v, ok := after.value("tcp", w.key+"_fresh_rss")
		as := "—"
		if ok {
			as = fmt.Sprintf("%.1f MB", v)
			if a, ok := after.value("tcp", w.key+"_fresh_anon"); ok {
				as += fmt.Sprintf(" (anon %.1f MB)", a)
			}
		}
		out = append(out, target17{"Gateway + agent peak RSS under " + w.name + ", 64 conns (a fresh pair)", "tcp", bs, as, "≤ 40 MB",
			judge(cond{"fresh pair", ok, v <= 40})})
	}

	// QUIC bulk against tcp's in the same run.
	for _, d := range []struct{ label, key string }{
		{"QUIC bulk, 1 stream, visitor → backend", "bulk1_up"},
		{"QUIC bulk, 1 stream, backend → visitor", "bulk1_down"},
	} {
		show := func(fs figureSet) string {
			q, qok := fs.ratio("quic", d.key)
			t, tok := fs.ratio("tcp", d.key)
			if !qok {
				return "—"
			}
			s := fmt.Sprintf("%.2f×", q)
			if tok {
				s += fmt.Sprintf(" (tcp %.2f×)", t)
			}
			return s
		}
		q, qok := after.ratio("quic", d.key)
		t, tok := after.ratio("tcp", d.key)
		goal := "≥ half of tcp's"
		if tok {
			goal = fmt.Sprintf("≥ half of tcp's (%.2f×)", t/2)
		}
		out = append(out, target17{d.label, "quic", show(bfs), show(after), goal,
			judge(cond{"quic", qok, !tok || q >= t/2}, cond{"tcp", tok, true})})
	}
	return out
}
