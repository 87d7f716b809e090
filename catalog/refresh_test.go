package catalog

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgveil/pgveil/internal/pgcluster"
)

func TestNewConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		err  string
	}{
		{"missing connection string", Config{}, "missing connection string"},
		{"bad connection string", Config{ConnString: "postgres://%zz"}, "connection string"},
		{"negative interval", Config{ConnString: "host=x", RefreshInterval: -time.Second}, "negative refresh interval"},
		{"negative delay", Config{ConnString: "host=x", InvalidateDelay: -1}, "negative invalidate delay"},
	} {
		if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: New = %v, want an error containing %q", tc.name, err, tc.err)
		}
	}
	c, err := New(Config{ConnString: "host=x"})
	if err != nil {
		t.Fatal(err)
	}
	if c.cfg.RefreshInterval != DefaultRefreshInterval || c.cfg.ConnectTimeout != DefaultConnectTimeout ||
		c.cfg.LoadTimeout != DefaultLoadTimeout || c.cfg.InvalidateDelay != DefaultInvalidateDelay {
		t.Errorf("defaults not applied: %+v", c.cfg)
	}
	if c.Current() != nil {
		t.Error("Current() before any load is not nil")
	}
}

// TestRefresh covers Refresh: versions, new tables, a failing refresh that
// keeps the old snapshot, and recovery. It stops its own cluster's server.
func TestRefresh(t *testing.T) {
	pg := startCluster(t)
	ctx := context.Background()
	cat, err := New(Config{ConnString: pg.URL(pgcluster.Superuser, "", "postgres"), ConnectTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}

	// Readers run throughout, as the proxy's sessions would.
	stop := make(chan struct{})
	var readers sync.WaitGroup
	var lastSeen atomic.Uint64
	for range 4 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if s := cat.Current(); s != nil {
					if s.Relation(Name{"pg_catalog", "pg_class"}) == nil {
						t.Error("a current snapshot lacks pg_class")
						return
					}
					lastSeen.Store(s.Version)
				}
				time.Sleep(100 * time.Microsecond)
			}
		}()
	}
	defer func() {
		close(stop)
		readers.Wait()
	}()

	s1, err := cat.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s1.Version != 1 || cat.Current() != s1 || s1.Database != "postgres" {
		t.Fatalf("first refresh: Version %d, Database %q, current %p, returned %p", s1.Version, s1.Database, cat.Current(), s1)
	}
	if s1.Relation(Name{"public", "later"}) != nil {
		t.Fatal("public.later exists before it was created")
	}

	psql(t, pg, "postgres", "CREATE TABLE public.later (id int, secret text)")
	s2, err := cat.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s2.Version != 2 || cat.Current() != s2 {
		t.Fatalf("second refresh: Version %d", s2.Version)
	}
	if r := s2.Relation(Name{"public", "later"}); r == nil || len(r.Columns) != 2 {
		t.Errorf("public.later after refresh = %+v", r)
	}
	if s1.Relation(Name{"public", "later"}) != nil {
		t.Error("the old snapshot changed")
	}

	if err := pg.StopServer(); err != nil {
		t.Fatal(err)
	}
	if s, err := cat.Refresh(ctx); err == nil {
		t.Fatalf("refresh with the server stopped succeeded: version %d", s.Version)
	} else if !strings.HasPrefix(err.Error(), "catalog: connect:") {
		t.Errorf("refresh error = %v, want a connect error", err)
	}
	if cat.Current() != s2 {
		t.Errorf("after a failed refresh Current() is version %d, want 2", cat.Current().Version)
	}

	if err := pg.StartAgain(ctx); err != nil {
		t.Fatal(err)
	}
	s3, err := cat.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s3.Version != 3 || cat.Current() != s3 || s3.Relation(Name{"public", "later"}) == nil {
		t.Errorf("refresh after restart: Version %d", s3.Version)
	}

	// A cancelled context fails the refresh and keeps the snapshot.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := cat.Refresh(cctx); !errors.Is(err, context.Canceled) {
		t.Errorf("refresh with a cancelled context = %v", err)
	}
	if cat.Current() != s3 {
		t.Error("a cancelled refresh replaced the snapshot")
	}

	// Concurrent refreshes each get their own version.
	var wg sync.WaitGroup
	versions := make(chan uint64, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := cat.Refresh(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			versions <- s.Version
		}()
	}
	wg.Wait()
	close(versions)
	seen := map[uint64]bool{}
	for v := range versions {
		seen[v] = true
	}
	if len(seen) != 4 || cat.Current().Version != 7 {
		t.Errorf("concurrent refreshes: versions %v, current %d, want 4..7 and 7", seen, cat.Current().Version)
	}
	if lastSeen.Load() == 0 {
		t.Error("the readers never saw a snapshot")
	}
}

// waitFor polls cond every 10ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRunInvalidate covers Run: the first load, a burst of Invalidate calls
// causing exactly one reload, periodic refreshes, and errors while the
// server is down followed by recovery.
func TestRunInvalidate(t *testing.T) {
	pg := startCluster(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	const delay = 150 * time.Millisecond
	cat, err := New(Config{
		ConnString:      pg.URL(pgcluster.Superuser, "", "postgres"),
		RefreshInterval: time.Hour,
		InvalidateDelay: delay,
		ConnectTimeout:  2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	var errMu sync.Mutex
	var runErrs []error
	done := make(chan struct{})
	go func() {
		defer close(done)
		cat.Run(ctx, func(err error) {
			errMu.Lock()
			defer errMu.Unlock()
			runErrs = append(runErrs, err)
		})
	}()
	version := func() uint64 {
		if s := cat.Current(); s != nil {
			return s.Version
		}
		return 0
	}
	errCount := func() int {
		errMu.Lock()
		defer errMu.Unlock()
		return len(runErrs)
	}

	waitFor(t, 30*time.Second, "the first load", func() bool { return version() == 1 })

	// A second Run is refused.
	var second error
	cat.Run(ctx, func(err error) { second = err })
	if second == nil {
		t.Error("a second concurrent Run did not report an error")
	}

	psql(t, pg, "postgres", "CREATE TABLE public.ddl_seen (id int)")
	for range 50 {
		cat.Invalidate()
	}
	waitFor(t, 30*time.Second, "the reload after Invalidate", func() bool { return version() == 2 })
	if cat.Current().Relation(Name{"public", "ddl_seen"}) == nil {
		t.Error("the reload after Invalidate lacks the new table")
	}
	time.Sleep(4 * delay)
	if v := version(); v != 2 {
		t.Errorf("a burst of 50 Invalidate calls caused %d reloads, want 1", v-1)
	}

	// Invalidate while the server is down: the refresh fails, Run reports
	// it and retries (after 1s) until the server is back.
	if err := pg.StopServer(); err != nil {
		t.Fatal(err)
	}
	cat.Invalidate()
	waitFor(t, 30*time.Second, "a reported error", func() bool { return errCount() > 0 })
	if v := version(); v != 2 {
		t.Errorf("version %d after failed refreshes, want 2", v)
	}
	if err := pg.StartAgain(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "recovery", func() bool { return version() == 3 })

	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	errMu.Lock()
	for _, err := range runErrs {
		if !strings.HasPrefix(err.Error(), "catalog: connect:") {
			t.Errorf("Run reported %v, want connect errors only", err)
		}
	}
	errMu.Unlock()
}

// TestRunPeriodic checks that Run refreshes every RefreshInterval.
func TestRunPeriodic(t *testing.T) {
	pg := sharedCluster(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cat, err := New(Config{ConnString: pg.URL(pgcluster.Superuser, "", "postgres"), RefreshInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cat.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		cat.Run(ctx, func(err error) { t.Error(err) })
	}()
	start := time.Now()
	waitFor(t, 30*time.Second, "three periodic refreshes", func() bool { return cat.Current().Version >= 4 })
	if elapsed := time.Since(start); elapsed < 250*time.Millisecond {
		t.Errorf("three refreshes 100ms apart took only %v", elapsed)
	}
	cancel()
	<-done
}
