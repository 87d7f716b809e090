package catalog

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgveil/pgveil/internal/pgcluster"
)

// shared is the cluster the read-only tests share; each creates its own
// database in it (roles are cluster-wide, so tests prefix theirs).
var shared struct {
	once    sync.Once
	cluster *pgcluster.Cluster
	err     error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.cluster != nil {
		if err := shared.cluster.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop shared cluster:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// requirePostgres skips tb when the PostgreSQL programs are not installed,
// the only reason these tests may skip.
func requirePostgres(tb testing.TB) {
	tb.Helper()
	if _, err := pgcluster.FindBinDir(""); err != nil {
		tb.Skip(err)
	}
}

// sharedCluster returns the shared cluster, starting it on first use.
func sharedCluster(tb testing.TB) *pgcluster.Cluster {
	tb.Helper()
	requirePostgres(tb)
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		shared.cluster, shared.err = pgcluster.Start(ctx, pgcluster.Config{})
	})
	if shared.err != nil {
		tb.Fatal(shared.err)
	}
	return shared.cluster
}

// startCluster starts a cluster of tb's own, stopped when tb ends.
func startCluster(tb testing.TB) *pgcluster.Cluster {
	tb.Helper()
	requirePostgres(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgcluster.Start(ctx, pgcluster.Config{Logf: tb.Logf})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := c.Stop(); err != nil {
			tb.Error(err)
		}
	})
	return c
}

var nonIdent = regexp.MustCompile(`[^a-z0-9_]+`)

// createDB creates a fresh database named after tb in c and returns its
// name.
func createDB(tb testing.TB, c *pgcluster.Cluster) string {
	tb.Helper()
	name := "db_" + nonIdent.ReplaceAllString(strings.ToLower(tb.Name()), "_")
	psql(tb, c, "postgres", fmt.Sprintf("DROP DATABASE IF EXISTS %s; CREATE DATABASE %s;", name, name))
	return name
}

// psql runs sql in database db of c and fails tb on error.
func psql(tb testing.TB, c *pgcluster.Cluster, db, sql string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := c.PsqlDB(ctx, db, sql)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// connect opens a pgx connection as the superuser to db, closed when tb
// ends.
func connect(tb testing.TB, c *pgcluster.Cluster, db string) *pgx.Conn {
	tb.Helper()
	return connectConfig(tb, c, db, nil)
}

// connectConfig is connect with a hook to adjust the configuration.
func connectConfig(tb testing.TB, c *pgcluster.Cluster, db string, adjust func(*pgx.ConnConfig)) *pgx.Conn {
	tb.Helper()
	cfg, err := pgx.ParseConfig(c.URL(pgcluster.Superuser, "", db))
	if err != nil {
		tb.Fatal(err)
	}
	if adjust != nil {
		adjust(cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// load loads a snapshot of db in c.
func load(tb testing.TB, c *pgcluster.Cluster, db string) *Snapshot {
	tb.Helper()
	conn := connect(tb, c, db)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Load(ctx, conn)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// queryOID returns the uint32 result of a one-value query in db.
func queryOID(tb testing.TB, conn *pgx.Conn, sql string, args ...any) uint32 {
	tb.Helper()
	var oid uint32
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&oid); err != nil {
		tb.Fatalf("%s: %v", sql, err)
	}
	return oid
}
