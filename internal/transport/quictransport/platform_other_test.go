//go:build !unix

package quictransport

import "time"

// cpuTime is the CPU time this process has used: unknown here.
func cpuTime() time.Duration { return 0 }

// noGSO says why this machine cannot use UDP segmentation offload.
func noGSO() string { return "UDP segmentation offload is Linux's" }
