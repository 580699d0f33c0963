package main

import (
	"encoding/json"
	"fmt"
	"image/color"
	"math"
	"os"
	"runtime"
	"slices"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// memPerSession is the idle-session memory figure, KB per session, or 0.
func (b *bench) memPerSession() float64 {
	if b.mem == nil {
		return 0
	}
	return b.mem.perSession()
}

// jsonFigure is one figure of results.json.
type jsonFigure struct {
	Label string    `json:"label,omitempty"` // its row in results.md, when it has one
	Unit  string    `json:"unit,omitempty"`
	Value float64   `json:"median"`
	Ratio *float64  `json:"ratio,omitempty"` // median of the per-run ratios to direct
	Runs  []float64 `json:"runs"`            // the value of each run that measured it
}

// writeJSON writes every figure of the run (median, ratio to direct and
// per-run values, by path and key), the one-off measurements and the
// run's metadata, for the next comparison to read without parsing
// markdown.
func (b *bench) writeJSON(path string, figs figureSet) error {
	byKey := map[string]row{}
	for _, r := range rows() {
		byKey[r.key] = r
		if _, dup := byKey["direct:"+r.dkey]; r.dkey != "" && !dup {
			byKey["direct:"+r.dkey] = r // the first row using it
		}
	}
	out := map[string]map[string]jsonFigure{}
	for p, keys := range figs {
		out[p] = map[string]jsonFigure{}
		for k, f := range keys {
			r, ok := byKey[k]
			if p == "direct" {
				r, ok = byKey["direct:"+k]
			}
			jf := jsonFigure{Value: f.Value, Ratio: f.Ratio, Runs: []float64{}}
			if ok {
				jf.Label, jf.Unit = r.label, r.unit
			}
			for _, res := range b.results {
				if v, has := res[p][k]; has {
					jf.Runs = append(jf.Runs, v)
				}
			}
			out[p][k] = jf
		}
	}
	type memJSON struct {
		Sessions     int     `json:"sessions"`
		Failed       int     `json:"failed"`
		VmRSSIdle    int64   `json:"vmrss_idle_bytes"`
		VmRSSWith    int64   `json:"vmrss_with_bytes"`
		RssAnonIdle  int64   `json:"rssanon_idle_bytes"`
		RssAnonWith  int64   `json:"rssanon_with_bytes"`
		RssFileIdle  int64   `json:"rssfile_idle_bytes"`
		RssFileWith  int64   `json:"rssfile_with_bytes"`
		PerSessionKB float64 `json:"per_session_kb"`
		// After each session carried UsedTrafficBytes to a visitor.
		UsedTrafficBytes int     `json:"used_traffic_bytes"`
		UsedWhole        int     `json:"used_whole"`
		VmRSSUsed        int64   `json:"vmrss_used_bytes"`
		PerSessionUsedKB float64 `json:"per_session_used_kb"`
	}
	type heldJSON struct {
		Way          string  `json:"way"`
		Held         int     `json:"held"`
		Errors1      int     `json:"errors_first"`
		Errors2      int     `json:"errors_second"`
		GatewayIdle  int64   `json:"gateway_vmrss_idle_bytes"`
		GatewayOpen  int64   `json:"gateway_vmrss_open_bytes"`
		AgentOpen    int64   `json:"agent_vmrss_open_bytes"`
		OpenSeconds  float64 `json:"open_seconds"`
		RoundSeconds float64 `json:"second_round_seconds"`
	}
	doc := struct {
		Date         string                           `json:"date"`
		Seconds      float64                          `json:"duration_seconds"`
		Commit       string                           `json:"commit"`
		Command      string                           `json:"command"`
		CPUs         string                           `json:"cpus"`
		CPU          string                           `json:"cpu"`
		Kernel       string                           `json:"kernel"`
		Go           string                           `json:"go"`
		Runs         int                              `json:"runs"`
		Secs         int                              `json:"secs"`
		LatencySecs  int                              `json:"latency_secs"`
		Rate         int                              `json:"rate"`
		Transports   []string                         `json:"transports"`
		Refs         []string                         `json:"refs"`
		Before       string                           `json:"before,omitempty"`
		Figures      map[string]map[string]jsonFigure `json:"figures"`
		Errors       map[string]int64                 `json:"errors"`
		IdleSessions *memJSON                         `json:"idle_sessions,omitempty"`
		// The same per transport, when the run has more than tcp.
		IdleByTransport map[string]*memJSON `json:"idle_sessions_by_transport,omitempty"`
		StreamKB        *float64            `json:"idle_stream_kb,omitempty"`
		Visitors        []heldJSON          `json:"visitors,omitempty"`
		Issue17         []target17          `json:"issue17_targets"`
	}{
		Date:        b.started.UTC().Format(time.RFC3339),
		Seconds:     b.duration.Seconds(),
		Commit:      commit(),
		Command:     b.o.command,
		CPUs:        cmdOut("nproc"),
		CPU:         cpuModel(),
		Kernel:      readTrim("/proc/sys/kernel/osrelease"),
		Go:          runtime.Version(),
		Runs:        b.o.runs,
		Secs:        b.o.secs,
		LatencySecs: b.o.latSecs,
		Rate:        b.o.rate,
		Transports:  b.transports(),
		Refs:        b.refs(),
		Figures:     out,
		Errors:      b.errs,
		Issue17:     b.issue17,
	}
	if b.before != nil {
		doc.Before = b.before.file
	}
	toJSON := func(m *memResult) *memJSON {
		return &memJSON{m.sessions, m.errors, m.before, m.after, m.beforeMem.anon, m.afterMem.anon,
			m.beforeMem.file, m.afterMem.file, m.perSession(), memTraffic, m.usedSessions, m.used.vm, m.perSessionUsed()}
	}
	if m := b.mem; m != nil {
		doc.IdleSessions = toJSON(m)
		if len(b.memOthers) > 0 {
			doc.IdleByTransport = map[string]*memJSON{m.transport: doc.IdleSessions}
			for _, o := range b.memOthers {
				doc.IdleByTransport[o.transport] = toJSON(o)
			}
		}
	}
	if c := b.conns; c != nil {
		if c.streams != nil {
			v := c.perStream()
			doc.StreamKB = &v
		}
		for _, r := range c.visitors {
			doc.Visitors = append(doc.Visitors, heldJSON{r.way, r.held, r.errs1, r.errs2, r.rssIdle, r.rssOpen, r.agentOpen,
				r.open.Seconds(), r.second.Seconds()})
		}
	}
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// chartBeforeAfter draws the tcp transport's main ratios to direct before
// (the baseline) and after (this run), the floor's beside them, and each
// group's issue-17 target as a dashed line across it.
func (b *bench) chartBeforeAfter(path string) error {
	groups := []struct {
		label, key string
		target     float64
	}{
		{"HTTP by Host\n64 conns", "host64_rps", 0.40},
		{"HTTP via TCP port\n64 conns", "tcp64_rps", 0.50},
		{"bulk 1 stream\nvisitor → backend", "bulk1_up", 0.35},
		{"bulk 1 stream\nbackend → visitor", "bulk1_down", 0.35},
	}
	after := b.figures()
	before := b.before.figs
	series := []struct {
		name string
		fs   figureSet
		path string
		fill color.Color
	}{
		{"tcp, before", before, "tcp", color.RGBA{0xa6, 0xce, 0xe3, 0xff}},
		{"tcp, after", after, "tcp", color.RGBA{0x1f, 0x78, 0xb4, 0xff}},
		{"floor, before", before, refFloor, color.RGBA{0xd9, 0xc2, 0xb0, 0xff}},
		{"floor, after", after, refFloor, color.RGBA{0x8c, 0x56, 0x4b, 0xff}},
	}
	// A series neither run has (no floor measured) is left out.
	series = slices.DeleteFunc(series, func(s struct {
		name string
		fs   figureSet
		path string
		fill color.Color
	}) bool {
		return s.fs[s.path] == nil
	})
	p := plot.New()
	p.Title.Text = fmt.Sprintf("tcp transport before (%s) and after (this run, median of %d), ratio to direct; dashes: issue 17 targets", orUnknown(b.before.commit), b.o.runs)
	p.Y.Label.Text = "× direct (higher is better)"
	p.Y.Min = 0
	p.Add(plotter.NewGrid())
	width := vg.Points(22)
	ymax := 0.6
	n := len(series)
	for i, s := range series {
		vals := make(plotter.Values, len(groups))
		for j, g := range groups {
			if r, ok := s.fs.ratio(s.path, g.key); ok && !math.IsNaN(r) {
				vals[j] = r
			}
			ymax = math.Max(ymax, vals[j])
		}
		bars, err := plotter.NewBarChart(vals, width)
		if err != nil {
			return err
		}
		bars.Color = s.fill
		bars.LineStyle.Width = 0
		bars.Offset = width * vg.Length(float64(i)-float64(n-1)/2)
		p.Add(bars)
		p.Legend.Add(s.name, bars)
	}
	for j, g := range groups {
		l, err := plotter.NewLine(plotter.XYs{{X: float64(j) - 0.42, Y: g.target}, {X: float64(j) + 0.42, Y: g.target}})
		if err != nil {
			return err
		}
		l.LineStyle.Width = vg.Points(2)
		l.LineStyle.Dashes = []vg.Length{vg.Points(6), vg.Points(3)}
		l.LineStyle.Color = color.Black
		p.Add(l)
		if j == 0 {
			p.Legend.Add("target", l)
		}
		lab, err := plotter.NewLabels(plotter.XYLabels{
			XYs:    []plotter.XY{{X: float64(j) + 0.42, Y: g.target}},
			Labels: []string{fmt.Sprintf("%.2f×", g.target)},
		})
		if err != nil {
			return err
		}
		lab.TextStyle[0].XAlign = draw.XRight
		lab.TextStyle[0].YAlign = draw.YBottom
		p.Add(lab)
	}
	var labels []string
	for _, g := range groups {
		labels = append(labels, g.label)
	}
	// Room above the bars for the legend.
	return saveBars(p, labels, math.Ceil(ymax*10)/10+0.25, path)
}
