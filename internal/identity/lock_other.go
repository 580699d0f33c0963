//go:build !unix

package identity

import "os"

// lockFile does nothing where advisory locks are not available: appends
// are serialized within the process only.
func lockFile(f *os.File, exclusive bool) error { return nil }
