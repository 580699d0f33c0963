// Package etcdregistry is a jwt.Registry kept in etcd, under a prefix:
//
//	PREFIX/identities/LABEL = "ed25519:..."   (the key "diglett keygen" prints)
//	PREFIX/names/NAME       = LABEL or identity id of the owner
//
// as in the jwt module's file registry: an identity's id, which its tokens
// carry, is the thumbprint of its key (jwt.IdentityID); the label only
// names it. The registry loads everything once, then watches both
// prefixes and keeps its copy in memory, so logins ask no network and a
// change (a name given to another identity, an identity removed) is seen
// at once: Config.OnChange is called after each change, and the gateway
// then checks its live sessions again.
package etcdregistry

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/diglett/diglett/auth/jwt"
	"github.com/diglett/diglett/internal/protocol"
)

// Defaults and bounds.
const (
	// DefaultPrefix is the prefix of the registry's keys.
	DefaultPrefix = "/diglett"
	// DefaultDialTimeout bounds connecting and each full load.
	DefaultDialTimeout = 5 * time.Second
	// DefaultMaxKeys bounds how many identities and names are held.
	DefaultMaxKeys = 100_000
	// maxBackoff bounds the wait between two attempts to load and watch
	// again after the watch failed.
	maxBackoff = 30 * time.Second
	// minBackoff is the first such wait.
	minBackoff = 100 * time.Millisecond
)

// Config configures a Registry. Zero values are the documented defaults.
type Config struct {
	// Endpoints are the etcd cluster's client URLs (required), e.g.
	// "http://127.0.0.1:2379".
	Endpoints []string
	// Prefix is the prefix of the keys, without a trailing slash.
	// Default: DefaultPrefix.
	Prefix string
	// DialTimeout bounds connecting and each full load of the keys.
	// Default: DefaultDialTimeout.
	DialTimeout time.Duration
	// MaxKeys bounds how many identities and names the registry holds:
	// a load that finds more fails, and a new key past the bound is
	// ignored with a warning. Default: DefaultMaxKeys.
	MaxKeys int
	// OnChange, when set, is called after each change seen by the watch
	// (and after a full load that follows a failed watch), from the
	// registry's goroutine; it must not block for long.
	OnChange func()
	// Logger is where the registry logs keys it skips and watch failures.
	// Default: slog.Default().
	Logger *slog.Logger
}

// Validate reports whether c can build a Registry.
func (c Config) Validate() error {
	if len(c.Endpoints) == 0 {
		return errors.New("no etcd endpoints")
	}
	for _, e := range c.Endpoints {
		if strings.TrimSpace(e) == "" {
			return errors.New("empty etcd endpoint")
		}
	}
	if c.Prefix != "" && (!strings.HasPrefix(c.Prefix, "/") || strings.HasSuffix(c.Prefix, "/")) {
		return fmt.Errorf("prefix %q: want a leading slash and no trailing one, like %q", c.Prefix, DefaultPrefix)
	}
	if c.DialTimeout < 0 {
		return errors.New("negative dial timeout")
	}
	if c.MaxKeys < 0 {
		return errors.New("negative max keys")
	}
	return nil
}

// Registry answers jwt.Registry's questions from its in-memory copy of
// the keys under the prefix. Close it to stop the watch.
type Registry struct {
	cli        *clientv3.Client
	endpoints  string // for errors
	identities string // PREFIX/identities/
	names      string // PREFIX/names/
	timeout    time.Duration
	max        int
	onChange   func()
	log        *slog.Logger

	mu sync.RWMutex
	st state

	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// state is the registry's copy of the keys.
type state struct {
	labels map[string]string            // label -> identity id
	keys   map[string]ed25519.PublicKey // identity id -> key
	refs   map[string]int               // identity id -> labels with its key
	owners map[string]string            // name -> owner as stored: label or id
}

func newState() state {
	return state{
		labels: make(map[string]string),
		keys:   make(map[string]ed25519.PublicKey),
		refs:   make(map[string]int),
		owners: make(map[string]string),
	}
}

func (s *state) size() int { return len(s.labels) + len(s.owners) }

var _ jwt.Registry = (*Registry)(nil)

// New connects to etcd, loads the registry and starts watching it. ctx
// bounds the first load (as does DialTimeout), not the watch: Close
// stops that.
func New(ctx context.Context, c Config) (*Registry, error) {
	return start(ctx, c, 0)
}

// start is New, watching from revision watchFrom instead of the loaded
// one when it is not 0 (tests use it to make the watch fail).
func start(ctx context.Context, c Config, watchFrom int64) (*Registry, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	r := &Registry{
		timeout:  c.DialTimeout,
		max:      c.MaxKeys,
		onChange: c.OnChange,
		log:      c.Logger,
		done:     make(chan struct{}),
	}
	prefix := c.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	r.identities, r.names = prefix+"/identities/", prefix+"/names/"
	if r.timeout == 0 {
		r.timeout = DefaultDialTimeout
	}
	if r.max == 0 {
		r.max = DefaultMaxKeys
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	if r.onChange == nil {
		r.onChange = func() {}
	}
	r.log = r.log.With("prefix", prefix)
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   c.Endpoints,
		DialTimeout: r.timeout,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	r.cli = cli
	r.endpoints = fmt.Sprint(c.Endpoints)
	rev, err := r.load(ctx)
	if err != nil {
		cli.Close()
		return nil, err
	}
	if watchFrom != 0 {
		rev = watchFrom
	}
	wctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go r.run(wctx, rev)
	return r, nil
}

// Close stops the watch and closes the connection to etcd.
func (r *Registry) Close() error {
	r.closeOnce.Do(func() {
		r.cancel()
		<-r.done
		r.closeErr = r.cli.Close()
	})
	return r.closeErr
}

// Key returns the public key of identity id.
func (r *Registry) Key(_ context.Context, id string) (crypto.PublicKey, error) {
	r.mu.RLock()
	k, ok := r.st.keys[id]
	r.mu.RUnlock()
	if !ok {
		return nil, jwt.ErrUnknownIdentity
	}
	return k, nil
}

// Owner returns the identity id that owns name.
func (r *Registry) Owner(_ context.Context, name string) (string, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	o, ok := r.st.owners[name]
	if !ok {
		return "", jwt.ErrNoOwner
	}
	if id, ok := r.st.labels[o]; ok {
		return id, nil
	}
	return o, nil
}

// load reads every identity and name, at one revision, into a new state
// that replaces the current one, and returns that revision.
func (r *Registry) load(ctx context.Context) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	ids, err := r.cli.Get(ctx, r.identities, clientv3.WithPrefix(), clientv3.WithLimit(int64(r.max)))
	if err != nil {
		return 0, fmt.Errorf("etcd %s: load %s: %w", r.endpoints, r.identities, err)
	}
	if ids.More {
		return 0, fmt.Errorf("etcd %s: more than %d keys under %s", r.endpoints, r.max, r.identities)
	}
	rev := ids.Header.Revision
	names, err := r.cli.Get(ctx, r.names, clientv3.WithPrefix(), clientv3.WithRev(rev),
		clientv3.WithLimit(int64(r.max-len(ids.Kvs)+1)))
	if err != nil {
		return 0, fmt.Errorf("etcd %s: load %s: %w", r.endpoints, r.names, err)
	}
	if len(ids.Kvs)+len(names.Kvs) > r.max {
		return 0, fmt.Errorf("etcd %s: more than %d keys under %s and %s", r.endpoints, r.max, r.identities, r.names)
	}
	st := newState()
	for _, kv := range ids.Kvs {
		r.put(&st, string(kv.Key), string(kv.Value))
	}
	for _, kv := range names.Kvs {
		r.put(&st, string(kv.Key), string(kv.Value))
	}
	r.mu.Lock()
	r.st = st
	r.mu.Unlock()
	r.log.Debug("jwt registry: loaded from etcd", "identities", len(st.labels), "names", len(st.owners), "revision", rev)
	return rev, nil
}

// put applies a put of key to st. A value that does not parse removes
// what key held, so a botched edit revokes rather than keeps the old
// answer.
func (r *Registry) put(st *state, key, value string) {
	if label, ok := strings.CutPrefix(key, r.identities); ok {
		if label == "" || strings.Contains(label, "/") {
			r.log.Warn("jwt registry: etcd key skipped: want "+r.identities+"LABEL", "key", key)
			return
		}
		pub, err := jwt.ParsePublicKey(value)
		if err != nil {
			r.log.Warn("jwt registry: etcd identity skipped", "key", key, "err", err)
			r.del(st, key)
			return
		}
		r.del(st, key)
		if st.size() >= r.max {
			r.log.Warn("jwt registry: etcd identity ignored: too many keys", "key", key, "max", r.max)
			return
		}
		id := jwt.IdentityID(pub)
		st.labels[label] = id
		st.keys[id] = pub
		st.refs[id]++
		return
	}
	if name, ok := strings.CutPrefix(key, r.names); ok {
		if err := protocol.ValidateName(name); err != nil {
			r.log.Warn("jwt registry: etcd name skipped", "key", key, "err", err)
			return
		}
		owner := strings.TrimSpace(value)
		if owner == "" {
			r.log.Warn("jwt registry: etcd name skipped: no owner", "key", key)
			r.del(st, key)
			return
		}
		if _, ok := st.owners[name]; !ok && st.size() >= r.max {
			r.log.Warn("jwt registry: etcd name ignored: too many keys", "key", key, "max", r.max)
			return
		}
		st.owners[name] = owner
	}
}

// del applies a delete of key to st.
func (r *Registry) del(st *state, key string) {
	if label, ok := strings.CutPrefix(key, r.identities); ok {
		id, ok := st.labels[label]
		if !ok {
			return
		}
		delete(st.labels, label)
		if st.refs[id]--; st.refs[id] <= 0 {
			delete(st.refs, id)
			delete(st.keys, id)
		}
		return
	}
	if name, ok := strings.CutPrefix(key, r.names); ok {
		delete(st.owners, name)
	}
}

// run watches from revision rev until ctx ends. When the watch fails
// (compaction, a lost leader, a closed stream) it loads everything again
// and watches from there, waiting longer after each failure in a row.
func (r *Registry) run(ctx context.Context, rev int64) {
	defer close(r.done)
	backoff := minBackoff
	for {
		err := r.watch(ctx, rev)
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("jwt registry: etcd watch failed; loading again", "err", err)
		for {
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(2*backoff, maxBackoff)
			rev, err = r.load(ctx)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			r.log.Warn("jwt registry: etcd load failed", "err", err, "retry_in", backoff)
		}
		r.onChange()
		backoff = minBackoff
	}
}

// watch applies the changes after revision rev until the watch fails or
// ctx ends.
func (r *Registry) watch(ctx context.Context, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	ids := r.cli.Watch(wctx, r.identities, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	names := r.cli.Watch(wctx, r.names, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for {
		var (
			resp clientv3.WatchResponse
			ok   bool
		)
		select {
		case resp, ok = <-ids:
		case resp, ok = <-names:
		}
		if !ok {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return errors.New("watch closed")
		}
		if err := resp.Err(); err != nil {
			return err
		}
		if len(resp.Events) == 0 {
			continue
		}
		r.mu.Lock()
		for _, ev := range resp.Events {
			switch ev.Type {
			case clientv3.EventTypePut:
				r.put(&r.st, string(ev.Kv.Key), string(ev.Kv.Value))
			case clientv3.EventTypeDelete:
				r.del(&r.st, string(ev.Kv.Key))
			}
		}
		r.mu.Unlock()
		r.log.Debug("jwt registry: etcd change", "events", len(resp.Events), "revision", resp.Header.Revision)
		r.onChange()
	}
}
