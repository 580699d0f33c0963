package transport

import (
	"testing"
	"time"
)

func TestKeepAliveLowered(t *testing.T) {
	for _, tc := range []struct {
		c       Config
		period  time.Duration
		lowered bool
	}{
		{Config{}, DefaultKeepAlivePeriod, false},
		{Config{MaxIdleTimeout: 4 * time.Second}, 2 * time.Second, true},
		{Config{MaxIdleTimeout: 4 * time.Second, KeepAlivePeriod: time.Second}, time.Second, false},
		{Config{MaxIdleTimeout: 5 * time.Second, KeepAlivePeriod: 3 * time.Second}, 2500 * time.Millisecond, true},
		{Config{MaxIdleTimeout: 10 * time.Second, KeepAlivePeriod: 5 * time.Second}, 5 * time.Second, false},
	} {
		period, lowered := tc.c.KeepAliveLowered()
		if period != tc.period || lowered != tc.lowered {
			t.Errorf("%+v: %v %v, want %v %v", tc.c, period, lowered, tc.period, tc.lowered)
		}
		if period != tc.c.WithDefaults().KeepAlivePeriod {
			t.Errorf("%+v: %v differs from WithDefaults", tc.c, period)
		}
	}
}
