// Package muxbench compares the stream multiplexers the TLS transport can use, over real TLS 1.3 on loopback, so the choice recorded in docs/DECISIONS.md can be reproduced.
package muxbench
