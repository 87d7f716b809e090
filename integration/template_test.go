package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgveil/pgveil/rules"
)

// TestStatementTemplates sends a masked analyst's simple-protocol texts
// that share shapes (so that statement templates answer them, and those
// whose constants allow it run as the session's prepared statements) and
// checks every answer against the same texts run directly over masked
// data. It covers quoting, every numeric type, bad input, an aborted
// transaction (the Parse fails and is redone), DISCARD ALL, constants of
// one shape typed differently, and more shapes than a session keeps
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
	add("SELECT id, name, email, ssn, birth_date, salary FROM customers WHERE id = 4")
	// Texts of one shape whose constants are of another kind: each typing
	// gets its own statement ('01'::text is 01, 01::text is 1).
	add("SELECT '01'::text AS v, id FROM customers WHERE id = 1")
	add("SELECT 01::text AS v, id FROM customers WHERE id = 2")
	add("SELECT id FROM customers WHERE id = 1")
	add("SELECT id FROM customers WHERE id = 1.5")
	add("SELECT id FROM customers WHERE id = '2'")
	add("SELECT id FROM customers ORDER BY id LIMIT 1")
	add("SELECT id FROM customers ORDER BY id LIMIT 1.5")
	add("SELECT id FROM customers WHERE birth_date = '1990-01-01'")
	add("SELECT id FROM customers WHERE birth_date = '1985-01-01'")
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
// (Parse, or Bind of a prepared one) after one that may change
// search_path is refused (its names would be resolved under the old
// path), unless it resolves no names; the session goes on after the Sync,
// and a prepared statement is stale once the change is committed. In one
// simple-protocol text, EXECUTE after such a statement is refused.
func TestContextChangeInBatch(t *testing.T) {
	f := advSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, _, err := advConn(ctx, f, true, advAnalyst, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// batch sends one Sync-terminated batch; an item "@name" runs the
	// prepared statement name, any other item is a statement text.
	batch := func(sqls ...string) []string {
		pl := conn.StartPipeline(ctx)
		for _, q := range sqls {
			if name, ok := strings.CutPrefix(q, "@"); ok {
				pl.SendQueryPrepared(name, nil, nil, nil)
			} else {
				pl.SendQueryParams(q, nil, nil, nil, nil)
			}
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

	// The same with statements prepared before: a Bind that resolves
	// names after one that may change search_path is refused too.
	for name, sql := range map[string]string{
		"set_shadow": "SET search_path = shadow, public",
		"read_ssn":   "SELECT ssn FROM customers",
		"show_path":  "SHOW search_path",
	} {
		if _, err := conn.Prepare(ctx, name, sql, nil); err != nil {
			t.Fatalf("prepare %s: %v", name, err)
		}
	}
	got = batch("@set_shadow", "@read_ssn")
	if len(got) < 2 || got[0] != "SET" || !strings.HasPrefix(got[1], "42501 ") || !strings.Contains(got[1], "followed by Sync") {
		t.Fatalf("Bind of SET then Bind of SELECT in one batch: %q", got)
	}
	got = batch("@set_shadow", "@show_path")
	if strings.Join(got, "|") != "SET|SHOW" {
		t.Fatalf("Bind of SET then Bind of SHOW in one batch: %q", got)
	}
	// That batch committed the new search_path: a statement prepared
	// under the old one is stale from the next batch's first Bind on.
	got = batch("@read_ssn")
	if len(got) != 1 || !strings.HasPrefix(got[0], "42501 ") || !strings.Contains(got[0], "prepare it again") {
		t.Fatalf("Bind of a statement prepared under the old search_path: %q", got)
	}

	// In one simple-protocol text, EXECUTE after a statement that may
	// change search_path is refused, and with it the whole text.
	if _, err := conn.Exec(ctx, "SET search_path = public; PREPARE p_ssn AS SELECT ssn FROM customers").ReadAll(); err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(ctx, "SET search_path = shadow, public; EXECUTE p_ssn").ReadAll()
	if serverCode(err) != "42501" || !strings.Contains(err.Error(), "prepare it again") {
		t.Fatalf("SET search_path; EXECUTE in one text: %v", err)
	}
	rs, err := conn.Exec(ctx, "SHOW search_path").ReadAll()
	if err != nil || len(rs) != 1 || len(rs[0].Rows) != 1 || string(rs[0].Rows[0][0]) != "public" {
		t.Fatalf("search_path after the refused text: %v %v", rs, err)
	}
}

// TestTemplateReservedNames: the prepared statements the proxy makes for
// statement templates (pgveil_tpl_N) cannot be named by a masked client in
// any way, so it can neither run one nor take its name over, and it cannot
// open a portal of such a name; the session's templates go on working.
func TestTemplateReservedNames(t *testing.T) {
	f := advSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, _, err := advConn(ctx, f, true, advAnalyst, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	shape := func(id int) string {
		t.Helper()
		q := fmt.Sprintf("SELECT id FROM customers WHERE id = %d", id)
		rs := advExec(ctx, conn, q, "shape")
		if got := advTranscript(rs, true); !strings.Contains(got, fmt.Sprint(id)) || strings.Contains(got, "ERROR") {
			t.Fatalf("%s: %s", q, got)
		}
		return q
	}
	before := f.proxy.srv.Stats().PlanTemplateHits
	shape(1)
	shape(2) // a template hit, run as pgveil_tpl_1
	if f.proxy.srv.Stats().PlanTemplateHits == before {
		t.Fatal("the second text of the shape was not answered by its template")
	}
	refused := func(what string, err error) {
		t.Helper()
		if serverCode(err) != "42501" || !strings.Contains(err.Error(), "reserved for the proxy") {
			t.Errorf("%s: want 42501 reserved-name, got %v", what, err)
		}
	}
	for _, q := range []string{
		"PREPARE pgveil_tpl_2(int) AS SELECT $1",
		"EXECUTE pgveil_tpl_1(1)",
		"DEALLOCATE pgveil_tpl_1",
		"SELECT 1; DEALLOCATE PREPARE pgveil_tpl_1",
	} {
		_, err := conn.Exec(ctx, q).ReadAll()
		refused(q, err)
	}
	_, err = conn.Prepare(ctx, "pgveil_tpl_2", "SELECT pg_catalog.set_config('search_path', 'pg_catalog', false)", nil)
	refused("Parse", err)
	refused("Bind", conn.ExecPrepared(ctx, "pgveil_tpl_1", [][]byte{[]byte("1")}, nil, nil).Read().Err)
	// Describe and Close (pgconn's Deallocate returns at the error without
	// reading the ReadyForQuery) are sent as they are, with a Sync.
	rawErr := func(msgs ...pgproto3.FrontendMessage) error {
		t.Helper()
		_, err := syncBatch(ctx, t, conn, msgs...)
		return err
	}
	refused("Describe", rawErr(&pgproto3.Describe{ObjectType: 'S', Name: "pgveil_tpl_1"}))
	refused("Close", rawErr(&pgproto3.Close{ObjectType: 'S', Name: "pgveil_tpl_1"}))
	if err := rawErr(&pgproto3.Close{ObjectType: 'P', Name: "pgveil_tpl_1"}); err != nil {
		t.Errorf("Close of a portal: %v", err) // it opens none
	}
	// Nor may it open a portal of such a name: the proxy's own context
	// query binds one (pgveil_tpl_context).
	refused("Bind into a portal", rawErr(&pgproto3.Parse{Query: "SELECT 1"}, &pgproto3.Bind{DestinationPortal: "pgveil_tpl_context"}))
	_, err = conn.Exec(ctx, "BEGIN; DECLARE pgveil_tpl_context CURSOR FOR SELECT 1").ReadAll()
	refused("DECLARE", err)
	if _, err := conn.Exec(ctx, "ROLLBACK").ReadAll(); err != nil {
		t.Fatal(err)
	}
	// The proxy's statement is still there and still its own.
	before = f.proxy.srv.Stats().PlanTemplateHits
	shape(3)
	if f.proxy.srv.Stats().PlanTemplateHits == before {
		t.Fatal("the shape's template stopped answering")
	}
	rs, err := conn.Exec(ctx, "SELECT name FROM pg_prepared_statements ORDER BY name").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range rs {
		for _, row := range r.Rows {
			names = append(names, string(row[0]))
		}
	}
	if strings.Join(names, ",") != "pgveil_tpl_1" {
		t.Fatalf("prepared statements of the session: %q", names)
	}
}

// TestTemplateAfterReload: after a policy reload takes a raw grant away,
// the session's texts are masked, template hits included, and the
// statement the proxy prepared under the old policy cannot be run.
func TestTemplateAfterReload(t *testing.T) {
	f := advSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, _, err := advConn(ctx, f, true, advSupport, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	old := f.mask.policy.Load()
	t.Cleanup(func() { f.mask.setPolicy(old) })
	email := func(q string) string {
		t.Helper()
		rs, err := conn.Exec(ctx, q).ReadAll()
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		if len(rs) != 1 || len(rs[0].Rows) != 1 {
			t.Fatalf("%s: %d results", q, len(rs))
		}
		return string(rs[0].Rows[0][1])
	}
	const canary = "canary.person@leak.example"
	if got := email("SELECT id, email FROM customers WHERE id = 1"); got != canary {
		t.Fatalf("support's raw e-mail: %q", got)
	}
	if got := email("SELECT id, email FROM customers WHERE id = 2"); got != "bob.smith@corp.example" { // prepares pgveil_tpl_1 with e-mail raw
		t.Fatalf("support's raw e-mail from a template: %q", got)
	}
	f.mask.setPolicy(supportWithoutRawEmail(t))
	if got := email("SELECT id, email FROM customers WHERE id = 1"); got != "c***@leak.example" {
		t.Fatalf("e-mail after the reload: %q", got)
	}
	before := f.proxy.srv.Stats().PlanTemplateHits
	if got := email("SELECT id, email FROM customers WHERE id = 3"); got != "z***@z.example" {
		t.Fatalf("e-mail from a template after the reload: %q", got)
	}
	if f.proxy.srv.Stats().PlanTemplateHits == before {
		t.Fatal("the text was not answered by a template")
	}
	for what, err := range map[string]error{
		"EXECUTE": func() error { _, err := conn.Exec(ctx, "EXECUTE pgveil_tpl_1(1)").ReadAll(); return err }(),
		"Bind":    conn.ExecPrepared(ctx, "pgveil_tpl_1", [][]byte{[]byte("1")}, nil, nil).Read().Err,
	} {
		if serverCode(err) != "42501" {
			t.Errorf("%s of the statement prepared under the old policy: %v", what, err)
		}
	}
}

// TestPreparedBookkeeping: the proxy refuses to run a prepared statement
// it has no record of (fail closed), so a DISCARD ALL that failed cannot
// make it forget a statement that then escapes the stale-statement rule;
// a statement prepared earlier in the same text runs; a Query inside an
// unfinished extended-protocol batch is answered as the server answers it
// (after an error in the batch: not at all), templates or not.
func TestPreparedBookkeeping(t *testing.T) {
	f := advSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, _, err := advConn(ctx, f, true, advAnalyst, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	exec := func(q string) ([]*pgconn.Result, error) { return conn.Exec(ctx, q).ReadAll() }
	if _, err := exec("EXECUTE never_prepared"); serverCode(err) != "42501" || !strings.Contains(err.Error(), "not known to pgveil") {
		t.Fatalf("EXECUTE of an unknown statement: %v", err)
	}
	if rs, err := exec("PREPARE here AS SELECT id FROM customers WHERE id = 1; EXECUTE here"); err != nil || len(rs) != 2 || len(rs[1].Rows) != 1 {
		t.Fatalf("PREPARE and EXECUTE in one text: %v", err)
	}
	if _, err := exec("PREPARE p1 AS SELECT ssn FROM customers ORDER BY id"); err != nil {
		t.Fatal(err)
	}
	if _, err := exec("BEGIN; DISCARD ALL"); serverCode(err) != "25001" {
		t.Fatalf("DISCARD ALL in a transaction block: %v", err)
	}
	if _, err := exec("ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	if _, err := exec("SET search_path = shadow, public"); err != nil {
		t.Fatal(err)
	}
	if _, err := exec("EXECUTE p1"); serverCode(err) != "42501" {
		t.Fatalf("EXECUTE of a statement whose record a failed DISCARD ALL dropped, under another search_path: %v", err)
	}
	if _, err := exec("RESET search_path; DEALLOCATE p1"); err != nil {
		t.Fatal(err)
	}

	// A Query inside an unfinished batch: the server would answer it, or
	// skip it without an answer after an error in the batch, and the
	// proxy cannot count the sync point: the session ends with 08P01.
	c, _, err := advConn(ctx, f, true, advAnalyst, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	fe := c.Frontend()
	fe.Send(&pgproto3.Parse{Query: "SELECT 1/0"})
	fe.Send(&pgproto3.Bind{})
	fe.Send(&pgproto3.Execute{})
	fe.Send(&pgproto3.Query{String: "SELECT id FROM customers WHERE id = 3"})
	fe.Send(&pgproto3.Sync{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var fatal error // pgconn returns a FATAL error as the error of the read
	for fatal == nil {
		msg, err := c.ReceiveMessage(ctx)
		if e, ok := msg.(*pgproto3.ErrorResponse); ok && e.Severity == "FATAL" {
			err = pgconn.ErrorResponseToPgError(e)
		}
		fatal = err
	}
	if serverCode(fatal) != "08P01" || !strings.Contains(fatal.Error(), "inside an unfinished extended-protocol batch") {
		t.Fatalf("a Query inside a batch: %v", fatal)
	}
	if _, err := exec("SELECT 1"); err != nil {
		t.Fatalf("another session after that: %v", err)
	}
}

// TestPortalAfterReload: a cursor or a named portal opened before a policy
// reload took a raw grant away cannot be read after it (it keeps the plan
// of the old policy); a new one is masked.
func TestPortalAfterReload(t *testing.T) {
	f := advSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, _, err := advConn(ctx, f, true, advSupport, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	old := f.mask.policy.Load()
	t.Cleanup(func() { f.mask.setPolicy(old) })
	exec := func(q string) ([]*pgconn.Result, error) { return conn.Exec(ctx, q).ReadAll() }
	if _, err := exec("BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT id, email FROM customers ORDER BY id; COMMIT"); err != nil {
		t.Fatal(err)
	}
	if rs, err := exec("FETCH 1 FROM c"); err != nil || string(rs[0].Rows[0][1]) != "canary.person@leak.example" {
		t.Fatalf("FETCH before the reload: %v", err)
	}
	// A named portal in an open transaction.
	if _, err := exec("BEGIN"); err != nil {
		t.Fatal(err)
	}
	rows, err := syncBatch(ctx, t, conn, &pgproto3.Parse{Query: "SELECT id, email FROM customers ORDER BY id"},
		&pgproto3.Bind{DestinationPortal: "pp"}, &pgproto3.Execute{Portal: "pp", MaxRows: 1})
	if err != nil || len(rows) != 1 || rows[0][1] != "canary.person@leak.example" {
		t.Fatalf("the portal before the reload: %q %v", rows, err)
	}

	f.mask.setPolicy(supportWithoutRawEmail(t))

	if rows, err := syncBatch(ctx, t, conn, &pgproto3.Execute{Portal: "pp", MaxRows: 1}); serverCode(err) != "42501" || len(rows) != 0 {
		t.Fatalf("the portal after the reload: %q %v", rows, err)
	}
	if _, err := exec("ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"FETCH 1 FROM c", "MOVE 1 IN c", "FETCH ALL FROM c"} {
		if rs, err := exec(q); serverCode(err) != "42501" || !strings.Contains(err.Error(), "open it again") {
			t.Fatalf("%s after the reload: %v %v", q, rs, err)
		}
	}
	if rs, err := exec("CLOSE c; BEGIN; DECLARE c CURSOR FOR SELECT id, email FROM customers WHERE id = 1; FETCH 1 FROM c"); err != nil || string(rs[len(rs)-1].Rows[0][1]) != "c***@leak.example" {
		t.Fatalf("a new cursor after the reload: %v", err)
	}
}

// TestPreparedBooksFollowServer: the proxy's records of prepared
// statements and portals follow what the server keeps: a second PREPARE
// of a name (which the server refuses) does not replace the first's
// record, and a SET bound into a portal and run in a later batch makes
// the proxy read the context again.
func TestPreparedBooksFollowServer(t *testing.T) {
	f := advSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, _, err := advConn(ctx, f, true, advAnalyst, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	exec := func(q string) ([]*pgconn.Result, error) { return conn.Exec(ctx, q).ReadAll() }
	if _, err := exec("PREPARE dup AS SELECT ssn FROM customers WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	if _, err := exec("SET search_path = shadow, public"); err != nil {
		t.Fatal(err)
	}
	if _, err := exec("PREPARE dup AS SELECT 1"); serverCode(err) != "42P05" {
		t.Fatalf("a second PREPARE of the name: %v", err)
	}
	if _, err := exec("EXECUTE dup"); serverCode(err) != "42501" || !strings.Contains(err.Error(), "prepare it again") {
		t.Fatalf("EXECUTE of the first statement under another search_path: %v", err)
	}
	if _, err := exec("RESET search_path; DEALLOCATE dup"); err != nil {
		t.Fatal(err)
	}

	// A SET bound into a portal in one batch, run in a later one.
	if _, err := conn.Prepare(ctx, "read_ssn", "SELECT ssn FROM customers ORDER BY id", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := exec("BEGIN"); err != nil {
		t.Fatal(err)
	}
	sync := func(msgs ...pgproto3.FrontendMessage) error {
		t.Helper()
		_, err := syncBatch(ctx, t, conn, msgs...)
		return err
	}
	if err := sync(&pgproto3.Parse{Name: "sp", Query: "SET search_path = shadow, pg_catalog, public"}, &pgproto3.Bind{DestinationPortal: "p1", PreparedStatement: "sp"}); err != nil {
		t.Fatal(err)
	}
	if _, err := exec("SELECT 1"); err != nil { // the proxy reads the context again here
		t.Fatal(err)
	}
	if err := sync(&pgproto3.Execute{Portal: "p1"}); err != nil {
		t.Fatal(err)
	}
	if err := sync(&pgproto3.Bind{PreparedStatement: "read_ssn"}, &pgproto3.Execute{}); serverCode(err) != "42501" || !strings.Contains(err.Error(), "prepare it again") {
		t.Fatalf("a statement prepared before the portal's SET ran: %v", err)
	}
	if _, err := exec("ROLLBACK"); err != nil {
		t.Fatal(err)
	}
}

// TestSessionEndsWhileRefreshWaits: after a statement that may change
// search_path, the proxy waits for every earlier answer before it reads
// the search_path again; a shutdown must still end a session waiting so
// behind a long query within its deadline (the wait gives way when the
// session starts to end, and the query is cancelled).
func TestSessionEndsWhileRefreshWaits(t *testing.T) {
	f := advSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, _, err := advConn(ctx, f, true, advAnalyst, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	fe := conn.Frontend()
	fe.Send(&pgproto3.Query{String: "SET search_path = public; SELECT pg_sleep(60)"})
	fe.Send(&pgproto3.Query{String: "SELECT 1"})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	// SELECT 1 waits in the proxy for the sleep's answer.
	time.Sleep(500 * time.Millisecond)
	sctx, scancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer scancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- f.proxy.srv.Shutdown(sctx) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Shutdown did not return: the session waiting to re-read its search_path was not ended")
	}
	switch d := time.Since(start); {
	case d > 10*time.Second:
		t.Fatalf("Shutdown took %v", d)
	case d < 2*time.Second:
		// Shutdown waits up to its deadline for a busy session only.
		t.Fatalf("Shutdown took only %v: the session was not busy", d)
	}
}

// TestCopyInSyncs: PostgreSQL ignores a Sync it reads during COPY FROM
// STDIN, and libpq sends one after the Execute of a COPY run with the
// extended protocol (PQexecParams), before any COPY data: a masked
// session's proxy must not wait for its answer (it used to, and then
// waited two minutes to re-read search_path, and ended the session with
// 08P01). Each COPY here (extended protocol with good data, with a
// unique violation, skipped after an earlier error in its batch, failing
// before it starts, its portal run again; simple protocol with stray
// Syncs among the data) is followed by a change of
// search_path and a masked query that runs as a statement template, and
// the proxy's answers must be those of the same session run directly.
// A Query sent during the COPY ends the session with 08P01.
func TestCopyInSyncs(t *testing.T) {
	f := advSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tag := fmt.Sprintf("%d", time.Now().UnixNano())
	row := func(v string) *pgproto3.CopyData { return &pgproto3.CopyData{Data: []byte(v + tag + "\n")} }
	copyExt := []pgproto3.FrontendMessage{&pgproto3.Parse{Query: "COPY probe_u (v) FROM STDIN"}, &pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}}
	type step struct {
		msgs []pgproto3.FrontendMessage
		// copyIn says the server answers with CopyInResponse, which a
		// client awaits before it sends its data; ready how many
		// ReadyForQuery answer the rest.
		copyIn bool
		data   []pgproto3.FrontendMessage
		ready  int
	}
	probes := []step{
		{msgs: []pgproto3.FrontendMessage{&pgproto3.Query{String: "SET search_path = public"}}, ready: 1},
		{msgs: []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT id, email FROM customers WHERE id = 1"}}, ready: 1},
		{msgs: []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT id, email FROM customers WHERE id = 2"}}, ready: 1},
	}
	scenarios := [][]step{
		// libpq's PQexecParams: Execute, Sync, then the data, CopyDone, Sync.
		{{msgs: copyExt, copyIn: true, data: []pgproto3.FrontendMessage{row("a"), row("b"), &pgproto3.CopyDone{}, &pgproto3.Sync{}}, ready: 1}},
		// The same with a unique violation in the data.
		{{msgs: copyExt, copyIn: true, data: []pgproto3.FrontendMessage{row("c"), row("c"), &pgproto3.CopyDone{}, &pgproto3.Sync{}}, ready: 1}},
		// The COPY is skipped after an error earlier in its batch: the
		// Sync is answered.
		{{msgs: append([]pgproto3.FrontendMessage{&pgproto3.Parse{Query: "SELECT 1/0"}, &pgproto3.Bind{}, &pgproto3.Execute{}}, copyExt...), ready: 1}},
		// The COPY fails before it starts; a Bind and Execute follow it
		// in its batch (the server skips them).
		{{msgs: []pgproto3.FrontendMessage{&pgproto3.Parse{Query: "COPY probe_u (v) FROM STDIN (DELIMITER 'ab')"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}}, ready: 1}},
		// The COPY's portal run again in a later batch.
		{{msgs: copyExt, copyIn: true, data: []pgproto3.FrontendMessage{row("f"), &pgproto3.CopyDone{}, &pgproto3.Sync{}}, ready: 1},
			{msgs: []pgproto3.FrontendMessage{&pgproto3.Execute{}, &pgproto3.Sync{}}, ready: 1}},
		// The same in a transaction block, where the portal outlives the
		// Sync.
		{{msgs: []pgproto3.FrontendMessage{&pgproto3.Query{String: "BEGIN"}}, ready: 1},
			{msgs: copyExt, copyIn: true, data: []pgproto3.FrontendMessage{row("g"), &pgproto3.CopyDone{}, &pgproto3.Sync{}}, ready: 1},
			{msgs: []pgproto3.FrontendMessage{&pgproto3.Execute{}, &pgproto3.Sync{}}, ready: 1},
			{msgs: []pgproto3.FrontendMessage{&pgproto3.Query{String: "COMMIT"}}, ready: 1}},
		// The simple protocol with stray Syncs before and among the data.
		{{msgs: []pgproto3.FrontendMessage{&pgproto3.Query{String: "COPY probe_u (v) FROM STDIN"}, &pgproto3.Sync{}, row("d"), &pgproto3.Sync{}, row("e"), &pgproto3.Flush{}, &pgproto3.CopyDone{}}, ready: 1}},
	}
	run := func(viaProxy bool) string {
		conn, _, err := advConn(ctx, f, viaProxy, advAnalyst, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		fe := conn.Frontend()
		send := func(msgs []pgproto3.FrontendMessage) {
			for _, m := range msgs {
				fe.Send(m)
			}
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		var b strings.Builder
		for i, sc := range scenarios {
			for _, st := range append(sc, probes...) {
				send(st.msgs)
				if st.copyIn {
					for {
						msg, err := conn.ReceiveMessage(ctx)
						if err != nil {
							t.Fatalf("scenario %d: waiting for CopyInResponse: %v", i, err)
						}
						if _, ok := msg.(*pgproto3.CopyInResponse); ok {
							break
						}
					}
					send(st.data)
				}
				fmt.Fprintf(&b, "scenario %d: %s\n", i, rawAnswers(ctx, t, conn, st.ready))
			}
		}
		return b.String()
	}
	if got, want := run(true), run(false); got != want {
		t.Fatalf("through the proxy:\n%s\ndirect:\n%s", got, want)
	}

	// Another message than COPY data, CopyDone, CopyFail, Sync or Flush
	// during the COPY ends the session (PostgreSQL would fail the COPY).
	conn, _, err := advConn(ctx, f, true, advAnalyst, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	fe := conn.Frontend()
	fe.Send(&pgproto3.Query{String: "COPY probe_u (v) FROM STDIN"})
	fe.Send(&pgproto3.Sync{})
	fe.Send(&pgproto3.Query{String: "SELECT 1"})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var fatal error
	for fatal == nil {
		msg, err := conn.ReceiveMessage(ctx)
		if e, ok := msg.(*pgproto3.ErrorResponse); ok && e.Severity == "FATAL" {
			err = pgconn.ErrorResponseToPgError(e)
		}
		fatal = err
	}
	if serverCode(fatal) != "08P01" || !strings.Contains(fatal.Error(), "during COPY FROM STDIN") {
		t.Fatalf("a Query during COPY FROM STDIN: %v", fatal)
	}
}

// syncBatch sends msgs and a Sync on conn and reads up to the
// ReadyForQuery: the rows' text values and the first error.
func syncBatch(ctx context.Context, t *testing.T, conn *pgconn.PgConn, msgs ...pgproto3.FrontendMessage) (rows [][]string, first error) {
	t.Helper()
	fe := conn.Frontend()
	for _, m := range msgs {
		fe.Send(m)
	}
	fe.Send(&pgproto3.Sync{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			var row []string
			for _, v := range m.Values {
				row = append(row, string(v))
			}
			rows = append(rows, row)
		case *pgproto3.ErrorResponse:
			if first == nil {
				first = pgconn.ErrorResponseToPgError(m)
			}
		case *pgproto3.ReadyForQuery:
			return rows, first
		}
	}
}

// supportWithoutRawEmail is the adversarial policy after a reload that
// takes adv_support's raw e-mail grant away.
func supportWithoutRawEmail(t *testing.T) *rules.Policy {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "adversarial", "policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(string(data), "adv_support: { raw: [email] }", "adv_support: {}", 1)
	if text == string(data) {
		t.Fatal("the test's policy edit did not apply")
	}
	p, err := rules.Parse("policy.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRefreshKeepsUnnamed: the proxy's re-read of search_path and the
// role after a statement that may change them leaves the client's unnamed
// prepared statement and unnamed portal alone (a simple Query would
// destroy both), so a raw extended-protocol session that relies on them
// across the re-read gets the same answers through the proxy as directly.
func TestRefreshKeepsUnnamed(t *testing.T) {
	f := advSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const sameRole = `SET ROLE NONE` // a context change that changes nothing
	const samePath = `SET search_path = "$user", public`
	batches := [][]pgproto3.FrontendMessage{
		{&pgproto3.Parse{Query: "SELECT id FROM customers WHERE id = $1"}},
		// A changer run from a named statement: the unnamed one stays.
		{&pgproto3.Parse{Name: "chg", Query: samePath}, &pgproto3.Bind{PreparedStatement: "chg", DestinationPortal: "cp"}, &pgproto3.Execute{Portal: "cp"}},
		// The first Bind after it: the proxy reads the context again first.
		{&pgproto3.Bind{Parameters: [][]byte{[]byte("2")}}, &pgproto3.Execute{}},
		// The unnamed portal of an open transaction, read in two parts
		// around another change and re-read.
		{&pgproto3.Parse{Name: "begin", Query: "BEGIN"}, &pgproto3.Bind{PreparedStatement: "begin", DestinationPortal: "bp"}, &pgproto3.Execute{Portal: "bp"}},
		{&pgproto3.Parse{Query: "SELECT id FROM customers ORDER BY id"}, &pgproto3.Bind{}, &pgproto3.Execute{MaxRows: 1}},
		{&pgproto3.Parse{Name: "chg2", Query: sameRole}, &pgproto3.Bind{PreparedStatement: "chg2", DestinationPortal: "cp2"}, &pgproto3.Execute{Portal: "cp2"}},
		{&pgproto3.Parse{Name: "s2", Query: "SELECT 2"}, &pgproto3.Bind{PreparedStatement: "s2", DestinationPortal: "p2"}, &pgproto3.Execute{Portal: "p2"}, &pgproto3.Execute{MaxRows: 1}},
		{&pgproto3.Parse{Name: "chg3", Query: samePath}, &pgproto3.Bind{PreparedStatement: "chg3", DestinationPortal: "cp3"}, &pgproto3.Execute{Portal: "cp3"}},
		{&pgproto3.Bind{}, &pgproto3.Execute{MaxRows: 1}, &pgproto3.Parse{Name: "end", Query: "COMMIT"}, &pgproto3.Bind{PreparedStatement: "end"}, &pgproto3.Execute{}},
	}
	run := func(viaProxy bool) string {
		conn, _, err := advConn(ctx, f, viaProxy, advAnalyst, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var b strings.Builder
		for i, msgs := range batches {
			fmt.Fprintf(&b, "batch %d: %s\n", i, rawBatch(ctx, t, conn, msgs...))
		}
		return b.String()
	}
	if got, want := run(true), run(false); got != want {
		t.Fatalf("through the proxy:\n%s\ndirect:\n%s", got, want)
	}
}

// rawBatch sends msgs and a Sync on conn and returns what the server
// answered up to the ReadyForQuery, one short item per message.
func rawBatch(ctx context.Context, t *testing.T, conn *pgconn.PgConn, msgs ...pgproto3.FrontendMessage) string {
	t.Helper()
	fe := conn.Frontend()
	for _, m := range msgs {
		fe.Send(m)
	}
	fe.Send(&pgproto3.Sync{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	return rawAnswers(ctx, t, conn, 1)
}

// rawAnswers reads n ReadyForQuery answers from conn and returns what
// came, one short item per message.
func rawAnswers(ctx context.Context, t *testing.T, conn *pgconn.PgConn, n int) string {
	t.Helper()
	var out []string
	for n > 0 {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			t.Fatalf("after %q: %v", out, err)
		}
		switch m := msg.(type) {
		case *pgproto3.ParseComplete:
			out = append(out, "ParseComplete")
		case *pgproto3.BindComplete:
			out = append(out, "BindComplete")
		case *pgproto3.CloseComplete:
			out = append(out, "CloseComplete")
		case *pgproto3.DataRow:
			var vals []string
			for _, v := range m.Values {
				vals = append(vals, string(v))
			}
			out = append(out, "row("+strings.Join(vals, ",")+")")
		case *pgproto3.CommandComplete:
			out = append(out, string(m.CommandTag))
		case *pgproto3.PortalSuspended:
			out = append(out, "suspended")
		case *pgproto3.CopyInResponse:
			out = append(out, "CopyIn")
		case *pgproto3.ErrorResponse:
			out = append(out, "error "+m.Code+" "+m.Message)
		case *pgproto3.ReadyForQuery:
			out = append(out, "ready "+string(m.TxStatus))
			n--
		case *pgproto3.ParameterStatus, *pgproto3.NoticeResponse:
		default:
			out = append(out, fmt.Sprintf("%T", m))
		}
	}
	return strings.Join(out, " | ")
}

// TestPreparedBooksAfterError: the proxy's records of prepared statements
// change only where the server's statements do. After an error in a
// batch the server skips every message up to the Sync: a Parse skipped
// so is not a statement (a later Parse of its name under another
// search_path is one, and runs as it does directly), and a Close skipped
// so leaves the statement, which is then still stale under another
// search_path (PostgreSQL would re-analyse it under names pgveil never
// checked: with search_path public, the shadow table's name reads the
// protected one).
func TestPreparedBooksAfterError(t *testing.T) {
	f := advSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	failing := []pgproto3.FrontendMessage{&pgproto3.Parse{Query: "SELECT 1/0"}, &pgproto3.Bind{}, &pgproto3.Execute{}}
	const readSSN = "SELECT ssn FROM customers ORDER BY id LIMIT 1"
	simple := func(q string) []pgproto3.FrontendMessage {
		return []pgproto3.FrontendMessage{&pgproto3.Parse{Name: "q", Query: q}, &pgproto3.Bind{PreparedStatement: "q"}, &pgproto3.Execute{}, &pgproto3.Close{ObjectType: 'S', Name: "q"}}
	}
	// A Parse skipped after an error, then a Parse of its name with
	// another text under another search_path.
	batches := [][]pgproto3.FrontendMessage{
		append(failing[:3:3], &pgproto3.Parse{Name: "s1", Query: "SELECT 1"}),
		simple("SET search_path = shadow, public"),
		{&pgproto3.Parse{Name: "s1", Query: readSSN}, &pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}},
		{&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}},
	}
	run := func(viaProxy bool) string {
		conn, _, err := advConn(ctx, f, viaProxy, advAnalyst, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var b strings.Builder
		for i, msgs := range batches {
			fmt.Fprintf(&b, "batch %d: %s\n", i, rawBatch(ctx, t, conn, msgs...))
		}
		return b.String()
	}
	if got, want := run(true), run(false); got != want {
		t.Fatalf("a Parse skipped after an error:\nthrough the proxy:\n%s\ndirect:\n%s", got, want)
	}

	// A Close skipped after an error.
	conn, _, err := advConn(ctx, f, true, advAnalyst, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for i, msgs := range [][]pgproto3.FrontendMessage{
		simple("SET search_path = shadow, public"),
		{&pgproto3.Parse{Name: "s2", Query: readSSN}},
		append(failing[:3:3], &pgproto3.Close{ObjectType: 'S', Name: "s2"}),
		simple("RESET search_path"),
		{&pgproto3.Parse{Name: "s2", Query: readSSN}}, // the server: 42P05
	} {
		t.Logf("batch %d: %s", i, rawBatch(ctx, t, conn, msgs...))
	}
	rows, err := syncBatch(ctx, t, conn, &pgproto3.Bind{PreparedStatement: "s2"}, &pgproto3.Execute{})
	if serverCode(err) != "42501" || !strings.Contains(err.Error(), "prepare it again") {
		t.Fatalf("a statement whose Close the server skipped, under another search_path: %q %v", rows, err)
	}
}

// TestPortalBooksAfterFailedOpen: opening a portal or cursor under a name
// that is taken fails on the server and leaves the portal open there, so
// its record stays that of the policy it was opened under; rolled back to
// a savepoint, the transaction goes on, and reading the portal after a
// reload is still refused.
func TestPortalBooksAfterFailedOpen(t *testing.T) {
	f := advSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, _, err := advConn(ctx, f, true, advSupport, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	old := f.mask.policy.Load()
	t.Cleanup(func() { f.mask.setPolicy(old) })
	exec := func(q string) ([]*pgconn.Result, error) { return conn.Exec(ctx, q).ReadAll() }
	const read = "SELECT id, email FROM customers ORDER BY id"
	if _, err := exec("BEGIN; DECLARE c CURSOR FOR " + read); err != nil {
		t.Fatal(err)
	}
	if _, err := syncBatch(ctx, t, conn, &pgproto3.Parse{Query: read}, &pgproto3.Bind{DestinationPortal: "pp"}); err != nil {
		t.Fatal(err)
	}
	if _, err := exec("SAVEPOINT s"); err != nil {
		t.Fatal(err)
	}

	f.mask.setPolicy(supportWithoutRawEmail(t))

	if _, err := syncBatch(ctx, t, conn, &pgproto3.Parse{Query: read}, &pgproto3.Bind{DestinationPortal: "pp"}); serverCode(err) != "42P03" {
		t.Fatalf("Bind into a portal that is open: %v", err)
	}
	if _, err := exec("ROLLBACK TO s"); err != nil {
		t.Fatal(err)
	}
	if rows, err := syncBatch(ctx, t, conn, &pgproto3.Execute{Portal: "pp", MaxRows: 1}); serverCode(err) != "42501" || len(rows) != 0 {
		t.Fatalf("the portal opened before the reload, after a failed Bind of its name: %q %v", rows, err)
	}
	if _, err := exec("ROLLBACK TO s"); err != nil {
		t.Fatal(err)
	}
	if _, err := exec("DECLARE c CURSOR FOR " + read); serverCode(err) != "42P03" {
		t.Fatalf("DECLARE of a cursor that is open: %v", err)
	}
	if _, err := exec("ROLLBACK TO s"); err != nil {
		t.Fatal(err)
	}
	if rs, err := exec("FETCH 1 FROM c"); serverCode(err) != "42501" || !strings.Contains(err.Error(), "open it again") {
		t.Fatalf("the cursor declared before the reload, after a failed DECLARE of its name: %v %v", rs, err)
	}
	if _, err := exec("ROLLBACK"); err != nil {
		t.Fatal(err)
	}
}
