package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestStatementTemplates sends a masked analyst's simple-protocol texts
// that share shapes (so that statement templates answer them, and those
// whose constants allow it run as the session's prepared statements) and
// checks every answer against the same texts run directly over masked
// data. It covers quoting, every numeric type, bad input, an aborted
// transaction (the Parse fails and is redone), DISCARD ALL, DEALLOCATE of
// the proxy's own statement, and more shapes than a session keeps
// prepared.
func TestStatementTemplates(t *testing.T) {
	f := advSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var texts []string
	add := func(format string, args ...any) { texts = append(texts, fmt.Sprintf(format, args...)) }
	for round := 0; round < 3; round++ {
		add("SELECT id, name, email, ssn, birth_date, salary FROM customers WHERE id = %d", round+1)
		add("SELECT id, email FROM customers WHERE name = 'it''s %d' OR email LIKE '%%@%%' ORDER BY id LIMIT %d", round, round+2)
		add("SELECT id FROM customers WHERE id IN (%d, %d, 3) ORDER BY id", round+1, round+2)
		add("SELECT id, salary FROM customers WHERE salary > %d.5 ORDER BY id", round*1000)
		add("SELECT id FROM customers WHERE id > %d ORDER BY id LIMIT 2", int64(1)<<40+int64(round)) // int8
		add("SELECT id FROM customers WHERE id < 123456789012345678901234567890%d", round)           // numeric
		add("SELECT id, birth_date FROM customers WHERE birth_date BETWEEN '19%d0-01-01' AND '2030-12-31' ORDER BY id", 5+round)
		add("SELECT id FROM customers WHERE id = 'x%d'", round) // bad input: an error at Bind
		add("SELECT '%d'::int + id AS v FROM customers WHERE id = %d", round, round+1)
		add("SELECT id, 'const %d' AS c FROM customers WHERE id = %d", round, round+1) // not preparable: a bare constant
	}
	// An aborted transaction: the first Parse of a shape fails there.
	add("BEGIN")
	add("SELECT 1/0")
	add("SELECT id FROM customers WHERE id = 77 AND name <> 'fresh shape'")
	add("ROLLBACK")
	add("SELECT id FROM customers WHERE id = 1 AND name <> 'fresh shape'")
	add("SELECT id FROM customers WHERE id = 2 AND name <> 'fresh shape'")
	add("DISCARD ALL")
	add("SELECT id FROM customers WHERE id = 3 AND name <> 'fresh shape'")
	add("DEALLOCATE pgveil_tpl_1")
	add("SELECT id, name, email, ssn, birth_date, salary FROM customers WHERE id = 4")
	// More shapes than a session keeps prepared (256).
	for i := 0; i < 300; i++ {
		for _, id := range []int{1, 2} {
			add("SELECT id AS c%d FROM customers WHERE id = %d", i, id)
		}
	}
	before := f.proxy.srv.Stats().PlanTemplateHits
	run := func(viaProxy bool) string {
		conn, _, err := advConn(ctx, f, viaProxy, advAnalyst, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var b strings.Builder
		for _, q := range texts {
			fmt.Fprintf(&b, "> %s\n%s", q, advTranscript(advExec(ctx, conn, q, "attack"), true))
		}
		return b.String()
	}
	got, want := run(true), run(false)
	if got != want {
		gl, wl := strings.Split(got, "\n"), strings.Split(want, "\n")
		for i := range min(len(gl), len(wl)) {
			if gl[i] != wl[i] {
				t.Fatalf("first difference at line %d:\nthrough the proxy: %s\ndirect, masked:    %s\n(context: %s)", i, gl[i], wl[i], strings.Join(gl[max(0, i-3):i], " | "))
			}
		}
		t.Fatalf("transcripts differ in length: %d vs %d lines", len(gl), len(wl))
	}
	if hits := f.proxy.srv.Stats().PlanTemplateHits - before; hits < 300 {
		t.Fatalf("only %d texts were answered by templates", hits)
	}
}

// TestContextChangeInBatch: in one extended-protocol batch, a statement
// after one that may change search_path is refused (its names would be
// resolved under the old path), unless it resolves no names; the session
// goes on after the Sync.
func TestContextChangeInBatch(t *testing.T) {
	f := advSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, _, err := advConn(ctx, f, true, advAnalyst, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	batch := func(sqls ...string) []string {
		pl := conn.StartPipeline(ctx)
		for _, q := range sqls {
			pl.SendQueryParams(q, nil, nil, nil, nil)
		}
		pl.SendPipelineSync()
		if err := pl.Flush(); err != nil {
			t.Fatal(err)
		}
		var out []string
		for {
			res, err := pl.GetResults()
			if err != nil {
				out = append(out, serverCode(err)+" "+err.Error())
				continue
			}
			if rr, ok := res.(*pgconn.ResultReader); ok {
				r := rr.Read()
				if r.Err != nil {
					out = append(out, serverCode(r.Err)+" "+r.Err.Error())
				} else {
					out = append(out, r.CommandTag.String())
				}
				continue
			}
			if _, ok := res.(*pgconn.PipelineSync); ok {
				break
			}
		}
		if err := pl.Close(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	got := batch("SET search_path = shadow, public", "SELECT ssn FROM customers")
	if len(got) < 2 || got[0] != "SET" || !strings.HasPrefix(got[1], "42501 ") || !strings.Contains(got[1], "followed by Sync") {
		t.Fatalf("SET then SELECT in one batch: %q", got)
	}
	got = batch("BEGIN", "SET LOCAL search_path = shadow, public", "SHOW search_path", "COMMIT")
	if strings.Join(got, "|") != "BEGIN|SET|SHOW|COMMIT" {
		t.Fatalf("name-free statements after SET in one batch: %q", got)
	}
	got = batch("SELECT count(*) FROM customers")
	if len(got) != 1 || got[0] != "SELECT 1" {
		t.Fatalf("the next batch: %q", got)
	}
}
