// Package consultest serves the node endpoint of a service catalog's
// HTTP API, GET /v1/catalog/node/NODE, with the contract of its blocking
// queries, for tests of the clients that follow it (the real catalog
// agent cannot be installed here).
package consultest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/diglett/diglett/internal/testutil"
)

// Server serves the catalog's node endpoint, GET /v1/catalog/node/NODE,
// with the contract of its blocking queries: a query with index=N (N > 0)
// is held until the catalog's index passes N or its wait (default 5m, at
// most 10m) expires, and every answer carries the index in X-Consul-Index.
// An unknown node is answered null. A restart (a snapshot restored) sets
// the index lower and wakes every held query, as the catalog abandons its
// old state.
type Server struct {
	// URL is its address, http://127.0.0.1:PORT.
	URL string

	srv *httptest.Server

	mu       sync.Mutex
	index    uint64
	epoch    int           // restarts
	changed  chan struct{} // closed and replaced at each change
	nodes    map[string]map[string]*api.AgentService
	fail     int     // the next requests answered 500
	busy     bool    // misbehaves: answers at once, whatever the index
	badIndex *uint64 // answers this index instead of the catalog's
	requests []Request
}

// Request is a query the server received.
type Request struct {
	At       time.Time
	Node     string
	Index    uint64 // 0 when not given
	HasIndex bool
	Wait     string
	Token    string
}

// Start starts a server for t, with an empty catalog at index 1.
func Start(t testing.TB) *Server {
	f := &Server{index: 1, changed: make(chan struct{}), nodes: make(map[string]map[string]*api.AgentService)}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	f.URL = f.srv.URL
	t.Cleanup(f.srv.Close)
	return f
}

// Fail answers the next n queries 500.
func (f *Server) Fail(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = n
}

// Misbehave makes the server answer every query at once, whatever its
// index, with index instead of the catalog's.
func (f *Server) Misbehave(index uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.busy, f.badIndex = true, &index
}

// Set replaces the services of node (nil removes the node) and moves the
// index on.
func (f *Server) Set(node string, services ...*api.AgentService) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if services == nil {
		delete(f.nodes, node)
	} else {
		m := make(map[string]*api.AgentService)
		for _, s := range services {
			m[s.ID] = s
		}
		f.nodes[node] = m
	}
	f.index++
	close(f.changed)
	f.changed = make(chan struct{})
}

// Restart sets the catalog to index with node's services, and wakes the
// held queries.
func (f *Server) Restart(index uint64, node string, services ...*api.AgentService) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := make(map[string]*api.AgentService)
	for _, s := range services {
		m[s.ID] = s
	}
	f.nodes = map[string]map[string]*api.AgentService{node: m}
	f.index = index
	f.epoch++
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *Server) serve(w http.ResponseWriter, r *http.Request) {
	node, ok := strings.CutPrefix(r.URL.Path, "/v1/catalog/node/")
	if r.Method != http.MethodGet || !ok || node == "" {
		http.NotFound(w, r)
		return
	}
	q := r.URL.Query()
	req := Request{At: time.Now(), Node: node, Wait: q.Get("wait"), Token: r.Header.Get("X-Consul-Token")}
	if s := q.Get("index"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			http.Error(w, "bad index", http.StatusBadRequest)
			return
		}
		req.Index, req.HasIndex = n, true
	}
	wait := 5 * time.Minute
	if req.Wait != "" {
		d, err := time.ParseDuration(req.Wait)
		if err != nil {
			http.Error(w, "bad wait", http.StatusBadRequest)
			return
		}
		wait = min(d, 10*time.Minute)
	}
	f.mu.Lock()
	f.requests = append(f.requests, req)
	if f.fail > 0 {
		f.fail--
		f.mu.Unlock()
		http.Error(w, "rpc error: no cluster leader", http.StatusInternalServerError)
		return
	}
	epoch := f.epoch
	f.mu.Unlock()

	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		f.mu.Lock()
		if f.busy || req.Index == 0 || f.index > req.Index || f.epoch != epoch {
			break // still locked
		}
		ch := f.changed
		f.mu.Unlock()
		select {
		case <-ch:
		case <-timer.C:
			f.mu.Lock()
			goto answer
		case <-r.Context().Done():
			return
		}
	}
answer:
	index := f.index
	if f.badIndex != nil {
		index = *f.badIndex
	}
	var body any // null for an unknown node
	if services, ok := f.nodes[node]; ok {
		body = &api.CatalogNode{Node: &api.Node{Node: node, Address: "10.0.0.2"}, Services: services}
	}
	data, err := json.Marshal(body)
	f.mu.Unlock()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Consul-Index", strconv.FormatUint(index, 10))
	w.Header().Set("X-Consul-KnownLeader", "true")
	w.Header().Set("X-Consul-LastContact", "0")
	w.Write(data)
}

// RequestsSince is a copy of the requests received since start.
func (f *Server) RequestsSince(start time.Time) []Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Request
	for _, r := range f.requests {
		if !r.At.Before(start) {
			out = append(out, r)
		}
	}
	return out
}

// WaitHeld waits until a query with index (> 0) is held: received, and
// not yet answered because the index did not pass it.
func (f *Server) WaitHeld(t testing.TB, index uint64) {
	t.Helper()
	err := testutil.Poll(10*time.Second, func() error {
		reqs := f.RequestsSince(time.Time{})
		if len(reqs) > 0 && reqs[len(reqs)-1].Index == index {
			return nil
		}
		return fmt.Errorf("no query waiting on index %d: %+v", index, reqs)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Index is the catalog's index.
func (f *Server) Index() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.index
}
