package quictransport

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/diglett/diglett/internal/transport"
)

// TestDatagrams: each side's datagrams reach the other's handler whole,
// one that does not fit a packet is refused with ErrDatagramTooLarge, and
// the dialing side's probes reach the listening side's handler too (the
// gateway's UDP flows tell them apart by their kind).
func TestDatagrams(t *testing.T) {
	noLeaks(t)
	c, s := pairVia(t, transport.Config{KeepAlivePeriod: 100 * time.Millisecond, MaxIdleTimeout: 5 * time.Second}, nil)
	if !c.DatagramsEnabled() || !s.DatagramsEnabled() {
		t.Fatalf("datagrams enabled: client %v, server %v", c.DatagramsEnabled(), s.DatagramsEnabled())
	}
	atClient := make(chan []byte, 64)
	atServer := make(chan []byte, 64)
	c.HandleDatagrams(func(p []byte) {
		select {
		case atClient <- p:
		default:
		}
	})
	s.HandleDatagrams(func(p []byte) {
		select {
		case atServer <- p:
		default:
		}
	})
	want := bytes.Repeat([]byte("d"), 1000)
	// Datagrams may be lost even on loopback: send until one arrives,
	// a bounded number of times.
	roundTrip := func(from *Session, at chan []byte, skipProbes bool) {
		t.Helper()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		deadline := time.After(10 * time.Second)
		for {
			if err := from.SendDatagram(want); err != nil {
				t.Fatal(err)
			}
			select {
			case got := <-at:
				if skipProbes && len(got) == probeSize && got[0] == 0 {
					continue
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("received %d bytes, sent %d", len(got), len(want))
				}
				return
			case <-tick.C:
			case <-deadline:
				t.Fatal("no datagram arrived")
			}
		}
	}
	roundTrip(c, atServer, true)
	roundTrip(s, atClient, false)

	// The client's probes reach the server's handler.
	deadline := time.After(10 * time.Second)
	for probe := false; !probe; {
		select {
		case got := <-atServer:
			probe = len(got) == probeSize && bytes.Equal(got, make([]byte, probeSize))
		case <-deadline:
			t.Fatal("no probe reached the listening side's handler")
		}
	}

	err := c.SendDatagram(make([]byte, 64<<10))
	if !errors.Is(err, transport.ErrDatagramTooLarge) {
		t.Fatalf("a 64 KiB datagram: %v, want ErrDatagramTooLarge", err)
	}
}
