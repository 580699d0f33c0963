package traefik

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"

	"github.com/diglett/diglett/internal/protocol"
	"go.yaml.in/yaml/v3"
)

// filePrefix starts the names of this module's files, routers and
// services: diglett-NAME.yaml holds routers and services diglett-NAME.
const filePrefix = "diglett-"

// fileName is the file of tunnel name in the directory.
func fileName(name string) string { return filePrefix + name + ".yaml" }

// Our files: diglett-NAME.yaml, and the temporary files of an unfinished
// write, .diglett-NAME.yaml.RANDOM.tmp (a name the proxy's file provider
// ignores: it reads only .yaml, .yml and .toml files).
var (
	ourFile = regexp.MustCompile(`^diglett-(.+)\.yaml$`)
	ourTemp = regexp.MustCompile(`^\.diglett-(.+)\.yaml\.[0-9]+\.tmp$`)
)

// isOurs reports whether base is the name of a file this module writes.
func isOurs(base string) bool {
	for _, re := range []*regexp.Regexp{ourFile, ourTemp} {
		if m := re.FindStringSubmatch(base); m != nil && protocol.ValidateName(m[1]) == nil {
			return true
		}
	}
	return false
}

// fileHeader heads every file, for the operator who opens one.
const fileHeader = "# Written by diglett-server for tunnel %s; do not edit: it is\n" +
	"# rewritten when the tunnel's route changes and deleted when it goes away.\n"

// render is the YAML file of tunnel name.
func render(name string, d dynamic) ([]byte, error) {
	var buf bytes.Buffer
	fmt.Fprintf(&buf, fileHeader, name)
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(d); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeFile replaces dir/base with data atomically: readers see the old
// file or the new one, never part of one. The data is written to a
// temporary file in dir, synced, and renamed over base; dir is synced so
// that the rename survives a crash.
func writeFile(dir, base string, data []byte) (err error) {
	tmp, err := os.CreateTemp(dir, "."+base+".*.tmp")
	if err != nil {
		return dirError(dir, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, base)); err != nil {
		return err
	}
	return syncDir(dir)
}

// removeFile removes dir/base; one that is already gone is no error.
func removeFile(dir, base string) error {
	err := os.Remove(filepath.Join(dir, base))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return syncDir(dir)
}

// syncDir makes the entries of dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return dirError(dir, err)
	}
	defer d.Close()
	// Some file systems cannot sync a directory; the entries are then as
	// durable as they get.
	if err := d.Sync(); err != nil && !errors.Is(err, errors.ErrUnsupported) && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// dirError says plainly that dir is missing, when it is.
func dirError(dir string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("directory %s does not exist: create it and point the proxy's file provider at it: %w", dir, err)
	}
	return err
}

// readDir lists dir.
func readDir(dir string) ([]os.DirEntry, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, dirError(dir, err)
	}
	return ents, nil
}
