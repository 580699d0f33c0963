package identity

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// KnownGateways is the agent's file of pinned gateway keys, one
// "host:port SHA256:..." per line, like SSH's known_hosts.
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

// Lookup returns the key pinned for gateway (host:port).
func (k KnownGateways) Lookup(gateway string) (Entry, bool, error) {
	f, err := os.Open(k.Path)
	if errors.Is(err, os.ErrNotExist) {
		return Entry{}, false, nil
	}
	if err != nil {
		return Entry{}, false, fmt.Errorf("known_gateways: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		if strings.EqualFold(fields[0], gateway) {
			return Entry{Fingerprint: fields[1], Line: line}, true, nil
		}
	}
	if err := sc.Err(); err != nil {
		return Entry{}, false, fmt.Errorf("known_gateways %s: %w", k.Path, err)
	}
	return Entry{}, false, nil
}

var appendMu sync.Mutex

// Add pins fingerprint for gateway, creating the file and its directory.
func (k KnownGateways) Add(gateway, fingerprint string) error {
	appendMu.Lock()
	defer appendMu.Unlock()
	if err := os.MkdirAll(filepath.Dir(k.Path), 0o700); err != nil {
		return fmt.Errorf("known_gateways: %w", err)
	}
	f, err := os.OpenFile(k.Path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("known_gateways: %w", err)
	}
	if _, err := fmt.Fprintf(f, "%s %s\n", strings.ToLower(gateway), fingerprint); err != nil {
		f.Close()
		return fmt.Errorf("known_gateways: %w", err)
	}
	return f.Close()
}
