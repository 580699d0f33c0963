package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// holVisitors is the number of visitors downloading at once in the
// head-of-line measurement.
const holVisitors = 8

// streamResult is what streamRate measured.
type streamResult struct {
	rate    float64 // aggregate, Gbit/s
	slowest float64 // the slowest visitor's rate, Gbit/s
	errors  int     // visitors whose download failed before the end
	first   error
}

// streamRate has n visitors download GET /stream from addr at once, and
// measures their aggregate rate over secs seconds after half a second of
// warm-up that is not counted.
func streamRate(ctx context.Context, addr string, n, secs int) (streamResult, error) {
	var r streamResult
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	req := []byte("GET /stream HTTP/1.1\r\nHost: " + addr + "\r\nUser-Agent: diglett-bench\r\n\r\n")
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return r, err
		}
		conns = append(conns, c)
	}
	const warmup = 500 * time.Millisecond
	dur := time.Duration(secs) * time.Second
	end := time.Now().Add(warmup + dur + 10*time.Second) // bound on every read
	counts := make([]atomic.Int64, n)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		stop atomic.Bool
	)
	for i, c := range conns {
		wg.Add(1)
		go func(i int, c net.Conn) {
			defer wg.Done()
			c.SetDeadline(end)
			buf := make([]byte, 64<<10)
			_, err := c.Write(req)
			for err == nil {
				var k int
				k, err = c.Read(buf)
				counts[i].Add(int64(k))
			}
			if !stop.Load() {
				mu.Lock()
				r.errors++
				if r.first == nil {
					r.first = err
				}
				mu.Unlock()
			}
		}(i, c)
	}
	snap := func() []int64 {
		s := make([]int64, n)
		for i := range counts {
			s[i] = counts[i].Load()
		}
		return s
	}
	sleep := func(d time.Duration) {
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
	}
	sleep(warmup)
	s0, t0 := snap(), time.Now()
	sleep(dur)
	s1, t1 := snap(), time.Now()
	stop.Store(true)
	for _, c := range conns {
		c.Close()
	}
	wg.Wait()
	el := t1.Sub(t0).Seconds()
	var total int64
	for i := range s0 {
		d := s1[i] - s0[i]
		total += d
		v := float64(d) * 8 / el / 1e9
		if i == 0 || v < r.slowest {
			r.slowest = v
		}
	}
	r.rate = float64(total) * 8 / el / 1e9
	if ctx.Err() != nil {
		return r, ctx.Err()
	}
	return r, nil
}

// stalledDownload opens GET /stream on addr, reads the response's headers
// and then never reads again; close ends it.
func stalledDownload(addr string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "GET /stream HTTP/1.1\r\nHost: %s\r\nUser-Agent: diglett-bench-stalled\r\n\r\n", addr); err != nil {
		c.Close()
		return nil, err
	}
	// One small read: the headers (and perhaps the start of the body).
	buf := make([]byte, 512)
	var got []byte
	for !bytes.Contains(got, []byte("\r\n\r\n")) {
		n, err := c.Read(buf)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("stalled download: headers: %w", err)
		}
		got = append(got, buf[:n]...)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// headOfLine measures, on every path's public TCP port (or the backend
// itself for direct), 8 visitors' aggregate download rate without and
// then with a 9th visitor that stalls a download on the same tunnel.
func (b *bench) headOfLine(ctx context.Context, res map[string]map[string]float64) error {
	for _, t := range b.targets {
		base, err := streamRate(ctx, t.httpAddr, holVisitors, b.o.secs)
		if err != nil {
			return fmt.Errorf("%s head-of-line: %w", t.name, err)
		}
		stalled, err := stalledDownload(t.httpAddr)
		if err != nil {
			return fmt.Errorf("%s head-of-line: %w", t.name, err)
		}
		// Let the stalled download fill every buffer on its way.
		time.Sleep(time.Second)
		with, err := streamRate(ctx, t.httpAddr, holVisitors, b.o.secs)
		stalled.Close()
		if err != nil {
			return fmt.Errorf("%s head-of-line with a stalled visitor: %w", t.name, err)
		}
		r := res[t.name]
		r["hol_rate"] = base.rate
		r["hol_slowest"] = base.slowest
		r["hol_stalled_rate"] = with.rate
		r["hol_stalled_slowest"] = with.slowest
		if base.rate > 0 {
			r["hol_ratio"] = with.rate / base.rate
		}
		b.errs[t.name+" hol"] += int64(base.errors)
		b.errs[t.name+" hol-stalled"] += int64(with.errors)
		b.progress("%-7s hol      8 visitors %6.2f Gbit/s (slowest %.3f), with a stalled one %6.2f Gbit/s (slowest %.3f): %.2f×  errors %d/%d %v",
			t.name, base.rate, base.slowest, with.rate, with.slowest, r["hol_ratio"], base.errors, with.errors, firstErr(base.first, with.first))
		time.Sleep(500 * time.Millisecond)
	}
	return b.alive()
}
