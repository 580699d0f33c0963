package servercli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/diglett/diglett/auth/tokens"
	"github.com/diglett/diglett/config"
	"github.com/diglett/diglett/gateway"
	"github.com/diglett/diglett/internal/watch"
)

// Live reload of the gateway's authentication.
//
// SIGHUP, and with --watch a change to one of the source's files, rebuild
// the Authenticator from its source and put it in force with
// gateway.Server.SetAuthenticator, which re-checks every agent session
// (see there). A source that fails to build (a broken file) is logged at
// Error with its file and line, and the Authenticator in force stays.
//
// The source is an authSource: the files to watch and a Build function:
// the --tokens file (tokensSource) or, with --config, the configuration
// file and the files it names (configSource, configreload.go), whose
// builds also say which files to watch from then on and which changes
// need a restart.

// authSource is where the gateway's Authenticator comes from.
type authSource struct {
	// What names the source in the log: "tokens" logs "tokens reloaded".
	What string
	// Files are what Build reads; with --watch a change to one of them
	// reloads. Their directories must exist.
	Files []string
	// Build reads the files and builds the Authenticator. Its error says
	// which file and line are wrong; with an error, only the snapshot's
	// Files are used.
	Build func() (authSnapshot, error)
	// Kept words, in the log of a refused build, what stays in force.
	// Default "those in force".
	Kept string
	// Held, if set, is told of each Authenticator put in force, and
	// closes the one it replaces. A build not put in force is closed.
	Held *heldAuth
}

// authSnapshot is an Authenticator built by a source, with what it allows
// per identity, so that the log can say what a reload changed.
type authSnapshot struct {
	Auth gateway.Authenticator
	// Identities maps each identity to a digest of what it is allowed
	// (its tokens, names and quota); never the tokens themselves. Nil
	// when the source cannot tell.
	Identities map[string]string

	// Files, if not nil, are the files to watch from now on in place of
	// the source's Files (a configuration file names its tokens files).
	Files []string
	// Changes are further attributes of the "reloaded" log line: what
	// else changed (never a secret).
	Changes []any
	// Restart lists the changed settings that only a restart applies;
	// they are logged at Warn and left as they are.
	Restart []string
	// Commit, if set, is called once the snapshot is in force.
	Commit func()
}

// authSetter is the part of the gateway a reload changes.
type authSetter interface {
	SetAuthenticator(ctx context.Context, a gateway.Authenticator) (gateway.Recheck, error)
}

var _ authSetter = (*gateway.Server)(nil)

// reloader puts what its source builds in force, one reload at a time.
type reloader struct {
	srv authSetter
	src authSource
	log *slog.Logger

	mu    sync.Mutex
	cur   map[string]string // identities in force, from the last good build
	files []string          // the files to watch, from the last build that said
	// read are the files watched when the last build began, as they
	// were then: a change the watch cannot have seen (made while it was
	// being replaced) shows as a difference.
	read map[string]fileStamp
}

// fileStamp is what tells a changed file: its size and time, or absent.
type fileStamp struct {
	size    int64
	mod     time.Time
	present bool
}

func stampOf(file string) fileStamp {
	fi, err := os.Stat(file)
	if err != nil {
		return fileStamp{}
	}
	return fileStamp{size: fi.Size(), mod: fi.ModTime(), present: true}
}

// changedSinceBuild returns those of files that the last build read and
// that changed since.
func (r *reloader) changedSinceBuild(files []string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var changed []string
	for _, f := range files {
		if st, ok := r.read[f]; ok && stampOf(f) != st {
			changed = append(changed, f)
		}
	}
	return changed
}

// newReloader builds the source once, for the identities in force: the
// gateway started with what the source builds now.
func newReloader(srv authSetter, src authSource, log *slog.Logger) *reloader {
	r := &reloader{srv: srv, src: src, log: log, files: src.Files}
	snap, err := src.Build()
	if snap.Files != nil {
		r.files = snap.Files
	}
	if err == nil {
		// Only a baseline: nothing is put in force, so no Commit.
		r.cur = snap.Identities
		closeAuth(snap.Auth, log)
	}
	return r
}

// watched is the files to watch now.
func (r *reloader) watched() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.files)
}

// reload rebuilds the source and puts it in force; on error the
// Authenticator in force stays. why says what asked for the reload.
func (r *reloader) reload(ctx context.Context, why ...any) error {
	_, err := r.reloadChanges(ctx, why...)
	return err
}

// reloadChanges is reload, returning what the reload changed as the
// attributes of its log line (after why).
func (r *reloader) reloadChanges(ctx context.Context, why ...any) ([]any, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.read = make(map[string]fileStamp, len(r.files))
	for _, f := range r.files {
		r.read[f] = stampOf(f)
	}
	snap, err := r.src.Build()
	if snap.Files != nil {
		r.files = snap.Files
	}
	if err != nil {
		closeAuth(snap.Auth, r.log)
		kept := r.src.Kept
		if kept == "" {
			kept = "those in force"
		}
		r.log.Error(r.src.What+" not reloaded: keeping "+kept, append([]any{"err", err}, why...)...)
		return nil, err
	}
	res, err := r.srv.SetAuthenticator(ctx, snap.Auth)
	if err != nil {
		closeAuth(snap.Auth, r.log)
		r.log.Error(r.src.What+" not reloaded", append([]any{"err", err}, why...)...)
		return nil, err
	}
	if r.src.Held != nil {
		r.src.Held.swap(snap.Auth)
	}
	args := append([]any{}, why...)
	if snap.Identities != nil && r.cur != nil {
		added, removed, changed := diffIdentities(r.cur, snap.Identities)
		args = append(args, "added", added, "removed", removed, "changed", changed)
	}
	args = append(args, snap.Changes...)
	args = append(args, "sessions_kept", res.Kept, "sessions_closed", res.Closed)
	if res.Failed > 0 {
		args = append(args, "sessions_unchecked", res.Failed)
	}
	r.log.Info(r.src.What+" reloaded", args...)
	if len(snap.Restart) > 0 {
		r.log.Warn("config change needs a restart", append([]any{"keys", snap.Restart}, why...)...)
	}
	r.cur = snap.Identities
	if snap.Commit != nil {
		snap.Commit()
	}
	changes := args[len(why):]
	if len(snap.Restart) > 0 {
		changes = append(changes, "restart_needed", snap.Restart)
	}
	return changes, nil
}

// diffIdentities lists, sorted, the identities only in after, only in
// before, and in both but allowed something else.
func diffIdentities(before, after map[string]string) (added, removed, changed []string) {
	added, removed, changed = []string{}, []string{}, []string{}
	for _, id := range slices.Sorted(maps.Keys(after)) {
		old, ok := before[id]
		switch {
		case !ok:
			added = append(added, id)
		case old != after[id]:
			changed = append(changed, id)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(before)) {
		if _, ok := after[id]; !ok {
			removed = append(removed, id)
		}
	}
	return added, removed, changed
}

// serveReloads reloads src into srv on SIGHUP and, with watchFiles, when
// one of its files changes, until ctx ends or stop is called; stop waits
// for it to end. When a reload changes the files to watch (a tokens file
// renamed in the configuration file), the watch follows. Without a source
// (src.Build nil), SIGHUP only logs that there is nothing to reload: it no
// longer stops the gateway.
//
// requests, if not nil, are reloads asked for by the management API: each
// is done as a SIGHUP's and answered.
//
// onHUP, if not nil, is called first on each SIGHUP, with or without a
// source: it reopens the log files, for log rotation.
func serveReloads(ctx context.Context, srv authSetter, src authSource, watchFiles bool, requests <-chan reloadRequest, onHUP func(), log *slog.Logger) (stop func(), err error) {
	ctx, cancel := context.WithCancel(ctx)
	var r *reloader
	var w *watch.Watcher
	var changes <-chan []string
	var watching []string
	if src.Build != nil {
		r = newReloader(srv, src, log)
		if watchFiles {
			watching = r.watched()
			w, err = watch.New(ctx, watching, watch.Options{Logger: log})
			if err != nil {
				cancel()
				return nil, fmt.Errorf("--watch: %w", err)
			}
			changes = w.Changes()
			log.Info("watching for changes", "files", watching)
		}
	} else if watchFiles {
		log.Warn("--watch: nothing to watch without a --tokens or --config file")
	}
	// rewatch follows the files of the last build. A change made after
	// that build read its files and before the new watch began is not
	// lost: it reloads at once (and the files to watch are looked at
	// again, a few times at most).
	rewatch := func() {
		for range 3 {
			files := r.watched()
			if w == nil || slices.Equal(files, watching) {
				return
			}
			nw, err := watch.New(ctx, files, watch.Options{Logger: log})
			if err != nil {
				log.Warn("--watch: still watching the files watched so far", "files", files, "err", err)
				return
			}
			w.Close()
			w, watching, changes = nw, files, nw.Changes()
			log.Info("watching for changes", "files", files)
			changed := r.changedSinceBuild(files)
			if len(changed) == 0 {
				return
			}
			r.reload(ctx, "trigger", "file changed", "files", changed)
		}
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				if onHUP != nil {
					onHUP()
				}
				if r == nil {
					log.Info("SIGHUP: nothing to reload (no --tokens or --config file)")
					continue
				}
				r.reload(ctx, "trigger", "SIGHUP")
				rewatch()
			case files := <-changes:
				r.reload(ctx, "trigger", "file changed", "files", files)
				rewatch()
			case req := <-requests:
				if r == nil {
					req.done <- reloadResult{err: errNoReloadSource}
					continue
				}
				changes, err := r.reloadChanges(ctx, "trigger", "admin API")
				rewatch()
				req.done <- reloadResult{changes: changes, err: err}
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}, nil
}

// startReloads serves the reloads of the gateway's configuration file
// (with --config: args are the command line it started with, f the file
// as it read it, regs the registerers built from it) or else of its
// tokens file.
//
// held is the Authenticator in force, which a reload replaces (and
// closes); changed is what modules call when their answers change;
// requests are reloads asked for by the management API, and onHUP is
// called on each SIGHUP (see serveReloads).
func (c *serverCmd) startReloads(ctx context.Context, srv *gateway.Server, args []string, f *config.File, regs []gateway.Registerer, held *heldAuth, changed func(), requests <-chan reloadRequest, onHUP func(), log *slog.Logger) (stop func(), err error) {
	var src authSource
	switch {
	case f != nil:
		src = c.configSource(args, f, srv, regs, held, changed, log)
	case c.Tokens != "":
		src = tokensSource(c.Tokens)
	}
	src.Held = held
	return serveReloads(ctx, srv, src, c.Watch, requests, onHUP, log)
}

// tokensSource is a tokens file (auth/tokens).
func tokensSource(file string) authSource {
	return authSource{
		What:  "tokens",
		Files: []string{file},
		Build: func() (authSnapshot, error) {
			t, err := tokens.Load(file)
			if err != nil {
				return authSnapshot{}, err
			}
			return authSnapshot{Auth: t, Identities: tokenIdentities(file, t)}, nil
		},
	}
}

// tokenIdentities digests, per identity, the entries of a tokens file that
// t was loaded from: a digest of each entry with its token hashed, so an
// identity whose tokens, names or quota change shows as changed. Nil if
// the file cannot be read as a list of entries (it changed meanwhile).
func tokenIdentities(file string, t *tokens.Tokens) map[string]string {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil
	}
	var entries []map[string]any
	if err := yaml.Unmarshal(data, &entries); err != nil {
		return nil
	}
	perID := make(map[string][]string)
	for _, e := range entries {
		token, _ := e["token"].(string)
		id, err := t.Authenticate(context.Background(), gateway.Credentials{Token: token})
		if err != nil {
			return nil
		}
		sum := sha256.Sum256([]byte(token))
		e["token"] = hex.EncodeToString(sum[:])
		b, err := json.Marshal(e) // map keys sorted
		if err != nil {
			return nil
		}
		perID[id.Name] = append(perID[id.Name], string(b))
	}
	out := make(map[string]string, len(perID))
	for id, es := range perID {
		slices.Sort(es)
		h := sha256.New()
		for _, e := range es {
			h.Write([]byte(e))
			h.Write([]byte{0})
		}
		out[id] = hex.EncodeToString(h.Sum(nil))
	}
	return out
}
