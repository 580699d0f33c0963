// Package faults is the fault-and-attack suite: it builds the release
// binaries (diglett-server and diglett) and runs each attack or fault
// against them on loopback, one fresh gateway per case, checking besides
// the case's own assertion that a control tunnel on the same gateway keeps
// serving checksummed data, that the gateway's goroutines and descriptors
// return to their baseline, and that it neither exits nor panics. The suite
// prints a table of every case: what was tried and what held.
//
// The package holds only tests; `go test ./internal/faults` runs the suite,
// and `make soak` (the soak build tag) runs an hour of mixed traffic with
// agents and the gateway restarted at random.
package faults
