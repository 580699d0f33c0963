package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// bodySize is the size of the direct backend's answers.
const bodySize = 100

// streamChunk is the size of each write of the backend's endless /stream.
const streamChunk = 64 << 10

// runBackend serves handler's answers on addr with keep-alive.
func runBackend(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Println("backend listening on", ln.Addr())
	return serveBackend(ln)
}

// serveBackend serves handler on ln until ln fails.
func serveBackend(ln net.Listener) error {
	srv := &http.Server{Handler: handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 5 * time.Minute}
	return srv.Serve(ln)
}

// handler answers a 100-byte body, with headers set in advance so the
// server sniffs nothing; GET /stream answers an endless body instead,
// written 64 KiB at a time.
func handler() http.Handler {
	body := bytes.Repeat([]byte("x"), bodySize)
	ctype := []string{"text/plain"}
	clen := []string{fmt.Sprint(bodySize)}
	chunk := bytes.Repeat([]byte("s"), streamChunk)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stream" {
			// An endless body, 64 KiB per write, until the visitor goes.
			w.Header().Set("Content-Type", "application/octet-stream")
			for {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}
		hd := w.Header()
		hd["Content-Type"] = ctype
		hd["Content-Length"] = clen
		w.Write(body)
	})
}

// checkHTTP fetches / from addr with the given Host and checks that the
// direct backend's 100 bytes come back.
func checkHTTP(ctx context.Context, addr, host string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return fmt.Errorf("GET http://%s/ via %s: %w", host, addr, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || len(b) != bodySize {
		return fmt.Errorf("GET http://%s/ via %s: status %d, %d bytes, %v", host, addr, resp.StatusCode, len(b), err)
	}
	return nil
}

// latencyResult is what one fixed-rate run measured, in milliseconds.
type latencyResult struct {
	p50, p99, max float64
	requests      int64
	errors        int64
	late          float64 // p99 of how late the schedule released requests, ms (the generator's own lag)
}

// fixedRate sends rate requests/s for secs seconds (after one second of
// warm-up that is not recorded) over conns keep-alive connections to addr,
// with the given Host. It is an open-loop generator: request i is due at
// start + i/rate whatever happened to the others, and its latency counts
// from when the schedule released it, waiting for a free connection
// included, so a stall shows in the figures instead of slowing the load
// (no coordinated omission). How late the schedule itself woke up (Go's
// timers on an idle process can be up to a millisecond late) is the
// generator's own lag: it is reported apart and not counted.
func fixedRate(ctx context.Context, addr, host string, rate, conns, secs int) (latencyResult, error) {
	const warmup = time.Second
	total := int(time.Duration(secs)*time.Second+warmup) / int(time.Second) * rate
	interval := time.Second / time.Duration(rate)
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+warmup+30*time.Second)
	defer cancel()

	// Connect every worker first.
	cs := make([]net.Conn, conns)
	for i := range cs {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			for _, c := range cs[:i] {
				c.Close()
			}
			return latencyResult{}, err
		}
		cs[i] = c
	}
	req := []byte(fmt.Sprintf("GET / HTTP/1.1\r\nHost: %s\r\nUser-Agent: diglett-bench\r\n\r\n", host))
	due := make(chan time.Time, total)
	var (
		mu     sync.Mutex
		hist   = hdrhistogram.New(1, 60_000_000, 3) // microseconds
		lag    = hdrhistogram.New(1, 60_000_000, 3)
		errs   int64
		wg     sync.WaitGroup
		start  = time.Now().Add(50 * time.Millisecond)
		record = start.Add(warmup)
	)
	for _, c := range cs {
		wg.Add(1)
		go func(c net.Conn) {
			defer wg.Done()
			defer c.Close()
			br := bufio.NewReader(c)
			h := hdrhistogram.New(1, 60_000_000, 3)
			var e int64
			for t := range due {
				if ctx.Err() != nil {
					e++
					continue
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				ok := false
				if _, err := c.Write(req); err == nil {
					if resp, err := http.ReadResponse(br, nil); err == nil {
						n, err := io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						ok = err == nil && resp.StatusCode == 200 && n == bodySize
					}
				}
				if !t.Before(record) {
					h.RecordValue(max(1, time.Since(t).Microseconds()))
				}
				if !ok {
					e++
					c.Close()
					nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
					if err != nil {
						// Count the rest of this worker's requests as failed.
						for range due {
							e++
						}
						break
					}
					c = nc
					defer c.Close()
					br = bufio.NewReader(c)
				}
			}
			mu.Lock()
			hist.Merge(h)
			errs += e
			mu.Unlock()
		}(c)
	}
	// The schedule.
	for i := 0; i < total && ctx.Err() == nil; i++ {
		t := start.Add(time.Duration(i) * interval)
		if d := time.Until(t); d > 0 {
			time.Sleep(d)
		}
		now := time.Now()
		if !t.Before(record) {
			lag.RecordValue(max(1, now.Sub(t).Microseconds()))
		}
		due <- now
	}
	close(due)
	wg.Wait()
	r := latencyResult{
		p50:      float64(hist.ValueAtQuantile(50)) / 1000,
		p99:      float64(hist.ValueAtQuantile(99)) / 1000,
		max:      float64(hist.Max()) / 1000,
		requests: hist.TotalCount(),
		errors:   errs,
		late:     float64(lag.ValueAtQuantile(99)) / 1000,
	}
	if ctx.Err() != nil {
		return r, fmt.Errorf("fixed-rate run did not finish in time: %w", ctx.Err())
	}
	return r, nil
}

// runRate is "bench rate ADDR HOST RATE SECS": the latency measurement's
// fixed-rate load on its own, over 64 connections, printing what it
// measured.
func runRate(addr, host, rate, secs string) error {
	r, err := strconv.Atoi(rate)
	if err != nil || r <= 0 {
		return fmt.Errorf("rate %q: want requests per second", rate)
	}
	s, err := strconv.Atoi(secs)
	if err != nil || s <= 0 {
		return fmt.Errorf("secs %q: want seconds", secs)
	}
	res, err := fixedRate(context.Background(), addr, host, r, 64, s)
	if err != nil {
		return err
	}
	fmt.Printf("requests %d errors %d p50 %.3f ms p99 %.3f ms sender lag p99 %.3f ms\n", res.requests, res.errors, res.p50, res.p99, res.late)
	if res.errors > 0 {
		return fmt.Errorf("%d requests failed", res.errors)
	}
	return nil
}

// median of xs (NaN-free); 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
