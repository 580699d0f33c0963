package identity

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// KnownGateways is the agent's file of pinned gateway keys, one
// "host:port SHA256:..." per line, like SSH's known_hosts. Blank lines and
// lines starting with # are ignored; any other line that is not an entry is
// an error, never skipped: a gateway whose line is skipped would be pinned
// again, perhaps to another key.
type KnownGateways struct {
	Path string
}

// DefaultKnownGatewaysPath is known_gateways under the user's config dir.
func DefaultKnownGatewaysPath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("known_gateways: %w", err)
	}
	return filepath.Join(dir, "diglett", "known_gateways"), nil
}

// Entry is a pinned key and where it was found.
type Entry struct {
	Fingerprint string
	Line        int
}

// MalformedError is a line of the known_gateways file that is not an
// entry.
type MalformedError struct {
	Path string
	Line int
	Text string // the line, perhaps shortened
	Why  string
}

func (e *MalformedError) Error() string {
	return fmt.Sprintf("%s line %d: %s: %q; want HOST:PORT SHA256:<base64>", e.Path, e.Line, e.Why, e.Text)
}

// Lookup returns the key pinned for gateway (host:port). A malformed line
// anywhere in the file is a *MalformedError.
func (k KnownGateways) Lookup(gateway string) (Entry, bool, error) {
	f, err := os.Open(k.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return Entry{}, false, nil
	}
	if err != nil {
		return Entry{}, false, fmt.Errorf("known_gateways: %w", err)
	}
	defer f.Close()
	// Shared with other readers, not with a process appending.
	if err := lockFile(f, false); err != nil {
		return Entry{}, false, fmt.Errorf("known_gateways %s: lock: %w", k.Path, err)
	}
	e, ok, _, err := k.scan(f, gateway)
	return e, ok, err
}

// scan reads the file from r and returns the entry for gateway, and
// whether the file ends with a newline (or is empty).
func (k KnownGateways) scan(r io.Reader, gateway string) (e Entry, found, endsInNewline bool, err error) {
	br := bufio.NewReader(r)
	line := 0
	endsInNewline = true
	for {
		text, rerr := br.ReadString('\n')
		if rerr != nil && rerr != io.EOF {
			return Entry{}, false, false, fmt.Errorf("known_gateways %s: %w", k.Path, rerr)
		}
		if text == "" && rerr == io.EOF {
			break
		}
		line++
		endsInNewline = strings.HasSuffix(text, "\n")
		if len(text) > maxLineLen {
			return Entry{}, false, false, &MalformedError{Path: k.Path, Line: line, Text: text[:64] + "...", Why: "line too long"}
		}
		host, fp, ok, merr := parseLine(text)
		if merr != "" {
			if len(text) > 100 {
				text = text[:100] + "..."
			}
			return Entry{}, false, false, &MalformedError{Path: k.Path, Line: line, Text: strings.TrimRight(text, "\r\n"), Why: merr}
		}
		if ok && !found && strings.EqualFold(host, gateway) {
			e, found = Entry{Fingerprint: fp, Line: line}, true
		}
		if rerr == io.EOF {
			break
		}
	}
	return e, found, endsInNewline, nil
}

// maxLineLen bounds a line of the file.
const maxLineLen = 4096

// parseLine parses one line: ok is false for a blank line or a comment;
// malformed says what is wrong with a line that is neither nor an entry.
func parseLine(text string) (host, fp string, ok bool, malformed string) {
	t := strings.TrimSpace(text)
	if t == "" || strings.HasPrefix(t, "#") {
		return "", "", false, ""
	}
	fields := strings.Fields(t)
	if len(fields) != 2 {
		return "", "", false, fmt.Sprintf("%d fields, want 2", len(fields))
	}
	if _, port, err := net.SplitHostPort(fields[0]); err != nil || port == "" {
		return "", "", false, "no HOST:PORT first"
	}
	if err := ValidFingerprint(fields[1]); err != nil {
		return "", "", false, "bad fingerprint"
	}
	return fields[0], fields[1], true, ""
}

// appendMu serializes this process's appends; lockFile, those of other
// processes.
var appendMu sync.Mutex

// Add pins fingerprint for gateway (host:port), creating the file and its
// directory, unless the file pins a key for gateway already (another
// session or another agent process pinned it meanwhile): then it writes
// nothing and returns the entry found, whose Fingerprint the caller
// compares with the one it wanted to pin. added reports a new line.
func (k KnownGateways) Add(gateway, fingerprint string) (e Entry, added bool, err error) {
	if _, _, ok, why := parseLine(gateway + " " + fingerprint); !ok {
		return Entry{}, false, fmt.Errorf("known_gateways: cannot pin %q %q: %s", gateway, fingerprint, why)
	}
	appendMu.Lock()
	defer appendMu.Unlock()
	if err := os.MkdirAll(filepath.Dir(k.Path), 0o700); err != nil {
		return Entry{}, false, fmt.Errorf("known_gateways: %w", err)
	}
	f, err := os.OpenFile(k.Path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return Entry{}, false, fmt.Errorf("known_gateways: %w", err)
	}
	defer f.Close()
	if err := lockFile(f, true); err != nil {
		return Entry{}, false, fmt.Errorf("known_gateways %s: lock: %w", k.Path, err)
	}
	// Under the lock, read the file again: another process may have
	// pinned the gateway since our Lookup.
	e, found, endsInNewline, err := k.scan(f, gateway)
	if err != nil || found {
		return e, false, err
	}
	var buf bytes.Buffer
	if !endsInNewline {
		buf.WriteByte('\n')
	}
	fmt.Fprintf(&buf, "%s %s\n", strings.ToLower(gateway), fingerprint)
	if _, err := f.Write(buf.Bytes()); err != nil {
		return Entry{}, false, fmt.Errorf("known_gateways: %w", err)
	}
	if err := f.Sync(); err != nil {
		return Entry{}, false, fmt.Errorf("known_gateways: %w", err)
	}
	// The line number, for messages: count the lines now in the file.
	n, err := k.lines(f)
	if err != nil {
		return Entry{}, false, err
	}
	return Entry{Fingerprint: fingerprint, Line: n}, true, nil
}

// lines counts the lines of f.
func (k KnownGateways) lines(f *os.File) (int, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, fmt.Errorf("known_gateways: %w", err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return 0, fmt.Errorf("known_gateways: %w", err)
	}
	return bytes.Count(data, []byte("\n")), nil
}
