package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/diglett/diglett"
)

// memResult is the gateway's memory with idle agent sessions.
type memResult struct {
	transport     string // the sessions': tcp, ws or quic
	sessions      int
	before, after int64 // VmRSS, bytes
	// The same samples' RssAnon and RssFile: most of a fresh process's
	// VmRSS is its binary's file pages, and what sessions add is anon.
	beforeMem, afterMem memSample
	setup               time.Duration
	errors              int
	firstErr            error

	// The same sessions idle again after each carried memTraffic bytes
	// to one visitor: what a session that served anything costs.
	used         memSample
	usedSessions int // sessions whose visitor got every byte
	usedErr      error
}

// memTraffic is what each idle session carries before the second figure.
const memTraffic = 256 << 10

func (m *memResult) perSession() float64 {
	return float64(m.after-m.before) / 1024 / float64(m.sessions)
}

// perSessionUsed is the per-session figure after the traffic, or 0.
func (m *memResult) perSessionUsed() float64 {
	if m.used.vm == 0 {
		return 0
	}
	return float64(m.used.vm-m.before) / 1024 / float64(m.sessions)
}

// memory starts a fresh gateway, opens o.sessions idle agent sessions to
// it from this process over transport (diglett.Listen with one session
// each, one name and public port each), and compares the gateway's
// resident memory before and after.
func (b *bench) memory(ctx context.Context, transport string) (*memResult, error) {
	n := b.o.sessions
	fmt.Fprintf(os.Stderr, "bench: gateway memory with %d idle agent sessions (%s)\n", n, transport)
	g, addr, fp, err := b.startGateway(ctx, "gateway-memory-"+transport, b.o.portsMem, false)
	if err != nil {
		return nil, err
	}
	defer b.ps.stopAll()
	settle := func() memSample {
		// The gateway's heap settles within a few seconds of idleness;
		// take the last of a few samples.
		var v memSample
		for i := 0; i < 5 && ctx.Err() == nil; i++ {
			time.Sleep(time.Second)
			v = memOf(g.pid())
		}
		return v
	}
	m := &memResult{transport: transport, sessions: n}
	m.beforeMem = settle()
	m.before = m.beforeMem.vm

	logf, err := os.Create(filepath.Join(b.logDir, "memory-agents-"+transport+".log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	log := slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu   sync.Mutex
		lns  []*diglett.Listener
		wg   sync.WaitGroup
		work = make(chan int)
	)
	start := time.Now()
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				dctx, dcancel := context.WithTimeout(lctx, 30*time.Second)
				ln, err := diglett.Listen(dctx, diglett.Config{
					Gateway:     addr,
					Name:        fmt.Sprintf("idle%05d", i),
					Transport:   transport,
					Connections: 1,
					Fingerprint: fp,
					Logger:      log,
				})
				dcancel()
				mu.Lock()
				if err != nil {
					m.errors++
					if m.firstErr == nil {
						m.firstErr = err
					}
				} else {
					lns = append(lns, ln)
				}
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < n && ctx.Err() == nil; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	m.setup = time.Since(start)
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	if err := g.alive(); err != nil {
		return nil, err
	}
	if len(lns) == 0 {
		return nil, fmt.Errorf("no session opened: %v", m.firstErr)
	}
	m.sessions = len(lns)
	m.afterMem = settle()
	m.after = m.afterMem.vm
	fmt.Fprintf(os.Stderr, "  %d sessions in %v (%d failed), gateway RSS %.1f MB -> %.1f MB: %.1f KB per session\n",
		m.sessions, m.setup.Round(time.Millisecond), m.errors, float64(m.before)/(1<<20), float64(m.after)/(1<<20), m.perSession())
	m.usedSessions, m.usedErr = carry(ctx, lns)
	if err := g.alive(); err != nil {
		return nil, err
	}
	m.used = settle()
	fmt.Fprintf(os.Stderr, "  after %d KiB through each (%d of %d whole), gateway RSS %.1f MB: %.1f KB per session\n",
		memTraffic>>10, m.usedSessions, m.sessions, float64(m.used.vm)/(1<<20), m.perSessionUsed())
	return m, ctx.Err()
}

// carry has each listener's backend send memTraffic bytes to one visitor
// of its public port, 16 at a time, and returns how many visitors got
// them all, and the first failure.
func carry(ctx context.Context, lns []*diglett.Listener) (int, error) {
	var (
		mu       sync.Mutex
		whole    int
		firstErr error
		wg       sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	sem := make(chan struct{}, 16)
	payload := make([]byte, memTraffic)
	for _, ln := range lns {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			served := make(chan struct{})
			go func() {
				defer close(served)
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Write(payload)
				c.Close()
			}()
			vc, err := net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
			if err != nil {
				fail(err)
				return
			}
			vc.SetDeadline(time.Now().Add(30 * time.Second))
			n, err := io.Copy(io.Discard, vc)
			vc.Close()
			<-served
			if n != memTraffic {
				fail(fmt.Errorf("a visitor read %d bytes of %d: %v", n, memTraffic, err))
				return
			}
			mu.Lock()
			whole++
			mu.Unlock()
		}()
	}
	wg.Wait()
	return whole, firstErr
}
