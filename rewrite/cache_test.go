package rewrite

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
)

func TestCacheHitsAndRefusals(t *testing.T) {
	if fx == nil {
		t.Skip("PostgreSQL not installed")
	}
	c := NewCache(2)
	s := session(t, caseHeader{roles: []string{"analyst"}, searchPath: []string{"$user", "public"}})
	p1, err := c.Rewrite("SELECT email FROM customers", s)
	if err != nil || !p1.Rewritten {
		t.Fatal(p1, err)
	}
	p2, _ := c.Rewrite("SELECT email FROM customers", s)
	if p1 != p2 {
		t.Fatal("second lookup did not hit the cache")
	}
	if _, err := c.Rewrite("DROP TABLE customers", s); err == nil {
		t.Fatal("refusal not returned")
	}
	if _, err := c.Rewrite("DROP TABLE customers", s); err == nil {
		t.Fatal("cached refusal not returned")
	}
	// A different search path is a different key.
	s2 := session(t, caseHeader{roles: []string{"analyst"}, searchPath: []string{"crm"}})
	p3, _ := c.Rewrite("SELECT email FROM customers", s2)
	if p3 == p1 {
		t.Fatal("search path ignored by the cache key")
	}
	// The LRU holds two entries: the oldest is gone.
	p4, _ := c.Rewrite("SELECT email FROM customers", s)
	if p4 == p1 {
		t.Fatal("evicted entry still returned")
	}
	if h, m := c.Stats(); h != 2 || m != 4 {
		t.Fatalf("hits %d misses %d", h, m)
	}
}

// TestCacheMemoryBounds: a text longer than MaxCachedText is analysed
// every time and not kept, and the plans together stay within
// maxCacheBytes, the least recently used going first.
func TestCacheMemoryBounds(t *testing.T) {
	if fx == nil {
		t.Skip("PostgreSQL not installed")
	}
	c := NewCache(0)
	s := session(t, caseHeader{roles: []string{"analyst"}, searchPath: []string{"$user", "public"}})
	big := "SELECT email FROM customers /* " + strings.Repeat("x", MaxCachedText) + " */"
	p1, err := c.Rewrite(big, s)
	if err != nil || !p1.Rewritten {
		t.Fatal(p1, err)
	}
	if p2, _ := c.Rewrite(big, s); p2 == p1 {
		t.Fatal("a text over MaxCachedText was cached")
	}
	if plans, _, bytes := c.Size(); plans != 0 || bytes != 0 {
		t.Fatalf("%d plans, %d bytes cached", plans, bytes)
	}
	pad := strings.Repeat("x", 60<<10)
	text := func(i int) string { return fmt.Sprintf("SELECT email FROM customers /* %d %s */", i, pad) }
	const n = 600 // about 74 MB by planSize
	for i := range n {
		if _, err := c.Rewrite(text(i), s); err != nil {
			t.Fatal(err)
		}
	}
	plans, _, bytes := c.Size()
	if bytes > maxCacheBytes || plans >= n || plans < n/2 {
		t.Fatalf("%d plans of %d kept, %d bytes (bound %d)", plans, n, bytes, maxCacheBytes)
	}
	h0, _ := c.Stats()
	c.Rewrite(text(n-1), s) // the most recent is kept
	c.Rewrite(text(0), s)   // the oldest is not
	if h, _ := c.Stats(); h != h0+1 {
		t.Fatalf("hits %d after %d: want the newest text only", h, h0)
	}
}

// BenchmarkCacheHit measures a plan-cache hit: no parse.
func BenchmarkCacheHit(b *testing.B) {
	if fx == nil {
		b.Skip("PostgreSQL not installed")
	}
	c := NewCache(0)
	s := session(b, caseHeader{roles: []string{"analyst"}, searchPath: []string{"$user", "public"}})
	const q = "SELECT id, email, ssn FROM customers WHERE id = $1"
	if _, err := c.Rewrite(q, s); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Rewrite(q, s); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRewriteMiss measures a full analysis: parse, substitute, deparse.
func BenchmarkRewriteMiss(b *testing.B) {
	if fx == nil {
		b.Skip("PostgreSQL not installed")
	}
	s := session(b, caseHeader{roles: []string{"analyst"}, searchPath: []string{"$user", "public"}})
	const q = "SELECT id, email, ssn FROM customers WHERE id = $1"
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Rewrite(q, s); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCacheMissDistinctLiterals measures texts that differ in a
// literal every time (simple protocol with inlined values): each is
// analysed, but the masking sub-query comes from the projection cache.
func BenchmarkCacheMissDistinctLiterals(b *testing.B) {
	if fx == nil {
		b.Skip("PostgreSQL not installed")
	}
	c := NewCache(0)
	s := session(b, caseHeader{roles: []string{"analyst"}, searchPath: []string{"$user", "public"}})
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if _, err := c.Rewrite("SELECT id, email, ssn FROM customers WHERE id = "+strconv.Itoa(i), s); err != nil {
			b.Fatal(err)
		}
	}
}
