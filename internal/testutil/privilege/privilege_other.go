//go:build !linux

// Package privilege runs test code without a privilege root has, so that
// tests of permission errors mean something when the suite runs as root
// (as it does in CI).
package privilege

// WithoutFileAccess runs f: outside Linux the tests run unprivileged.
func WithoutFileAccess(f func() error) error { return f() }

// WithoutBindService runs f: outside Linux the tests run unprivileged.
func WithoutBindService(f func() error) error { return f() }
