// Package certstore is the storage of a gateway cluster's certificates: a
// certmagic.Storage on etcd, so that the ACME account, the certificates,
// their keys and the challenge tokens of an order in progress are shared
// by every node. One node orders a certificate, under a lock all nodes
// respect, and every node serves it; a node that answers the CA's
// challenge need not be the one that placed the order.
//
// A certmagic key k is the etcd key Prefix+k. Its value is the stored bytes
// after a 9-byte header: a format version (1) and the time of the Store in
// Unix nanoseconds, big-endian, which Stat reports as the modification
// time. A "directory" is any key that prefixes others up to a '/', as in
// certmagic.FileStorage; it exists while it holds a file (FileStorage keeps
// an emptied directory, this storage cannot). Locks are etcd mutexes under
// the sibling prefix Prefix without its slash + ".locks/", each on a lease
// of its own that expires LockTTL after its node stops renewing it.
package certstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Defaults for Options.
const (
	DefaultPrefix  = "/diglett/certs/"
	DefaultLockTTL = 10 * time.Second
)

// MaxValueSize is the largest value Store accepts: certificates and keys
// are a few kilobytes, and etcd refuses requests over 1.5 MiB by default.
const MaxValueSize = 1 << 20

// headerLen is the length of the header before each stored value.
const headerLen = 9

// formatVersion is the first byte of the header.
const formatVersion = 1

// Errors callers may branch on. Load, List and Stat of a missing key
// return an error that matches fs.ErrNotExist, as certmagic expects.
var (
	// ErrBadKey is returned for a key that is empty, starts or ends with
	// '/', has an empty element, or contains "..".
	ErrBadKey = errors.New("certstore: bad key")
	// ErrTooLarge is returned by Store for a value over MaxValueSize.
	ErrTooLarge = errors.New("certstore: value too large")
	// ErrNotLocked is returned by Unlock for a lock this Storage does not
	// hold.
	ErrNotLocked = errors.New("certstore: lock not held")
	// ErrClosed is returned by Lock and TryLock after Close.
	ErrClosed = errors.New("certstore: storage closed")
)

// Options configures a Storage. Zero values take the documented defaults.
type Options struct {
	// Prefix is the etcd key prefix of the stored keys. Default
	// DefaultPrefix; a missing final '/' is added. Every node of a cluster
	// uses the same one.
	Prefix string
	// LockTTL is how long a lock outlives the node holding it when that
	// node dies or loses etcd: its lease expires then and frees the lock.
	// Whole seconds, at least one; etcd may raise a short one to its own
	// minimum (2s by default). Default DefaultLockTTL.
	LockTTL time.Duration
	// Logger receives lock events at Debug level, and a warning when a
	// lock was lost before Unlock. Default slog.Default().
	Logger *slog.Logger
}

// Storage is a certmagic.Storage, with its Locker and TryLocker, on etcd.
// Its methods are safe for concurrent use; every etcd call is made under
// the caller's context.
type Storage struct {
	client     *clientv3.Client
	prefix     string
	lockPrefix string
	ttl        int // lock lease TTL, seconds
	log        *slog.Logger

	// waitCtx ends at Close and aborts Lock calls still waiting.
	waitCtx    context.Context
	cancelWait context.CancelFunc
	// sessionCtx bounds the leases' keep-alives; it ends when Close has
	// released every lock.
	sessionCtx    context.Context
	cancelSession context.CancelFunc

	mu       sync.Mutex
	closed   bool
	held     map[string]*heldLock
	inflight sync.WaitGroup // Lock and TryLock calls in progress
}

var (
	_ certmagic.Storage   = (*Storage)(nil)
	_ certmagic.TryLocker = (*Storage)(nil)
)

// New returns a Storage on client with o. The client stays the caller's:
// close the Storage first, then the client.
func New(client *clientv3.Client, o Options) (*Storage, error) {
	if client == nil {
		return nil, errors.New("certstore: no etcd client")
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if !strings.HasSuffix(o.Prefix, "/") {
		o.Prefix += "/"
	}
	if o.Prefix == "/" {
		return nil, errors.New("certstore: the prefix is the whole key space")
	}
	if o.LockTTL == 0 {
		o.LockTTL = DefaultLockTTL
	}
	if o.LockTTL < time.Second {
		return nil, fmt.Errorf("certstore: lock TTL %v is under a second", o.LockTTL)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	s := &Storage{
		client:     client,
		prefix:     o.Prefix,
		lockPrefix: strings.TrimSuffix(o.Prefix, "/") + ".locks/",
		ttl:        int((o.LockTTL + time.Second - 1) / time.Second),
		log:        o.Logger,
		held:       make(map[string]*heldLock),
	}
	s.waitCtx, s.cancelWait = context.WithCancel(context.Background())
	s.sessionCtx, s.cancelSession = context.WithCancel(context.Background())
	return s, nil
}

// String describes the storage in certmagic's logs.
func (s *Storage) String() string { return "etcd:" + s.prefix }

// checkKey refuses keys that are not certmagic's relative, slash-separated
// paths.
func checkKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: empty", ErrBadKey)
	case strings.Contains(key, ".."):
		return fmt.Errorf("%w %q: contains \"..\"", ErrBadKey, key)
	case strings.ContainsRune(key, 0):
		return fmt.Errorf("%w %q: contains a NUL byte", ErrBadKey, key)
	}
	for _, el := range strings.Split(key, "/") {
		if el == "" || el == "." {
			return fmt.Errorf("%w %q: empty path element", ErrBadKey, key)
		}
	}
	return nil
}

func encode(value []byte, modified time.Time) []byte {
	b := make([]byte, headerLen+len(value))
	b[0] = formatVersion
	binary.BigEndian.PutUint64(b[1:headerLen], uint64(modified.UnixNano()))
	copy(b[headerLen:], value)
	return b
}

func decode(key string, b []byte) ([]byte, time.Time, error) {
	if len(b) < headerLen || b[0] != formatVersion {
		return nil, time.Time{}, fmt.Errorf("certstore: %s: value not in this storage's format", key)
	}
	modified := time.Unix(0, int64(binary.BigEndian.Uint64(b[1:headerLen])))
	return b[headerLen:], modified, nil
}

// Store puts value at key, creating or replacing it. It refuses a key that
// is a directory or lies under a file, as FileStorage does.
func (s *Storage) Store(ctx context.Context, key string, value []byte) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if len(value) > MaxValueSize {
		return fmt.Errorf("%w: %s is %d bytes, at most %d", ErrTooLarge, key, len(value), MaxValueSize)
	}
	k := s.prefix + key
	// Nothing under the key, and no file on its way.
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.Version(k+"/"), "=", 0).WithPrefix()}
	for i := range len(key) {
		if key[i] == '/' {
			cmps = append(cmps, clientv3.Compare(clientv3.Version(s.prefix+key[:i]), "=", 0))
		}
	}
	resp, err := s.client.Txn(ctx).
		If(cmps...).
		Then(clientv3.OpPut(k, string(encode(value, time.Now())))).
		Else(clientv3.OpGet(k+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())).
		Commit()
	if err != nil {
		return fmt.Errorf("certstore: store %s: %w", key, err)
	}
	if !resp.Succeeded {
		if resp.Responses[0].GetResponseRange().Count > 0 {
			return fmt.Errorf("certstore: store %s: is a directory", key)
		}
		return fmt.Errorf("certstore: store %s: a file is in its path", key)
	}
	return nil
}

// lookup reads, in one transaction, the file at key and one key under it
// as a directory: the most recently stored one. Values are read only for
// what withValues names.
func (s *Storage) lookup(ctx context.Context, key string, withValues lookupValues) (file, child *mvccpb.KeyValue, err error) {
	k := s.prefix + key
	fileOpts := []clientv3.OpOption{}
	childOpts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithLimit(1)}
	if withValues&fileValue == 0 {
		fileOpts = append(fileOpts, clientv3.WithKeysOnly())
	}
	if withValues&childValue == 0 {
		childOpts = append(childOpts, clientv3.WithKeysOnly())
	} else {
		childOpts = append(childOpts, clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortDescend))
	}
	resp, err := s.client.Txn(ctx).Then(
		clientv3.OpGet(k, fileOpts...),
		clientv3.OpGet(k+"/", childOpts...),
	).Commit()
	if err != nil {
		return nil, nil, err
	}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		file = kvs[0]
	}
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		child = kvs[0]
	}
	return file, child, nil
}

// lookupValues says which values lookup reads.
type lookupValues int

const (
	fileValue lookupValues = 1 << iota
	childValue
)

// Load returns the value at key, or an error matching fs.ErrNotExist when
// there is none.
func (s *Storage) Load(ctx context.Context, key string) ([]byte, error) {
	if err := checkKey(key); err != nil {
		return nil, err
	}
	file, child, err := s.lookup(ctx, key, fileValue)
	if err != nil {
		return nil, fmt.Errorf("certstore: load %s: %w", key, err)
	}
	if file == nil {
		if child != nil {
			return nil, fmt.Errorf("certstore: load %s: is a directory", key)
		}
		return nil, fmt.Errorf("certstore: load %s: %w", key, fs.ErrNotExist)
	}
	value, _, err := decode(key, file.Value)
	return value, err
}

// Delete removes key and, when it is a directory, everything under it.
// Deleting what does not exist is not an error.
func (s *Storage) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	k := s.prefix + key
	_, err := s.client.Txn(ctx).Then(
		clientv3.OpDelete(k),
		clientv3.OpDelete(k+"/", clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return fmt.Errorf("certstore: delete %s: %w", key, err)
	}
	return nil
}

// Exists reports whether key is a file or a directory. An error counts as
// no.
func (s *Storage) Exists(ctx context.Context, key string) bool {
	if checkKey(key) != nil {
		return false
	}
	file, child, err := s.lookup(ctx, key, 0)
	return err == nil && (file != nil || child != nil)
}

// List returns the files and directories directly in the directory dir
// ("" for the whole storage), or, when recursive, all of them under it, in
// lexical order. A missing dir is an error matching fs.ErrNotExist; a file
// lists nothing.
func (s *Storage) List(ctx context.Context, dir string, recursive bool) ([]string, error) {
	base := s.prefix
	if dir != "" {
		if err := checkKey(dir); err != nil {
			return nil, err
		}
		base += dir + "/"
	}
	resp, err := s.client.Txn(ctx).Then(
		clientv3.OpGet(strings.TrimSuffix(base, "/"), clientv3.WithKeysOnly()),
		clientv3.OpGet(base, clientv3.WithPrefix(), clientv3.WithKeysOnly()),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("certstore: list %s: %w", dir, err)
	}
	isFile := dir != "" && len(resp.Responses[0].GetResponseRange().Kvs) > 0
	kvs := resp.Responses[1].GetResponseRange().Kvs
	if len(kvs) == 0 {
		if isFile || dir == "" {
			return nil, nil
		}
		return nil, fmt.Errorf("certstore: list %s: %w", dir, fs.ErrNotExist)
	}
	seen := make(map[string]bool)
	var keys []string
	for _, kv := range kvs {
		els := strings.Split(strings.TrimPrefix(string(kv.Key), base), "/")
		n := 1
		if recursive {
			n = len(els)
		}
		for i := range n {
			k := path.Join(dir, strings.Join(els[:i+1], "/"))
			if !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
	}
	slices.Sort(keys)
	return keys, nil
}

// Stat describes key. A file's Modified is the time it was stored; a
// directory's is that of its most recently stored file, and its Size is 0.
func (s *Storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	if err := checkKey(key); err != nil {
		return certmagic.KeyInfo{}, err
	}
	file, child, err := s.lookup(ctx, key, fileValue|childValue)
	if err != nil {
		return certmagic.KeyInfo{}, fmt.Errorf("certstore: stat %s: %w", key, err)
	}
	switch {
	case file != nil:
		value, modified, err := decode(key, file.Value)
		if err != nil {
			return certmagic.KeyInfo{}, err
		}
		return certmagic.KeyInfo{Key: key, Modified: modified, Size: int64(len(value)), IsTerminal: true}, nil
	case child != nil:
		_, modified, err := decode(string(child.Key), child.Value)
		if err != nil {
			return certmagic.KeyInfo{}, err
		}
		return certmagic.KeyInfo{Key: key, Modified: modified}, nil
	}
	return certmagic.KeyInfo{}, fmt.Errorf("certstore: stat %s: %w", key, fs.ErrNotExist)
}
