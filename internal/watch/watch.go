// Package watch tells when files change on disk. It watches the
// directories that hold the files rather than the files themselves, so
// that a file replaced through a rename (as editors save), re-created
// after a deletion, or swapped through the "..data" symlink of a
// Kubernetes ConfigMap volume is seen as well as one written in place;
// and it reports a file only when its content changed, so events that
// change nothing (a touch, a rewrite of the same bytes) report nothing.
package watch

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/fsnotify/fsnotify"
)

// DefaultDebounce is the default of Options.Debounce.
const DefaultDebounce = 100 * time.Millisecond

// maxDelayFactor bounds how long a steady stream of events can put off
// reading the files: at most this many debounce periods after its first
// event.
const maxDelayFactor = 10

// Options tune a Watcher. Zero values take the documented defaults.
type Options struct {
	// Debounce is how long the watched directories must stay quiet after
	// an event before the files are read and compared, so that a file
	// written in several steps is read once, whole. A steady stream of
	// events delays the read by ten times Debounce at most.
	// Default DefaultDebounce (100ms).
	Debounce time.Duration
	// Logger receives the watcher's own troubles (a directory that can no
	// longer be watched, an event queue overflow) at Warn and Debug.
	// Default slog.Default().
	Logger *slog.Logger
}

// Watcher watches a set of files. Its one goroutine ends when the context
// given to New ends or when Close is called.
type Watcher struct {
	files   []string // as given to New
	abs     []string // absolute and clean, same order
	changes chan []string
	log     *slog.Logger
	fw      *fsnotify.Watcher
	delay   time.Duration

	cancel context.CancelFunc
	done   chan struct{}

	// onCheck, if set (by tests), is called by the goroutine after each
	// comparison with the files it found changed, possibly none.
	onCheck func(changed []string)

	// Owned by the goroutine.
	state   map[string]fileState // by absolute path
	watched map[string]bool      // directories being watched
}

// fileState is what a comparison knows of a file.
type fileState struct {
	exists bool
	failed bool              // it could not be read
	sum    [sha256.Size]byte // of the content, or of the read error's text
}

// New starts watching files: each must sit in a directory that exists
// (the file itself need not exist yet). The content of each file is
// read now, and from then on Changes reports the files whose content
// differs from what was last read: written, replaced, created or
// deleted. The watcher stops when ctx ends or Close is called.
func New(ctx context.Context, files []string, o Options) (*Watcher, error) {
	return newWatcher(ctx, files, o, nil)
}

// newWatcher is New with the test hook onCheck.
func newWatcher(ctx context.Context, files []string, o Options, onCheck func(changed []string)) (*Watcher, error) {
	if len(files) == 0 {
		return nil, errors.New("watch: no files")
	}
	if o.Debounce <= 0 {
		o.Debounce = DefaultDebounce
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	w := &Watcher{
		files:   slices.Clone(files),
		changes: make(chan []string),
		log:     o.Logger,
		delay:   o.Debounce,
		onCheck: onCheck,
		done:    make(chan struct{}),
		state:   make(map[string]fileState),
		watched: make(map[string]bool),
	}
	for _, f := range files {
		a, err := filepath.Abs(f)
		if err != nil {
			return nil, fmt.Errorf("watch %s: %w", f, err)
		}
		w.abs = append(w.abs, a)
	}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	w.fw = fw
	// The directories named by the paths must be watchable at start; the
	// directories their symlinks lead to are followed as they change.
	for _, a := range w.abs {
		dir := filepath.Dir(a)
		if w.watched[dir] {
			continue
		}
		if err := fw.Add(dir); err != nil {
			fw.Close()
			return nil, fmt.Errorf("watch %s: %w", dir, err)
		}
		w.watched[dir] = true
	}
	for _, a := range w.abs {
		w.state[a] = readState(a)
	}
	w.followLinks()
	ctx, w.cancel = context.WithCancel(ctx)
	go w.run(ctx)
	return w, nil
}

// Changes delivers, after each burst of events, the files (as given to
// New) whose content changed. Changes not yet received are merged, so
// the watcher never queues more than one list of the files.
func (w *Watcher) Changes() <-chan []string { return w.changes }

// Close stops the watcher and waits for its goroutine to end. It may be
// called more than once, and after ctx ended.
func (w *Watcher) Close() error {
	w.cancel()
	<-w.done
	return nil
}

func (w *Watcher) run(ctx context.Context) {
	defer close(w.done)
	defer w.fw.Close()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var (
		fire    <-chan time.Time // the timer's channel while it is armed
		first   time.Time        // of the burst being debounced
		pending []string         // changed files not yet received
	)
	arm := func() {
		now := time.Now()
		if first.IsZero() {
			first = now
		}
		d := min(w.delay, max(first.Add(maxDelayFactor*w.delay).Sub(now), 0))
		timer.Reset(d)
		fire = timer.C
	}
	for {
		var out chan<- []string
		if len(pending) > 0 {
			out = w.changes
		}
		select {
		case <-ctx.Done():
			return
		case _, ok := <-w.fw.Events:
			if !ok {
				return
			}
			arm()
		case err, ok := <-w.fw.Errors:
			if !ok {
				return
			}
			// An overflow loses events: compare everything again.
			w.log.Warn("watching files", "err", err)
			arm()
		case <-fire:
			fire, first = nil, time.Time{}
			changed := w.check()
			for _, f := range changed {
				if !slices.Contains(pending, f) {
					pending = append(pending, f)
				}
			}
			w.followLinks()
			if w.onCheck != nil {
				w.onCheck(changed)
			}
		case out <- slices.Clone(pending):
			pending = nil
		}
	}
}

// check reads every file and returns those whose state changed.
func (w *Watcher) check() []string {
	var changed []string
	for i, a := range w.abs {
		st := readState(a)
		if st != w.state[a] {
			w.state[a] = st
			changed = append(changed, w.files[i])
		}
	}
	return changed
}

// followLinks watches the directories the files' symlinks lead to, besides
// the directories that hold them, and stops watching those no longer led
// to: a file linked elsewhere changes there.
func (w *Watcher) followLinks() {
	want := make(map[string]bool)
	for _, a := range w.abs {
		want[filepath.Dir(a)] = true
		if real, err := filepath.EvalSymlinks(a); err == nil {
			want[filepath.Dir(real)] = true
		}
	}
	for dir := range want {
		if w.watched[dir] {
			continue
		}
		if err := w.fw.Add(dir); err != nil {
			w.log.Debug("cannot watch the directory a file links to", "dir", dir, "err", err)
			continue
		}
		w.watched[dir] = true
	}
	for dir := range w.watched {
		if !want[dir] {
			// Already gone when the directory was deleted.
			_ = w.fw.Remove(dir)
			delete(w.watched, dir)
		}
	}
}

// readState reads a file, through its symlinks, and sums its content.
func readState(path string) fileState {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fileState{}
	}
	if err != nil {
		return fileState{exists: true, failed: true, sum: sha256.Sum256([]byte(err.Error()))}
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fileState{exists: true, failed: true, sum: sha256.Sum256([]byte(err.Error()))}
	}
	st := fileState{exists: true}
	h.Sum(st.sum[:0])
	return st
}

var _ io.Closer = (*Watcher)(nil)
