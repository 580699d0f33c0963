//go:build !linux

package identity

// loadUnprivileged is LoadOrCreateKey: outside Linux the tests run
// unprivileged.
func loadUnprivileged(dir string) error {
	_, _, err := LoadOrCreateKey(dir)
	return err
}
