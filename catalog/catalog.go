// Package catalog reads, from a service catalog, which ports the services
// of a node want open on the router, the firewall and DNS, and yields the
// whole desired set each time it changes. It holds three sources:
//
//   - Consul: the node catalog (GET /v1/catalog/node/NODE) read with
//     blocking queries. A service asks for ports with a tag such as
//
//     (diglett (tcp_port 25 587) (udp_port 53))
//
//     The first word is ConsulOptions.TagKeyword ("diglett" by default);
//     setting it to another keyword reads catalogs written for other tools
//     that use the same tag syntax. Each item is tcp_port or udp_port
//     followed by one or more port numbers (1-65535). Tags that do not
//     start with "(KEYWORD" are other tools' and are ignored; a malformed
//     tag with the keyword is logged and skipped, the service's other tags
//     kept.
//
//   - etcd: one key per service, PREFIX + NODE + "/" + SERVICE (or
//     PREFIX + SERVICE when no node is given), "/diglett/ports/" being the
//     default prefix, whose value is YAML or JSON:
//
//     {tcp: [25, 587], udp: [53]}
//
//     A value that does not parse is logged and counts for nothing (the
//     service's earlier ports are no longer asked for). At most 10000 keys
//     are read.
//
//   - File: a YAML file, watched for changes:
//
//     ports: [{service: mail, tcp: [25, 587]}, {service: dns, udp: [53]}]
//
//     Each entry names its service (required) and has the same tcp and
//     udp lists as an etcd value. A file that cannot be read or parsed
//     (mid-edit, say) is logged and the last good set stays in force.
//
// In all three schemas unknown fields are errors, and a port is a number
// from 1 to 65535.
//
// A Source's set is sorted by protocol then port, and a port asked for by
// several services appears once, with the first service's name (Consul:
// services ordered by name then ID; etcd: by key; file: in file order).
package catalog

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// The protocols of a Port.
const (
	TCP = "tcp"
	UDP = "udp"
)

// Port is one port a service wants open.
type Port struct {
	// Proto is TCP or UDP.
	Proto string
	// Port is the port number, 1-65535.
	Port uint16
	// Service is the name of the service that asked for it.
	Service string
}

// String words p as "tcp/25 (mail)", or "tcp/25" with no service.
func (p Port) String() string {
	if p.Service == "" {
		return fmt.Sprintf("%s/%d", p.Proto, p.Port)
	}
	return fmt.Sprintf("%s/%d (%s)", p.Proto, p.Port, p.Service)
}

// Source yields the whole desired set of ports each time it changes
// (sorted, deduplicated by Proto+Port, the first service name kept),
// starting with the current set.
type Source interface {
	// Watch calls update with the current set, then with each new set,
	// from Watch's goroutine (update should not block for long). It
	// blocks until ctx ends, returning nil then, or returns a fatal
	// configuration error; transient errors are logged and retried with
	// a capped backoff.
	Watch(ctx context.Context, update func([]Port)) error
}

// SourceFunc adapts a function to Source.
type SourceFunc func(ctx context.Context, update func([]Port)) error

// Watch calls f.
func (f SourceFunc) Watch(ctx context.Context, update func([]Port)) error { return f(ctx, update) }

var _ Source = SourceFunc(nil)

// Normalize returns ports sorted by protocol then port, each Proto+Port
// once with the service of its first occurrence in ports. It never
// returns nil.
func Normalize(ports []Port) []Port {
	out := slices.Clone(ports)
	slices.SortStableFunc(out, func(a, b Port) int {
		return cmp.Or(cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Port, b.Port))
	})
	out = slices.CompactFunc(out, func(a, b Port) bool { return a.Proto == b.Proto && a.Port == b.Port })
	if out == nil {
		out = []Port{}
	}
	return slices.Clip(out)
}

// maxSummary bounds how many ports a log line lists.
const maxSummary = 32

// summary words a set for the log: "tcp/25 (mail), udp/53 (dns)", the
// first maxSummary ports and how many more.
func summary(ports []Port) string {
	var b strings.Builder
	for i, p := range ports {
		if i == maxSummary {
			fmt.Fprintf(&b, ", and %d more", len(ports)-i)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(p.String())
	}
	return b.String()
}

// emitter calls update with each set that differs from the last one
// given.
type emitter struct {
	update func([]Port)
	last   []Port
	sent   bool
}

// emit normalizes ports and gives them to update unless they are the set
// given last; it reports whether it did.
func (e *emitter) emit(ports []Port) bool {
	ports = Normalize(ports)
	if e.sent && slices.Equal(ports, e.last) {
		return false
	}
	e.last, e.sent = ports, true
	e.update(slices.Clone(ports))
	return true
}

// Retry bounds: the first wait after an error and the cap of the
// doubling waits that follow.
const (
	minBackoff = 500 * time.Millisecond
	maxBackoff = 30 * time.Second
)

// retrier waits, between attempts that fail, twice as long each time up
// to a cap, and logs a streak of failures once: the first at Warn, the
// others at Debug, and the success that ends it at Info.
type retrier struct {
	log      *slog.Logger
	what     string // "consul query", ...
	min, max time.Duration
	next     time.Duration
	failures int
}

func newRetrier(log *slog.Logger, what string) *retrier {
	return &retrier{log: log, what: what, min: minBackoff, max: maxBackoff, next: minBackoff}
}

// fail logs err and waits before the next attempt; false when ctx ended
// meanwhile.
func (r *retrier) fail(ctx context.Context, err error) bool {
	r.failures++
	wait := r.next
	r.next = min(2*r.next, r.max)
	lvl := slog.LevelDebug
	if r.failures == 1 {
		lvl = slog.LevelWarn
	}
	r.log.Log(ctx, lvl, "catalog: "+r.what+" failed; retrying", "err", err, "failures", r.failures, "retry_in", wait)
	return sleep(ctx, wait)
}

// ok ends a streak of failures.
func (r *retrier) ok() {
	if r.failures > 0 {
		r.log.Info("catalog: "+r.what+" works again", "failures", r.failures)
	}
	r.failures, r.next = 0, r.min
}

// sleep waits d; false when ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// portLists is the ports of one service, as an etcd value and a file
// entry write them.
type portLists struct {
	TCP []int `yaml:"tcp"`
	UDP []int `yaml:"udp"`
}

// ports checks the lists and returns them as Ports of service.
func (l portLists) ports(service string) ([]Port, error) {
	out := make([]Port, 0, len(l.TCP)+len(l.UDP))
	for _, list := range []struct {
		proto string
		nums  []int
	}{{TCP, l.TCP}, {UDP, l.UDP}} {
		for _, n := range list.nums {
			if n < 1 || n > 65535 {
				return nil, fmt.Errorf("%s port %d: want 1-65535", list.proto, n)
			}
			out = append(out, Port{Proto: list.proto, Port: uint16(n), Service: service})
		}
	}
	return out, nil
}

// decodeStrict decodes one YAML (or JSON) document of data into v,
// refusing unknown fields, an empty document and trailing documents.
func decodeStrict(data []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("empty")
		}
		return err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return errors.New("more than one document")
	}
	return nil
}

// parseValue parses an etcd value: the port lists of service.
func parseValue(data []byte, service string) ([]Port, error) {
	var l portLists
	if err := decodeStrict(data, &l); err != nil {
		return nil, err
	}
	return l.ports(service)
}
