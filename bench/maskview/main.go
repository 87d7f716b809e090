// Command maskview prints a CREATE VIEW statement whose query is exactly the
// masking sub-query pgveil substitutes for a table, for a given role. The
// masked benchmark compares pgveil against this view read directly, so
// both sides compute the same masks.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgveil/pgveil/catalog"
	"github.com/pgveil/pgveil/rewrite"
	"github.com/pgveil/pgveil/rules"
)

func main() {
	url := flag.String("upstream", "", "database URL (an account that can read the catalog)")
	policyFile := flag.String("policy", "", "policy file")
	role := flag.String("role", "", "role whose masking the view reproduces")
	table := flag.String("table", "", "schema.table to mask")
	view := flag.String("view", "", "schema.view to create")
	flag.Parse()
	if err := run(*url, *policyFile, *role, *table, *view); err != nil {
		fmt.Fprintln(os.Stderr, "maskview:", err)
		os.Exit(1)
	}
}

func run(url, policyFile, role, table, view string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pol, err := rules.Load(policyFile)
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	snap, err := catalog.Load(ctx, conn)
	if err != nil {
		return err
	}
	grants, err := pol.Grants(snap.RolesOf(role))
	if err != nil {
		return err
	}
	s := &rewrite.Session{Policy: pol, Grants: grants, Catalog: snap, SearchPath: []string{"public"}, User: role}
	plan, err := rewrite.Rewrite("SELECT * FROM "+table, s)
	if err != nil {
		return err
	}
	if !strings.Contains(plan.SQL, "(SELECT") {
		return fmt.Errorf("%s needs no masking for %s", table, role)
	}
	fmt.Printf("CREATE VIEW %s AS %s;\n", view, plan.SQL)
	return nil
}
