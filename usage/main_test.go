package usage

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgveil/pgveil/internal/pgcluster"
)

// shared is the package's PostgreSQL, started by the first test that needs
// it and stopped by TestMain.
var shared struct {
	once sync.Once
	pg   *pgcluster.Cluster
	err  error
	dbs  atomic.Int64
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.pg != nil {
		if err := shared.pg.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop PostgreSQL:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// requirePostgres skips the test when PostgreSQL is not installed, or
// fails it when PGVEIL_REQUIRE_ALL=1.
func requirePostgres(t *testing.T) {
	t.Helper()
	if _, err := pgcluster.FindBinDir(""); err != nil {
		if os.Getenv("PGVEIL_REQUIRE_ALL") == "1" {
			t.Fatalf("PostgreSQL is required: %v", err)
		}
		t.Skipf("PostgreSQL not installed: %v", err)
	}
}

// testDatabase creates a fresh database in the shared cluster and returns
// its URL.
func testDatabase(t *testing.T) string {
	t.Helper()
	requirePostgres(t)
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		shared.pg, shared.err = pgcluster.Start(ctx, pgcluster.Config{})
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	name := fmt.Sprintf("usage_%d", shared.dbs.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := shared.pg.Psql(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	return shared.pg.URL(pgcluster.Superuser, "", name)
}

// ownCluster starts a PostgreSQL for one test that stops and restarts it.
func ownCluster(t *testing.T) *pgcluster.Cluster {
	t.Helper()
	requirePostgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := pgcluster.Start(ctx, pgcluster.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pg.Stop(); err != nil {
			t.Error(err)
		}
	})
	return pg
}
