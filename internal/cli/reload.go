package cli

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

	"go.yaml.in/yaml/v3"

	"github.com/diglett/diglett/auth/tokens"
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
// The source is an authSource: the files to watch and a Build function.
// Today it is the --tokens file (tokensSource). To reload from the
// configuration file instead, give startReloads a source whose Files are
// the configuration file and the files it names (its tokens files), and
// whose Build re-reads the file and builds its auth list; Build may set
// Identities to have the log say what changed by identity, or leave it
// nil. Nothing else changes.

// authSource is where the gateway's Authenticator comes from.
type authSource struct {
	// What names the source in the log: "tokens" logs "tokens reloaded".
	What string
	// Files are what Build reads; with --watch a change to one of them
	// reloads. Their directories must exist.
	Files []string
	// Build reads the files and builds the Authenticator. Its error says
	// which file and line are wrong.
	Build func() (authSnapshot, error)
}

// authSnapshot is an Authenticator built by a source, with what it allows
// per identity, so that the log can say what a reload changed.
type authSnapshot struct {
	Auth gateway.Authenticator
	// Identities maps each identity to a digest of what it is allowed
	// (its tokens, names and quota); never the tokens themselves. Nil
	// when the source cannot tell.
	Identities map[string]string
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

	mu  sync.Mutex
	cur map[string]string // identities in force, from the last good build
}

// newReloader builds the source once, for the identities in force: the
// gateway started with what the source builds now.
func newReloader(srv authSetter, src authSource, log *slog.Logger) *reloader {
	r := &reloader{srv: srv, src: src, log: log}
	if snap, err := src.Build(); err == nil {
		r.cur = snap.Identities
	}
	return r
}

// reload rebuilds the source and puts it in force; on error the
// Authenticator in force stays. why says what asked for the reload.
func (r *reloader) reload(ctx context.Context, why ...any) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	snap, err := r.src.Build()
	if err != nil {
		r.log.Error(r.src.What+" not reloaded: keeping those in force", append([]any{"err", err}, why...)...)
		return err
	}
	res, err := r.srv.SetAuthenticator(ctx, snap.Auth)
	if err != nil {
		r.log.Error(r.src.What+" not reloaded", append([]any{"err", err}, why...)...)
		return err
	}
	args := append([]any{}, why...)
	if snap.Identities != nil && r.cur != nil {
		added, removed, changed := diffIdentities(r.cur, snap.Identities)
		args = append(args, "added", added, "removed", removed, "changed", changed)
	}
	args = append(args, "sessions_kept", res.Kept, "sessions_closed", res.Closed)
	if res.Failed > 0 {
		args = append(args, "sessions_unchecked", res.Failed)
	}
	r.log.Info(r.src.What+" reloaded", args...)
	r.cur = snap.Identities
	return nil
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
// for it to end. Without a source (src.Build nil), SIGHUP only logs that
// there is nothing to reload: it no longer stops the gateway.
func serveReloads(ctx context.Context, srv authSetter, src authSource, watchFiles bool, log *slog.Logger) (stop func(), err error) {
	ctx, cancel := context.WithCancel(ctx)
	var r *reloader
	var changes <-chan []string
	if src.Build != nil {
		r = newReloader(srv, src, log)
		if watchFiles {
			w, err := watch.New(ctx, src.Files, watch.Options{Logger: log})
			if err != nil {
				cancel()
				return nil, fmt.Errorf("--watch: %w", err)
			}
			changes = w.Changes()
			log.Info("watching for changes", "files", src.Files)
		}
	} else if watchFiles {
		log.Warn("--watch: nothing to watch without a --tokens file")
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
				if r == nil {
					log.Info("SIGHUP: nothing to reload (no --tokens file)")
					continue
				}
				r.reload(ctx, "trigger", "SIGHUP")
			case files := <-changes:
				r.reload(ctx, "trigger", "file changed", "files", files)
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}, nil
}

// startReloads serves the reloads of the gateway's tokens file.
func (c *serverCmd) startReloads(ctx context.Context, srv authSetter, log *slog.Logger) (stop func(), err error) {
	var src authSource
	if c.Tokens != "" {
		src = tokensSource(c.Tokens)
	}
	return serveReloads(ctx, srv, src, c.Watch, log)
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
