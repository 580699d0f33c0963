package catalog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/diglett/diglett/internal/watch"
)

// maxFileSize bounds the ports file read.
const maxFileSize = 4 << 20

// FileOptions configure a File source. Zero values are the documented
// defaults.
type FileOptions struct {
	// Path is the YAML file (required); its directory must exist.
	Path string
	// Logger receives the changes read and the files that failed to
	// parse. Default slog.Default().
	Logger *slog.Logger
}

// File is a Source that reads the ports from a YAML file and watches it
// for changes.
type File struct {
	path string
	log  *slog.Logger
}

var _ Source = (*File)(nil)

// portsFile is the schema of the file.
type portsFile struct {
	Ports []fileEntry `yaml:"ports"`
}

type fileEntry struct {
	Service   string `yaml:"service"`
	portLists `yaml:",inline"`
}

// NewFile reads the file once, so that a missing or broken file is an
// error at start, and returns the source.
func NewFile(o FileOptions) (*File, error) {
	if o.Path == "" {
		return nil, errors.New("ports file: no path")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if _, err := readPortsFile(o.Path); err != nil {
		return nil, err
	}
	return &File{path: o.Path, log: o.Logger.With("source", "file", "path", o.Path)}, nil
}

// Watch calls update with the file's ports, then watches the file and
// calls update each time a change to it changes the set, until ctx ends.
// A file that cannot be read or parsed is logged at Warn and the last
// good set stays in force. The file is watched through its directory,
// so a file replaced by a rename, or deleted and written again, is
// followed; that the directory cannot be watched is the one error
// returned.
func (f *File) Watch(ctx context.Context, update func([]Port)) error {
	w, err := watch.New(ctx, []string{f.path}, watch.Options{Logger: f.log})
	if err != nil {
		return fmt.Errorf("ports file: %w", err)
	}
	defer w.Close()
	em := emitter{update: update}
	f.read(&em)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.Changes():
			f.read(&em)
		}
	}
}

// read reads the file and gives its set to em; a broken file changes
// nothing.
func (f *File) read(em *emitter) {
	ports, err := readPortsFile(f.path)
	if err != nil {
		if em.sent {
			f.log.Warn("catalog: ports file not read; the last good set stays in force", "err", err, "ports", len(em.last))
		} else {
			f.log.Warn("catalog: ports file not read; no ports asked for until it is fixed", "err", err)
		}
		return
	}
	if em.emit(ports) {
		f.log.Debug("catalog: ports asked for", "count", len(em.last), "ports", summary(em.last))
		return
	}
	f.log.Debug("catalog: ports file read; the set is unchanged", "ports", len(em.last))
}

// readPortsFile reads and checks the ports file at path.
func readPortsFile(path string) ([]Port, error) {
	data, err := readBounded(path)
	if err != nil {
		return nil, fmt.Errorf("ports file: %w", err)
	}
	var doc portsFile
	if err := decodeStrict(data, &doc); err != nil {
		return nil, fmt.Errorf("ports file %s: %w", path, err)
	}
	var out []Port
	for i, e := range doc.Ports {
		if e.Service == "" {
			return nil, fmt.Errorf("ports file %s: ports[%d]: no service", path, i)
		}
		ps, err := e.ports(e.Service)
		if err != nil {
			return nil, fmt.Errorf("ports file %s: ports[%d] (%s): %w", path, i, e.Service, err)
		}
		out = append(out, ps...)
	}
	return out, nil
}

// readBounded reads a regular file of at most maxFileSize bytes.
func readBounded(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	if st, err := fh.Stat(); err != nil {
		return nil, err
	} else if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	data, err := io.ReadAll(io.LimitReader(fh, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxFileSize)
	}
	return data, nil
}
