// Package statefile reads and writes the small files a program keeps in its
// data dir (a key, a table of leases): a file that is there but cannot be
// read is a clear error naming it and saying what to do, never mistaken for
// a missing one; writes are atomic (a reader sees the old file or the new,
// never half of one); creation can be exclusive, so that two processes on
// one data dir do not both create a file.
package statefile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Error is a state file that exists but cannot be used. It unwraps to the
// system's error, if any, but never to fs.ErrNotExist: a caller that creates
// a missing file must not try to create this one.
type Error struct {
	Path    string
	Problem string // what is wrong with it
	Fix     string // what the operator can do
	Err     error
}

func (e *Error) Error() string {
	msg := e.Path + ": " + e.Problem
	if e.Fix != "" {
		msg += ": " + e.Fix
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// Read returns the contents of the state file at path. Its error wraps
// fs.ErrNotExist only when nothing at all is at path (the caller may then
// create it); a file that is there but cannot be read (a symbolic link to
// nothing, a symbolic link loop, a directory, no permission) is an *Error.
func Read(path string) ([]byte, error) {
	data, _, err := read(path)
	return data, err
}

// ReadPrivate is Read for a file that holds a secret: warning, when not
// empty, says that group or others may read the file and how to fix it.
func ReadPrivate(path string) (data []byte, warning string, err error) {
	data, mode, err := read(path)
	if err != nil {
		return nil, "", err
	}
	return data, PrivateWarning(path, mode), nil
}

// PrivateWarning says how to fix a secret file at path with mode that group
// or others may read; "" if they may not.
func PrivateWarning(path string, mode fs.FileMode) string {
	if mode.Perm()&0o077 == 0 {
		return ""
	}
	return fmt.Sprintf("%s is readable by other users (mode %04o): restrict it with: chmod 600 %s", path, mode.Perm(), path)
}

func read(path string) ([]byte, fs.FileMode, error) {
	// O_NONBLOCK: opening a FIFO put in place of the file must not wait
	// for a writer; it has no effect on regular files.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, 0, describe(path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, 0, describe(path, err)
	}
	if st.IsDir() {
		return nil, 0, &Error{Path: path, Problem: "is a directory, not a file", Fix: "move it away", Err: syscall.EISDIR}
	}
	if !st.Mode().IsRegular() {
		return nil, 0, &Error{Path: path, Problem: fmt.Sprintf("is not a regular file (%v)", st.Mode().Type()), Fix: "move it away"}
	}
	// State files are small: a bound keeps a mistaken path (a device, a
	// huge file) from eating the memory.
	data, err := io.ReadAll(io.LimitReader(f, maxSize+1))
	if err != nil {
		return nil, 0, describe(path, err)
	}
	if len(data) > maxSize {
		return nil, 0, &Error{Path: path, Problem: fmt.Sprintf("is larger than a state file may be (%d bytes)", maxSize), Fix: "check the path"}
	}
	return data, st.Mode(), nil
}

// maxSize bounds what Read reads.
const maxSize = 64 << 20

// describe turns the error of opening or reading path into an *Error,
// unless nothing is at path.
func describe(path string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		// A symbolic link to nothing reads as missing; it is not: a
		// create would fail, or follow the link somewhere else.
		if fi, lerr := os.Lstat(path); lerr == nil && fi.Mode()&fs.ModeSymlink != 0 {
			target, _ := os.Readlink(path)
			return &Error{Path: path, Problem: fmt.Sprintf("is a symbolic link to %s, which does not exist", target),
				Fix: "restore the file it points to, or remove the link"}
		}
		return err
	}
	switch {
	case errors.Is(err, syscall.ELOOP):
		return &Error{Path: path, Problem: "is a symbolic link loop", Fix: "fix or remove the link", Err: err}
	case errors.Is(err, syscall.EISDIR):
		return &Error{Path: path, Problem: "is a directory, not a file", Fix: "move it away", Err: err}
	case errors.Is(err, fs.ErrPermission):
		return &Error{Path: path, Problem: fmt.Sprintf("cannot be read: permission denied (this process runs as uid %d)", os.Geteuid()),
			Fix: "give that user read access (chown or chmod), or run as the file's owner", Err: err}
	case errors.Is(err, syscall.ENOTDIR):
		return &Error{Path: path, Problem: "is under something that is not a directory", Fix: "check the data dir", Err: err}
	}
	return &Error{Path: path, Problem: "cannot be read (" + err.Error() + ")", Err: err}
}

// WriteAtomic replaces the file at path with data: it writes a temporary
// file with mode perm in the same directory, syncs it, renames it over path
// and syncs the directory, so that a crash leaves the old file or the new
// one, whole.
func WriteAtomic(path string, data []byte, perm fs.FileMode) error {
	tmp, err := writeTemp(path, data, perm)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

// CreateExclusive creates the file at path with data and mode perm, whole
// or not at all, unless something is at path already (a file, a link,
// even a dangling one): then it returns an error wrapping fs.ErrExist and
// leaves it alone. Of two processes creating the same file at once, one
// wins and the other gets fs.ErrExist; neither ever sees a partial file.
func CreateExclusive(path string, data []byte, perm fs.FileMode) error {
	tmp, err := writeTemp(path, data, perm)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	// A hard link is created atomically, full, and only if path is free.
	err = os.Link(tmp, path)
	if err != nil && !errors.Is(err, fs.ErrExist) {
		// A file system without hard links: fall back to O_EXCL, where
		// a concurrent reader may see the file before it is written.
		err = createExcl(path, data, perm)
	}
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("create %s: %w", path, fs.ErrExist)
		}
		return fmt.Errorf("create %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

func createExcl(path string, data []byte, perm fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// writeTemp writes data to a new synced file beside path and returns its
// name.
func writeTemp(path string, data []byte, perm fs.FileMode) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	name := f.Name()
	fail := func(err error) (string, error) {
		f.Close()
		os.Remove(name)
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(name)
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return name, nil
}

// syncDir makes a rename or link in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
