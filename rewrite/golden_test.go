package rewrite

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgveil/pgveil/catalog"
	"github.com/pgveil/pgveil/internal/pgcluster"
	"github.com/pgveil/pgveil/rules"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/cases")

// fixture is the database, catalog snapshot and policy the golden cases
// share.
type fixture struct {
	pg     *pgcluster.Cluster
	conn   *pgx.Conn
	snap   *catalog.Snapshot
	policy *rules.Policy
}

var fx *fixture

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if _, err := pgcluster.FindBinDir(""); err != nil {
		if os.Getenv("PGVEIL_REQUIRE_ALL") == "1" {
			fmt.Fprintln(os.Stderr, "rewrite tests need PostgreSQL:", err)
			return 1
		}
		fmt.Fprintln(os.Stderr, "rewrite: PostgreSQL not installed; golden tests skipped")
		return m.Run()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := pgcluster.Start(ctx, pgcluster.Config{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer pg.Stop()
	schema, err := os.ReadFile("testdata/schema.sql")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, err := pg.Psql(ctx, string(schema)); err != nil {
		fmt.Fprintln(os.Stderr, "schema:", err)
		return 1
	}
	cfg, err := pgx.ParseConfig(pg.URL("postgres", "", "postgres"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// Simple protocol only: the cases PREPARE and DEALLOCATE statements of
	// their own.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer conn.Close(context.Background())
	snap, err := catalog.Load(ctx, conn)
	if err != nil {
		fmt.Fprintln(os.Stderr, "catalog:", err)
		return 1
	}
	policy, err := rules.Load("testdata/policy.yaml")
	if err != nil {
		fmt.Fprintln(os.Stderr, "policy:", err)
		return 1
	}
	fx = &fixture{pg: pg, conn: conn, snap: snap, policy: policy}
	return m.Run()
}

// caseHeader holds the "-- key: value" lines at the top of input.sql.
type caseHeader struct {
	roles      []string
	searchPath []string
	serverErr  bool // the rewritten SQL is expected to fail on the server
}

func parseHeader(sql string) caseHeader {
	h := caseHeader{roles: []string{"analyst"}, searchPath: []string{"$user", "public"}}
	for _, line := range strings.Split(sql, "\n") {
		k, v, ok := strings.Cut(strings.TrimPrefix(line, "-- "), ":")
		if !strings.HasPrefix(line, "-- ") || !ok {
			break
		}
		var list []string
		for _, f := range strings.Split(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				list = append(list, f)
			}
		}
		switch strings.TrimSpace(k) {
		case "roles":
			h.roles = list
		case "search_path":
			h.searchPath = list
		case "server":
			h.serverErr = strings.TrimSpace(v) == "error"
		}
	}
	return h
}

// session builds the rewrite session a case runs in.
func session(t testing.TB, h caseHeader) *Session {
	g, err := fx.policy.Grants(h.roles)
	if err != nil {
		t.Fatal(err)
	}
	return &Session{Policy: fx.policy, Grants: g, Catalog: fx.snap, SearchPath: h.searchPath, User: h.roles[0]}
}

// outcome renders a rewrite result as the golden file holds it.
func outcome(plan *Plan, err error) string {
	if err != nil {
		switch e := err.(type) {
		case *Refusal:
			return fmt.Sprintf("refused [%s]: %s\n", e.Rule, e.Message)
		case *SyntaxError:
			return "syntax error: " + e.Message + "\n"
		}
		return "error: " + err.Error() + "\n"
	}
	return plan.SQL + "\n"
}

func TestGolden(t *testing.T) {
	if fx == nil {
		t.Skip("PostgreSQL not installed")
	}
	dirs, err := filepath.Glob("testdata/cases/*")
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) < 10 {
		t.Fatalf("only %d golden cases", len(dirs))
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			input, err := os.ReadFile(filepath.Join(dir, "input.sql"))
			if err != nil {
				t.Fatal(err)
			}
			h := parseHeader(string(input))
			plan, rerr := Rewrite(string(input), session(t, h))
			got := outcome(plan, rerr)
			golden := filepath.Join(dir, "expected.txt")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./rewrite -update)", err)
			}
			if got != string(want) {
				t.Fatalf("got:\n%s\nwant:\n%s", got, want)
			}
			if rerr != nil {
				return
			}
			// Every output re-parses and, run on the real server, works
			// (unless the case says the server rejects it).
			if _, err := pg_query.Parse(plan.SQL); err != nil {
				t.Fatalf("output does not re-parse: %v", err)
			}
			// COPY needs a data stream the check cannot provide.
			if plan.Rewritten && !strings.Contains(plan.SQL, "COPY ") {
				checkOnServer(t, h, plan.SQL)
			}
		})
	}
}

// checkOnServer runs sql in a rolled-back transaction on the fixture
// database with the case's search_path.
func checkOnServer(t *testing.T, h caseHeader, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tx, err := fx.conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = tx.Rollback(ctx)
		_, _ = fx.conn.Exec(ctx, "DEALLOCATE ALL")
		_, _ = fx.conn.Exec(ctx, "CLOSE ALL")
	}()
	var path []string
	for _, s := range h.searchPath {
		path = append(path, `"`+s+`"`)
	}
	if _, err := tx.Exec(ctx, "SET LOCAL search_path = "+strings.Join(path, ", ")); err != nil {
		t.Fatal(err)
	}
	_, err = tx.Exec(ctx, sql)
	if (err != nil) != h.serverErr {
		t.Fatalf("on the server: %v (expected error: %v)", err, h.serverErr)
	}
}
