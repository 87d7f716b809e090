package catalog

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/pgveil/pgveil/internal/pgcluster"
)

// Size of the synthetic schema TestLoadLarge and BenchmarkLoad read.
const (
	largeTables = 5000
	largeViews  = 500
)

// largeDB creates, once per test binary, a database in the shared cluster
// holding largeTables tables of seven columns each (with a primary key and
// a TOAST table), largeViews views over pairs of them and a partitioned
// table with 100 partitions.
var largeDB = struct {
	once sync.Once
	name string
	took time.Duration
}{name: "large"}

func createLargeDB(tb testing.TB) (*pgcluster.Cluster, string) {
	tb.Helper()
	c := sharedCluster(tb)
	largeDB.once.Do(func() {
		start := time.Now()
		psql(tb, c, "postgres", "DROP DATABASE IF EXISTS large; CREATE DATABASE large;")
		// COMMIT inside the loop keeps each transaction's lock count below
		// the shared lock table's size.
		psql(tb, c, largeDB.name, fmt.Sprintf(`
CREATE SCHEMA big;
CREATE DOMAIN big.amount AS numeric(12,2);
DO $$
BEGIN
    FOR i IN 1..%[1]d LOOP
        EXECUTE format('CREATE TABLE big.t%%s (id bigint PRIMARY KEY, name varchar(40) NOT NULL,
            email text, amount big.amount, created timestamptz, tags text[], note text)', i);
        IF i %% 500 = 0 THEN COMMIT; END IF;
    END LOOP;
    FOR i IN 1..%[2]d LOOP
        EXECUTE format('CREATE VIEW big.v%%s AS SELECT a.id, a.email, b.amount
            FROM big.t%%s a JOIN big.t%%s b USING (id)', i, i, i + 1);
    END LOOP;
    CREATE TABLE big.parts (id int, k int) PARTITION BY LIST (k);
    FOR i IN 1..100 LOOP
        EXECUTE format('CREATE TABLE big.parts_%%s PARTITION OF big.parts FOR VALUES IN (%%s)', i, i);
    END LOOP;
END $$;
`, largeTables, largeViews))
		largeDB.took = time.Since(start)
	})
	return c, largeDB.name
}

// TestLoadLarge loads the synthetic schema, checks it and logs how long
// the load took.
func TestLoadLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("creates 5,000 tables")
	}
	c, db := createLargeDB(t)
	t.Logf("created %d tables and %d views in %v", largeTables, largeViews, largeDB.took.Round(time.Millisecond))
	conn := connect(t, c, db)
	ctx := context.Background()

	var best time.Duration
	var s *Snapshot
	for i := range 3 {
		start := time.Now()
		var err error
		if s, err = Load(ctx, conn); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); i == 0 || d < best {
			best = d
		}
	}
	var columns int
	for _, r := range s.Relations() {
		columns += len(r.Columns)
	}
	t.Logf("Load of %d relations, %d columns, %d schemas: best of 3 %v (%d queries)",
		len(s.Relations()), columns, len(s.Schemas()), best.Round(time.Millisecond), QueryCount)

	tables := 0
	for _, r := range s.Relations() {
		if r.Name.Schema == "big" && r.Kind == KindTable {
			tables++
		}
	}
	if want := largeTables + 100; tables != want {
		t.Errorf("loaded %d tables in big, want %d", tables, want)
	}
	r := s.Resolve(SearchPath{Schemas: []string{"big"}}, fmt.Sprintf("t%d", largeTables))
	if r == nil || len(r.Columns) != 7 || r.Columns[3].BaseType != "numeric(12,2)" {
		t.Fatalf("big.t%d = %+v", largeTables, r)
	}
	if got, want := s.Dependents(Name{"big", "t2"}), []Name{{"big", "v1"}, {"big", "v2"}}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Dependents(big.t2) = %v, want %v", got, want)
	}
	if got := len(s.Partitions(Name{"big", "parts"})); got != 100 {
		t.Errorf("big.parts has %d partitions, want 100", got)
	}
}

// BenchmarkLoad measures Load on the synthetic schema of TestLoadLarge.
func BenchmarkLoad(b *testing.B) {
	c, db := createLargeDB(b)
	conn := connect(b, c, db)
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		if _, err := Load(ctx, conn); err != nil {
			b.Fatal(err)
		}
	}
}
