//go:build !linux

package firewall

import (
	"errors"
	"fmt"
	"runtime"
)

func newBackend(kind string, _ *hostChain, _ int) (backend, error) {
	return nil, fmt.Errorf("firewall: %s: %w", kind, errors.New("not supported on "+runtime.GOOS))
}
