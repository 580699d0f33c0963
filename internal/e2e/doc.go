// Package e2e is the end-to-end suite: the gateway, the ingress and agents
// (the library, and the real binaries where a test says so) over real
// sockets on loopback. Its files are tests only; this file gives the
// package its doc.
package e2e

// repoRoot is the module's root, from this package's directory: where the
// tests build the binaries and run the scripts.
const repoRoot = "../.."
