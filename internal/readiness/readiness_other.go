//go:build !linux

package readiness

import (
	"errors"
	"syscall"
)

// Poller is not available here: New fails.
type Poller struct{}

// Watch is not available here.
type Watch struct{}

// New fails: only Linux has a poller.
func New() (*Poller, error) { return nil, errors.ErrUnsupported }

// Close does nothing.
func (p *Poller) Close() error { return nil }

// Watch fails.
func (p *Poller) Watch(syscall.Conn) (*Watch, error) { return nil, errors.ErrUnsupported }

// Park reports false.
func (w *Watch) Park(func()) bool { return false }

// Unpark reports false.
func (w *Watch) Unpark() bool { return false }

// Close does nothing.
func (w *Watch) Close() {}
