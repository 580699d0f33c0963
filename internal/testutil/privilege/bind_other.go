//go:build !linux

package privilege

// WithoutBindService runs f: outside Linux the tests run unprivileged.
func WithoutBindService(f func() error) error { return f() }
