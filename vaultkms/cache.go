package vaultkms

import (
	"container/list"
	"sync"
	"time"
)

// keyCache is a size-bounded LRU of unwrapped data keys whose entries also
// expire after a TTL. It is safe for concurrent use.
type keyCache[V any] struct {
	mu    sync.Mutex
	size  int
	ttl   time.Duration
	now   func() time.Time
	order *list.List // front = most recently used
	items map[string]*list.Element
}

type cacheEntry[V any] struct {
	key     string
	value   V
	expires time.Time
}

func newKeyCache[V any](size int, ttl time.Duration, now func() time.Time) *keyCache[V] {
	return &keyCache[V]{size: size, ttl: ttl, now: now, order: list.New(), items: make(map[string]*list.Element)}
}

// get returns the live entry for key, refreshing its recency.
func (c *keyCache[V]) get(key string) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var zero V
	el, ok := c.items[key]
	if !ok {
		return zero, false
	}
	e := el.Value.(*cacheEntry[V])
	if !c.now().Before(e.expires) {
		c.order.Remove(el)
		delete(c.items, key)
		return zero, false
	}
	c.order.MoveToFront(el)
	return e.value, true
}

// put stores value under key, evicting the least recently used entries
// beyond the size bound.
func (c *keyCache[V]) put(key string, value V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	exp := c.now().Add(c.ttl)
	if el, ok := c.items[key]; ok {
		e := el.Value.(*cacheEntry[V])
		e.value, e.expires = value, exp
		c.order.MoveToFront(el)
		return
	}
	c.items[key] = c.order.PushFront(&cacheEntry[V]{key: key, value: value, expires: exp})
	for c.order.Len() > c.size {
		el := c.order.Back()
		c.order.Remove(el)
		delete(c.items, el.Value.(*cacheEntry[V]).key)
	}
}

// len returns the number of entries, expired ones included.
func (c *keyCache[V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

// clear drops every entry.
func (c *keyCache[V]) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.order.Init()
	clear(c.items)
}
