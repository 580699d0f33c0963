package catalog

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// etcd defaults and bounds.
const (
	// DefaultEtcdPrefix is the default of EtcdOptions.Prefix.
	DefaultEtcdPrefix = "/diglett/ports/"
	// maxEtcdKeys bounds how many services are read: a read that finds
	// more fails, and a new key past the bound is ignored with a warning.
	maxEtcdKeys = 10_000
	// etcdTimeout bounds connecting and each read of the keys.
	etcdTimeout = 5 * time.Second
	// etcdHealthy is how long a watch must have run, when it delivered
	// nothing, for its failure to start a new streak of failures.
	etcdHealthy = time.Minute
)

// EtcdOptions configure an etcd source. Zero values are the documented
// defaults.
type EtcdOptions struct {
	// Endpoints are the cluster's client URLs (required), e.g.
	// "http://127.0.0.1:2379".
	Endpoints []string
	// Prefix starts every key. Default DefaultEtcdPrefix.
	Prefix string
	// Node, when set, reads the keys PREFIX + NODE + "/" + SERVICE;
	// otherwise PREFIX + SERVICE. Default none.
	Node string
	// Username and Password authenticate to etcd when set; the password
	// is never logged.
	Username, Password string
	// TLS is the client's TLS configuration for https endpoints. Default
	// none.
	TLS *tls.Config
	// Logger receives what the source does, malformed values and the
	// errors it retries. Default slog.Default().
	Logger *slog.Logger
}

// Etcd is a Source that reads the services' ports from etcd keys under a
// prefix, then watches them.
type Etcd struct {
	cfg     clientv3.Config
	prefix  string        // the keys' prefix, node included
	timeout time.Duration // of each read
	log     *slog.Logger

	// afterLoad, when set (by tests), is called after each full read
	// with its revision.
	afterLoad func(rev int64)
}

var _ Source = (*Etcd)(nil)

// NewEtcd checks o and returns the source; it connects in Watch.
func NewEtcd(o EtcdOptions) (*Etcd, error) {
	if len(o.Endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	for _, e := range o.Endpoints {
		if strings.TrimSpace(e) == "" {
			return nil, errors.New("etcd: empty endpoint")
		}
	}
	if o.Prefix == "" {
		o.Prefix = DefaultEtcdPrefix
	}
	if strings.Contains(o.Node, "/") {
		return nil, fmt.Errorf("etcd: node %q: no slash allowed", o.Node)
	}
	if o.Password != "" && o.Username == "" {
		return nil, errors.New("etcd: a password without a username")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	prefix := o.Prefix
	if o.Node != "" {
		prefix += o.Node + "/"
	}
	return &Etcd{
		cfg: clientv3.Config{
			Endpoints:   slices.Clone(o.Endpoints),
			DialTimeout: etcdTimeout,
			Username:    o.Username,
			Password:    o.Password,
			TLS:         o.TLS,
			Logger:      zap.NewNop(),
		},
		prefix:  prefix,
		timeout: etcdTimeout,
		log:     o.Logger.With("source", "etcd", "prefix", prefix),
	}, nil
}

// Watch connects to etcd, reads every key under the prefix, calls update
// with their ports, then watches the keys from the next revision and
// calls update each time the set changes, until ctx ends. When the watch
// fails (a compaction past its revision, a lost leader, a closed stream)
// it reads everything again and watches from there. Failures are retried
// with a capped backoff, connecting (and authenticating) included: Watch
// returns only when ctx ends, with nil.
func (e *Etcd) Watch(ctx context.Context, update func([]Port)) error {
	retry := newRetrier(e.log, "etcd")
	var cli *clientv3.Client
	for {
		var err error
		if cli, err = clientv3.New(e.cfg); err == nil {
			break
		}
		if !retry.fail(ctx, fmt.Errorf("connect: %w", err)) {
			return nil
		}
	}
	defer cli.Close()
	em := emitter{update: update}
	// A watch that failed ends its streak of failures only once a watch
	// proves healthy, not at the next read, so that a watch failing at
	// once again and again is logged once and waits longer each time.
	watchFailed := false
	for {
		state, rev, err := e.load(ctx, cli)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if !retry.fail(ctx, err) {
				return nil
			}
			continue
		}
		if !watchFailed {
			retry.ok()
		}
		if e.afterLoad != nil {
			e.afterLoad(rev)
		}
		if em.emit(e.ports(state)) {
			e.log.Debug("catalog: ports asked for", "count", len(em.last), "ports", summary(em.last), "revision", rev)
		}
		start := time.Now()
		delivered, err := e.watch(ctx, cli, rev, state, &em)
		if ctx.Err() != nil {
			return nil
		}
		if delivered || time.Since(start) >= etcdHealthy {
			retry.ok()
			watchFailed = false
		}
		if errors.Is(err, errCompacted) {
			// Not a failure, but never read in a busy loop.
			e.log.Info("catalog: etcd watch past a compaction; reading again", "err", err)
			if !sleep(ctx, minBackoff) {
				return nil
			}
			continue
		}
		watchFailed = true
		if !retry.fail(ctx, fmt.Errorf("watch: %w", err)) {
			return nil
		}
	}
}

// errCompacted is a watch that began before the oldest revision kept.
var errCompacted = errors.New("compacted")

// load reads every key under the prefix into a new state: the ports of
// each key whose value parses, by key.
func (e *Etcd) load(ctx context.Context, cli *clientv3.Client) (map[string][]Port, int64, error) {
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	resp, err := cli.Get(ctx, e.prefix, clientv3.WithPrefix(), clientv3.WithLimit(maxEtcdKeys+1))
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", e.prefix, err)
	}
	if resp.More || len(resp.Kvs) > maxEtcdKeys {
		return nil, 0, fmt.Errorf("read %s: more than %d keys", e.prefix, maxEtcdKeys)
	}
	state := make(map[string][]Port, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		e.put(state, string(kv.Key), kv.Value)
	}
	return state, resp.Header.Revision, nil
}

// watch applies the changes after revision rev to state, giving each new
// set to em, until the watch fails or ctx ends; delivered tells whether
// it received any change.
func (e *Etcd) watch(ctx context.Context, cli *clientv3.Client, rev int64, state map[string][]Port, em *emitter) (delivered bool, err error) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	ch := cli.Watch(wctx, e.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for resp := range ch {
		if resp.CompactRevision != 0 {
			return delivered, fmt.Errorf("%w at revision %d, watched from %d", errCompacted, resp.CompactRevision, rev+1)
		}
		if err := resp.Err(); err != nil {
			return delivered, err
		}
		if resp.Canceled {
			return delivered, errors.New("canceled")
		}
		if len(resp.Events) == 0 {
			continue
		}
		delivered = true
		for _, ev := range resp.Events {
			switch ev.Type {
			case clientv3.EventTypePut:
				e.put(state, string(ev.Kv.Key), ev.Kv.Value)
			case clientv3.EventTypeDelete:
				delete(state, string(ev.Kv.Key))
			}
		}
		if em.emit(e.ports(state)) {
			e.log.Debug("catalog: ports asked for", "count", len(em.last), "ports", summary(em.last), "revision", resp.Header.Revision)
		}
	}
	if ctx.Err() != nil {
		return delivered, ctx.Err()
	}
	return delivered, errors.New("watch closed")
}

// put applies a put of key: a value that does not parse removes what
// the key asked for.
func (e *Etcd) put(state map[string][]Port, key string, value []byte) {
	service := strings.TrimPrefix(key, e.prefix)
	if service == "" {
		e.log.Warn("catalog: etcd key skipped: want PREFIX[NODE/]SERVICE", "key", key)
		return
	}
	ports, err := parseValue(value, service)
	if err != nil {
		e.log.Warn("catalog: etcd value skipped", "key", key, "service", service, "err", err)
		delete(state, key)
		return
	}
	if _, ok := state[key]; !ok && len(state) >= maxEtcdKeys {
		e.log.Warn("catalog: etcd key ignored: too many keys", "key", key, "max", maxEtcdKeys)
		return
	}
	state[key] = ports
}

// ports is the ports of state, by key order.
func (e *Etcd) ports(state map[string][]Port) []Port {
	var out []Port
	for _, k := range slices.Sorted(maps.Keys(state)) {
		out = append(out, state[k]...)
	}
	return out
}
