package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/diglett/diglett/internal/lazylog"
	"github.com/diglett/diglett/internal/protocol"
	"github.com/diglett/diglett/internal/statefile"
)

// The registry's tunnels are kept in Config.LeaseFile so that a restarted
// gateway still reserves each name and port for its identity: without it,
// another identity could take a port in the seconds before its owner
// reconnects, and serve the owner's visitors.

// leaseFileVersion is the version of the lease file's format.
const leaseFileVersion = 1

// leaseFile is the lease file's content.
type leaseFile struct {
	Version int           `json:"version"`
	Leases  []leaseRecord `json:"leases"`
}

// leaseRecord is one tunnel. A tunnel with an agent online has Live set
// and no expiry: its lease starts when the gateway restarts.
type leaseRecord struct {
	Name     string    `json:"name"`
	Identity string    `json:"identity"`
	Port     int       `json:"port"`
	UDP      bool      `json:"udp,omitempty"` // a UDP port; files from before UDP tunnels have none
	Live     bool      `json:"live,omitempty"`
	Expires  time.Time `json:"expires,omitzero"`
}

// readLeases reads the lease file; an absent file is no leases.
func readLeases(path string) ([]leaseRecord, error) {
	data, err := statefile.Read(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lease file: %w", err)
	}
	var f leaseFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("lease file %s: %w (fix it, or delete it to forget every lease)", path, err)
	}
	if f.Version != leaseFileVersion {
		return nil, fmt.Errorf("lease file %s: version %d, want %d (delete it to forget every lease)", path, f.Version, leaseFileVersion)
	}
	return f.Leases, nil
}

// leaseWriter writes the registry's snapshots to the lease file, one
// goroutine coalescing the changes that come while it writes.
type leaseWriter struct {
	path     string
	log      *slog.Logger
	snapshot func() []leaseRecord
	kick     chan struct{}
	stop     chan struct{}
	done     chan struct{}
	once     sync.Once
	mu       sync.Mutex // serializes writes
	failing  bool       // the last write failed; under mu
}

func newLeaseWriter(path string, log *slog.Logger, snapshot func() []leaseRecord) *leaseWriter {
	w := &leaseWriter{path: path, log: log, snapshot: snapshot,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	return w
}

// changed asks for the file to be written again.
func (w *leaseWriter) changed() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

func (w *leaseWriter) run() {
	defer close(w.done)
	for {
		select {
		case <-w.kick:
			w.write(w.snapshot())
		case <-w.stop:
			return
		}
	}
}

// close stops the writer and writes recs, the registry's final state.
func (w *leaseWriter) close(recs []leaseRecord) {
	w.once.Do(func() {
		close(w.stop)
		<-w.done
		w.write(recs)
	})
}

func (w *leaseWriter) write(recs []leaseRecord) {
	sort.Slice(recs, func(i, j int) bool { return recs[i].Name < recs[j].Name })
	data, err := json.MarshalIndent(leaseFile{Version: leaseFileVersion, Leases: recs}, "", "  ")
	if err == nil {
		err = statefile.WriteAtomic(w.path, append(data, '\n'), 0o600)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case err != nil && !w.failing:
		w.log.Error("could not save the leases: after a restart, names and ports are not reserved for their owners", "file", w.path, "err", err)
	case err == nil && w.failing:
		w.log.Info("leases saved again", "file", w.path)
	}
	w.failing = err != nil
}

// snapshotLocked is the registry's tunnels as lease records. Called under
// r.mu.
func (r *registry) snapshotLocked() []leaseRecord {
	recs := make([]leaseRecord, 0, len(r.byName))
	for _, t := range r.byName {
		rec := leaseRecord{Name: t.name, Identity: t.identity, Port: t.port, UDP: t.udp}
		if len(t.live()) > 0 {
			rec.Live = true
		} else {
			rec.Expires = t.leaseEnd
		}
		recs = append(recs, rec)
	}
	return recs
}

// persistLocked has the lease file written again. Called under r.mu.
func (r *registry) persistLocked() {
	if r.leases != nil && !r.closed {
		r.leases.changed()
	}
}

// restore reserves the names and ports of recs for their identities until
// their leases end; a tunnel that was live when the gateway stopped gets a
// whole lease from now.
func (r *registry) restore(recs []leaseRecord, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	lease := r.srv.cfg.Lease
	kept := 0
	for _, rec := range recs {
		end := rec.Expires
		if rec.Live {
			end = now.Add(lease)
		}
		log := lazylog.With(r.srv.log, "tunnel", rec.Name)
		switch {
		case !end.After(now):
			continue
		case protocol.ValidateName(rec.Name) != nil || rec.Identity == "":
			log.Warn("lease file: skipping a malformed lease", "identity", rec.Identity)
			continue
		case r.byName[rec.Name] != nil:
			log.Warn("lease file: skipping a second lease of the same name")
			continue
		}
		t := &tunnel{reg: r, name: rec.Name, identity: rec.Identity, udp: rec.UDP, log: log, quota: r.srv.cfg.Quota}
		t.visitors.Store(&visitorPolicy{})
		if rec.Port >= r.srv.cfg.PortMin && rec.Port <= r.srv.cfg.PortMax && r.byPort[rec.Port] == nil {
			if ln, err := r.bindPort(rec.UDP, rec.Port); err == nil {
				t.ln, t.port = ln, rec.Port
			} else {
				log.Warn("leased port is not free after the restart: the name stays reserved, its owner gets a new port", "port", rec.Port, "err", err)
			}
		} else if rec.Port != 0 {
			log.Warn("leased port is outside the port range or taken: the name stays reserved, its owner gets a new port", "port", rec.Port)
		}
		r.addLocked(t)
		r.startLeaseLocked(t, end)
		kept++
		log.Info("name and port reserved after restart", "identity", t.identity, "port", t.port, "until", end.Format(time.RFC3339))
	}
	if kept > 0 {
		r.srv.log.Info("leases restored", "file", r.srv.cfg.LeaseFile, "count", kept)
	}
}
