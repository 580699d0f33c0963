package inspect

import (
	"testing"
)

// FuzzObserve feeds arbitrary bytes to the parsers as what a visitor sent
// and what a backend answered: they must neither panic nor hang, and end
// once the stream is closed, within the ring's bound.
func FuzzObserve(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: h\r\n\r\n"), []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), 3)
	f.Add([]byte("POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
		[]byte("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n\r\nrest"), 1)
	f.Add([]byte("PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 70000\r\n\r\nshort"), []byte("HTTP/1.1 200 OK\r\nContent-Length: 99999\r\n\r\n"), 64)
	f.Add([]byte("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n\x81\x00"), []byte("HTTP/1.1 101 Switching\r\n\r\n\x81\x00"), 5)
	f.Add([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), []byte{0, 0, 0, 4}, 2)
	f.Fuzz(func(t *testing.T, fromVisitor, fromBackend []byte, chunk int) {
		chunk = max(1, min(chunk, 1<<16))
		in, err := New(Config{Size: 4})
		if err != nil {
			t.Fatal(err)
		}
		fv, fb := in.Observe("web", nil)
		for _, x := range []struct {
			w interface{ Write([]byte) (int, error) }
			p []byte
		}{{fv, fromVisitor}, {fb, fromBackend}} {
			for p := x.p; len(p) > 0; {
				n := min(chunk, len(p))
				x.w.Write(p[:n])
				p = p[n:]
			}
		}
		fv.Close()
		fb.Close()
		in.parsers.Wait()
		if l := in.List(); len(l) > 4 {
			t.Fatalf("%d entries kept, want 4 at most", len(l))
		}
		for _, s := range in.List() {
			if _, ok := in.Get(s.ID); !ok {
				t.Fatalf("entry %d listed but not found", s.ID)
			}
		}
	})
}
