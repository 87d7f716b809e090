package rewrite

import (
	"container/list"
	"strings"
	"sync"
)

// CacheKey identifies the inputs of a plan: two rewrites with equal keys
// produce equal plans.
type CacheKey struct {
	// Policy is rules.Policy.Hash; Grants is rules.Grants.Key.
	Policy, Grants string
	// Catalog is catalog.Snapshot.Version.
	Catalog uint64
	// Path is the session's search path with "$user" expanded, joined.
	Path string
	// SQL is the client's text.
	SQL string
	// Track is Session.Track for sessions that see everything raw (for
	// masked sessions, which are always analysed, it is false).
	Track bool
	// SkipEncrypt is Session.SkipEncrypt.
	SkipEncrypt bool
}

// KeyFor returns the cache key for sql in session s.
func KeyFor(s *Session, sql string) CacheKey {
	if !s.pathKeySet {
		w := walker{s: s}
		s.pathKey, s.pathKeySet = strings.Join(w.searchPath(), "\x00"), true
	}
	return CacheKey{
		Policy:      s.Policy.Hash,
		Grants:      s.Grants.Key(),
		Catalog:     s.Catalog.Version,
		Path:        s.pathKey,
		SQL:         sql,
		Track:       s.Track && s.Grants.AllRaw(),
		SkipEncrypt: s.SkipEncrypt,
	}
}

// Cache is a bounded LRU of plans and refusals, safe for concurrent use.
// Each distinct text is analysed once per (policy, grants, catalog, search
// path).
type Cache struct {
	proj  projectionCache
	mu    sync.Mutex
	max   int
	ll    *list.List
	items map[CacheKey]*list.Element
	hits  uint64
	miss  uint64
	// shapes holds statement templates by shape (template.go).
	shapes    map[CacheKey]*template
	shapeHits uint64
	// bytes and shapeBytes are what items and shapes hold, estimated
	// (planSize, templateSize).
	bytes, shapeBytes int
}

type cacheEntry struct {
	key  CacheKey
	plan *Plan
	err  error
	size int
}

// Memory bounds of a Cache: a text longer than MaxCachedText (a bulk
// statement) is analysed each time it runs and kept nowhere, and the plans
// and the templates each hold at most about maxCacheBytes (least recently
// used plans go first; the templates are dropped all together), so that
// distinct large texts cannot fill the proxy's memory.
const (
	MaxCachedText = 64 << 10
	maxCacheBytes = 64 << 20
)

// planSize estimates what a cached plan of sql holds: the text, the text
// sent in its place, and the analysis (taken to be as large as the text).
func planSize(sql string, plan *Plan) int {
	n := 2 * len(sql)
	if plan != nil && plan.Rewritten {
		n += len(plan.SQL)
	}
	return n
}

// NewCache returns a cache holding up to max plans (zero means 10,000).
func NewCache(max int) *Cache {
	if max <= 0 {
		max = 10000
	}
	return &Cache{max: max, ll: list.New(), items: make(map[CacheKey]*list.Element), shapes: map[CacheKey]*template{}, proj: projectionCache{m: map[projKey]projection{}}}
}

// Rewrite returns the cached outcome for sql in s, analysing it on a miss.
// Refusals are cached too; other errors are not.
func (c *Cache) Rewrite(sql string, s *Session) (*Plan, error) {
	if s == nil || s.Policy == nil || s.Grants == nil || s.Catalog == nil {
		return nil, ErrNoSession
	}
	key := KeyFor(s, sql)
	c.mu.Lock()
	if el, ok := c.items[key]; ok {
		c.ll.MoveToFront(el)
		c.hits++
		e := el.Value.(*cacheEntry)
		c.mu.Unlock()
		return e.plan, e.err
	}
	c.miss++
	c.mu.Unlock()
	withProj := *s
	withProj.projections = &c.proj
	plan, err := Rewrite(sql, &withProj)
	switch err.(type) {
	case nil, *Refusal, *SyntaxError:
	default:
		return plan, err
	}
	if len(sql) > MaxCachedText {
		return plan, err
	}
	size := planSize(sql, plan)
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.items[key]; !ok {
		c.items[key] = c.ll.PushFront(&cacheEntry{key: key, plan: plan, err: err, size: size})
		c.bytes += size
		for c.ll.Len() > c.max || c.bytes > maxCacheBytes {
			last := c.ll.Back()
			e := last.Value.(*cacheEntry)
			c.ll.Remove(last)
			delete(c.items, e.key)
			c.bytes -= e.size
		}
	}
	return plan, err
}

// Size returns the number of cached plans and templates, and what they
// hold in bytes (estimated).
func (c *Cache) Size() (plans, templates, bytes int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len(), len(c.shapes), c.bytes + c.shapeBytes
}

// Stats returns the number of hits and misses so far.
func (c *Cache) Stats() (hits, misses uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits, c.miss
}

// projKey identifies a masking sub-query.
type projKey struct {
	policy, grants string
	catalog        uint64
	oid            uint32
	inh            bool
}

type projection struct {
	sql    string
	denied []string
	err    error
}

// projectionCache holds masking sub-query texts. It is small (one entry
// per protected relation and grant set) and is cleared when it grows past
// a bound, e.g. after many catalog versions.
type projectionCache struct {
	mu sync.Mutex
	m  map[projKey]projection
}

func (p *projectionCache) get(k projKey) (projection, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v, ok := p.m[k]
	return v, ok
}

func (p *projectionCache) put(k projKey, v projection) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.m) > 4096 {
		p.m = map[projKey]projection{}
	}
	p.m[k] = v
}
