package jwt

import (
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// DefaultReplayCacheSize is how many tokens a ReplayCache remembers by
// default.
const DefaultReplayCacheSize = 100_000

// ReplayCache remembers the jti of the tokens taken until they expire: a
// token with a jti presented again before then is a replay. When full, it
// forgets the least recently taken first, so a replay is caught as long
// as its token is among the last size tokens taken.
//
// Share one between the Authenticators that replace each other when the
// gateway reloads its configuration, so that a reload does not forget the
// tokens already used. It is safe for concurrent use.
type ReplayCache struct {
	mu  sync.Mutex
	lru *simplelru.LRU[string, time.Time] // key -> the token's expiry, with leeway
}

// NewReplayCache makes a cache of size tokens (at least 1).
func NewReplayCache(size int) *ReplayCache {
	// NewLRU fails only for a size below 1.
	l, _ := simplelru.NewLRU[string, time.Time](max(size, 1), nil)
	return &ReplayCache{lru: l}
}

// add records key as taken until exp, unless it was taken before and has
// not expired: then it reports false.
func (c *ReplayCache) add(key string, exp time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if until, ok := c.lru.Peek(key); ok && time.Now().Before(until) {
		return false
	}
	c.lru.Add(key, exp)
	return true
}
