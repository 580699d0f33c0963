package catalog

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// Consul defaults and bounds.
const (
	// DefaultConsulAddress is the default of ConsulOptions.Address.
	DefaultConsulAddress = "http://127.0.0.1:8500"
	// DefaultConsulWait is the default of ConsulOptions.Wait.
	DefaultConsulWait = 5 * time.Minute
	// MaxConsulWait is the longest wait the catalog honours.
	MaxConsulWait = 10 * time.Minute
	// DefaultConsulMinInterval is the default of ConsulOptions.MinInterval.
	DefaultConsulMinInterval = 5 * time.Second
	// consulBurst is how many queries may follow each other at once
	// before the rate limit paces them.
	consulBurst = 2
	// consulGrace is added to a query's wait (and the catalog's jitter
	// of up to wait/16) to bound the whole request.
	consulGrace = 15 * time.Second
)

// ConsulOptions configure a Consul source. Zero values are the
// documented defaults.
type ConsulOptions struct {
	// Address is the agent's HTTP API: http://HOST:PORT or
	// https://HOST:PORT. Default DefaultConsulAddress. What is left unset
	// here (a CA file for https, a namespace) the client library takes
	// from its standard environment variables.
	Address string
	// Node is the catalog node whose services are read (required).
	Node string
	// Token is the ACL token sent with each query; never logged. Default
	// none.
	Token string
	// TagKeyword is the first word of the tags read. Default
	// DefaultTagKeyword ("diglett"); set it to another keyword to read
	// catalogs whose services were tagged for another tool with the same
	// tag syntax.
	TagKeyword string
	// Wait is how long a blocking query waits for a change, at most
	// MaxConsulWait. Default DefaultConsulWait.
	Wait time.Duration
	// MinInterval paces the queries when the catalog changes fast or
	// answers at once: they go through a token bucket of two queries
	// refilled one per MinInterval, so two quick answers in a row are
	// followed at once and then one query per MinInterval. Default
	// DefaultConsulMinInterval.
	MinInterval time.Duration
	// Logger receives what the source does and the errors it retries.
	// Default slog.Default().
	Logger *slog.Logger
}

// Consul is a Source that reads a node's services from the Consul
// catalog with blocking queries.
type Consul struct {
	client    *api.Client
	transport *http.Transport // its idle connections are closed when Watch ends
	node      string
	keyword   string
	wait      time.Duration
	every     time.Duration
	log       *slog.Logger
}

var _ Source = (*Consul)(nil)

// NewConsul checks o and returns the source; it does not query yet.
func NewConsul(o ConsulOptions) (*Consul, error) {
	if o.Node == "" {
		return nil, errors.New("consul: no node")
	}
	if strings.ContainsAny(o.Node, "/?#") {
		return nil, fmt.Errorf("consul: node %q: no / ? or # allowed", o.Node)
	}
	if o.Address == "" {
		o.Address = DefaultConsulAddress
	}
	if o.TagKeyword == "" {
		o.TagKeyword = DefaultTagKeyword
	}
	if !validKeyword(o.TagKeyword) {
		return nil, fmt.Errorf("consul: tag keyword %q: want one word without parentheses", o.TagKeyword)
	}
	switch {
	case o.Wait < 0:
		return nil, errors.New("consul: negative wait")
	case o.Wait == 0:
		o.Wait = DefaultConsulWait
	case o.Wait > MaxConsulWait:
		return nil, fmt.Errorf("consul: wait %v: at most %v", o.Wait, MaxConsulWait)
	}
	switch {
	case o.MinInterval < 0:
		return nil, errors.New("consul: negative min interval")
	case o.MinInterval == 0:
		o.MinInterval = DefaultConsulMinInterval
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	client, err := api.NewClient(&api.Config{Address: o.Address, Token: o.Token, Transport: tr})
	if err != nil {
		return nil, fmt.Errorf("consul %s: %w", o.Address, err)
	}
	return &Consul{
		client:    client,
		transport: tr,
		node:      o.Node,
		keyword:   o.TagKeyword,
		wait:      o.Wait,
		every:     o.MinInterval,
		log:       o.Logger.With("source", "consul", "address", redactAddress(o.Address), "node", o.Node),
	}, nil
}

// Watch follows the node's services with blocking queries until ctx
// ends, calling update with the current set of ports and then with each
// set that differs from the last.
//
// It keeps the rules of the catalog's blocking queries: each query waits
// for a change after the index (X-Consul-Index) of the previous answer;
// an index lower than the previous one (a restored snapshot, a restarted
// catalog) starts the loop again from index 0, which the next rule
// makes 1; an index is never used below 1, so a query always blocks; an answer is no proof of a change,
// so only a set that differs is given to update; and queries are
// rate-limited (see MinInterval) so that a catalog that answers at once
// is never queried in a busy loop. An unknown node is an empty set,
// logged at Warn. A failed query is retried with a capped backoff.
func (c *Consul) Watch(ctx context.Context, update func([]Port)) error {
	defer c.transport.CloseIdleConnections()
	em := emitter{update: update}
	limit := newBucket(c.every, consulBurst)
	retry := newRetrier(c.log, "consul query")
	var (
		index   uint64 // of the previous answer; 0 for a read that does not block
		unknown bool   // the node was not in the last answer
		bad     map[string]bool
	)
	for {
		if !limit.take(ctx) {
			return nil
		}
		node, meta, err := c.query(ctx, index)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if !retry.fail(ctx, err) {
				return nil
			}
			continue
		}
		retry.ok()
		index = c.nextIndex(index, meta.LastIndex)
		if node == nil {
			if !unknown {
				c.log.Warn("catalog: node not in the consul catalog; no ports asked for")
			}
			unknown = true
		} else if unknown {
			c.log.Info("catalog: node now in the consul catalog")
			unknown = false
		}
		var ports []Port
		ports, bad = c.ports(node, bad)
		if em.emit(ports) {
			c.log.Debug("catalog: ports asked for", "count", len(em.last), "ports", summary(em.last), "index", meta.LastIndex)
		}
	}
}

// query asks for the node's catalog entry, blocking while the catalog's
// index is index (when not 0) for at most the wait.
func (c *Consul) query(ctx context.Context, index uint64) (*api.CatalogNode, *api.QueryMeta, error) {
	qctx, cancel := context.WithTimeout(ctx, c.wait+c.wait/16+consulGrace)
	defer cancel()
	q := (&api.QueryOptions{WaitIndex: index, WaitTime: c.wait}).WithContext(qctx)
	node, meta, err := c.client.Catalog().Node(c.node, q)
	if err != nil {
		return nil, nil, err
	}
	return node, meta, nil
}

// nextIndex is the index to wait on after an answer with index got to a
// query that waited on prev.
func (c *Consul) nextIndex(prev, got uint64) uint64 {
	next := got
	if got < prev {
		c.log.Info("catalog: consul index went backwards; reading the catalog again", "index", got, "previous", prev)
		next = 0
	}
	// An index of 0 would not block: the catalog answers at once. 1 is
	// always safe.
	return max(next, 1)
}

// ports reads the tags of node's services. A malformed tag with the
// keyword is skipped and logged, once while it stays: bad holds the
// tags logged for the previous answer, and the returned map those of
// this one.
func (c *Consul) ports(node *api.CatalogNode, bad map[string]bool) ([]Port, map[string]bool) {
	if node == nil {
		return nil, nil
	}
	services := make([]*api.AgentService, 0, len(node.Services))
	for _, s := range node.Services {
		if s != nil {
			services = append(services, s)
		}
	}
	slices.SortFunc(services, func(a, b *api.AgentService) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.ID, b.ID))
	})
	var out []Port
	nowBad := make(map[string]bool)
	for _, s := range services {
		for _, tag := range s.Tags {
			ps, ok, err := ParseTag(tag, c.keyword)
			if !ok {
				continue
			}
			if err != nil {
				k := s.ID + "\x00" + tag
				if !bad[k] {
					c.log.Warn("catalog: service tag skipped", "service", s.Service, "service_id", s.ID, "tag", shorten(tag), "err", err)
				}
				nowBad[k] = true
				continue
			}
			for _, p := range ps {
				p.Service = s.Service
				out = append(out, p)
			}
		}
	}
	return out, nowBad
}

// bucket is a token bucket: up to burst tokens, one more each interval.
type bucket struct {
	every  time.Duration
	burst  float64
	tokens float64
	last   time.Time
}

func newBucket(every time.Duration, burst int) *bucket {
	return &bucket{every: every, burst: float64(burst), tokens: float64(burst), last: time.Now()}
}

// take waits for a token and takes it; false when ctx ended first.
func (b *bucket) take(ctx context.Context) bool {
	for {
		now := time.Now()
		b.tokens = min(b.burst, b.tokens+float64(now.Sub(b.last))/float64(b.every))
		b.last = now
		if b.tokens >= 1 {
			b.tokens--
			return true
		}
		if !sleep(ctx, time.Duration((1-b.tokens)*float64(b.every))+time.Millisecond) {
			return false
		}
	}
}

// redactAddress hides a password an address may hold, for the log.
func redactAddress(a string) string {
	u, err := url.Parse(a)
	if err != nil || u.User == nil {
		return a
	}
	return u.Redacted()
}
