package integration

// The adversarial suite: a catalogue of attempts to read masked values
// through the proxy (DESIGN.md §2 and §5 "Adversarial"), each run through
// every protocol path it applies to, as a masked login, against a database
// holding distinctive canary values.
//
// Every case states its expected outcome:
//
//   - advMasked: the statement succeeds (or fails) exactly as it does when
//     run directly against adv_ref, a copy of the schema whose data is
//     already masked. That is "the answer the masked data would give",
//     which covers oracles (counts, orderings, errors) as well as values.
//   - advRefused / advSyntax: the proxy answers 42501 (a refusal naming
//     pgveil) or 42601.
//   - advCode: a specific server error (for example 42703 for system
//     columns, which the masking sub-query does not have).
//
// Independently of the expected outcome, a TCP tap between the client and
// the proxy records every byte the proxy sends (rows, errors, notices,
// notifications, command tags, ParameterStatus), and the canary scan
// (adversarial_scan_test.go) fails the case if any canary appears in any
// encoding, unless the client sent those very bytes itself (an echo of an
// oracle's literal; such oracles are judged by the comparison instead).
// advControls proves that the scan and the comparison do fail on raw data.
// Cases marked bug: demonstrate a product defect that was reported; they
// fail until it is fixed.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgveil/pgveil/proxy"
	"github.com/pgveil/pgveil/rewrite"
)

// Databases of the fixture.
const (
	advDB    = "adv"     // raw canaries, behind the proxy
	advRefDB = "adv_ref" // the same schema with the data already masked
)

// Logins of the fixture (testdata/adversarial/policy.yaml).
const (
	advAnalyst = "adv_analyst" // every class masked
	advSupport = "adv_support" // email raw
	advDPO     = "adv_dpo"     // everything raw
)

// advFixture is the running fixture.
type advFixture struct {
	proxy *proxyInstance
	mask  *liveMasking
}

// advSQL reads a file of testdata/adversarial.
func advSQL(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "adversarial", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// advSetup creates the roles and both databases, loads the policy and the
// catalog, and starts a masking proxy in front of database adv. The
// proxy reaches PostgreSQL over its Unix socket, where every role is
// trusted, so the fixture's logins need no pg_hba.conf line.
func advSetup(t *testing.T) *advFixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := w.pg.Psql(ctx, advSQL(t, "roles.sql")); err != nil {
		t.Fatalf("roles: %v", err)
	}
	schema, post := advSQL(t, "schema.sql"), advSQL(t, "post.sql")
	for db, data := range map[string]string{advDB: "data_raw.sql", advRefDB: "data_masked.sql"} {
		if _, err := w.pg.PsqlDB(ctx, db, schema+advSQL(t, data)+post); err != nil {
			t.Fatalf("database %s: %v", db, err)
		}
	}
	mk, stop, err := newLiveMasking(ctx, filepath.Join("testdata", "adversarial", "policy.yaml"), w.pg.URL("postgres", "", advDB))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	upstream := fmt.Sprintf("postgres:///%s?host=%s&port=%d&sslmode=disable", advDB, url.QueryEscape(w.pg.SocketDir), w.pg.Port)
	p, err := startProxy(upstream, func(c *proxy.Config) { c.Masking = mk })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.close)
	return &advFixture{proxy: p, mask: mk}
}

// advSuper runs SQL as the superuser in both databases: data for adv and
// for adv_ref may differ (raw and masked).
func advSuper(t *testing.T, rawSQL, maskedSQL string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := w.pg.PsqlDB(ctx, advDB, rawSQL); err != nil {
		t.Fatalf("adv: %v", err)
	}
	if _, err := w.pg.PsqlDB(ctx, advRefDB, maskedSQL); err != nil {
		t.Fatalf("adv_ref: %v", err)
	}
}

// advTap is a TCP relay between one client and the proxy that records
// every byte in both directions. Bytes are recorded before they are
// forwarded, so whatever the client received is in fromServer.
type advTap struct {
	ln                     net.Listener
	target                 string
	mu                     sync.Mutex
	fromServer, fromClient []byte
	done                   chan struct{}
}

func newAdvTap(target string) (*advTap, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	tp := &advTap{ln: ln, target: target, done: make(chan struct{})}
	go tp.serve()
	return tp, nil
}

func (tp *advTap) port() int { return tp.ln.Addr().(*net.TCPAddr).Port }

func (tp *advTap) serve() {
	defer close(tp.done)
	_ = tp.ln.(*net.TCPListener).SetDeadline(time.Now().Add(30 * time.Second))
	c, err := tp.ln.Accept()
	tp.ln.Close()
	if err != nil {
		return
	}
	s, err := net.Dial("tcp", tp.target)
	if err != nil {
		c.Close()
		return
	}
	var wg sync.WaitGroup
	pump := func(dst, src net.Conn, rec *[]byte) {
		defer wg.Done()
		buf := make([]byte, 64<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				tp.mu.Lock()
				*rec = append(*rec, buf[:n]...)
				tp.mu.Unlock()
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		// Either side gone: end both.
		c.Close()
		s.Close()
	}
	wg.Add(2)
	go pump(s, c, &tp.fromClient)
	go pump(c, s, &tp.fromServer)
	wg.Wait()
}

// captured waits for the relay to end (the client must have closed its
// connection) and returns what each side sent.
func (tp *advTap) captured() (fromServer, fromClient []byte) {
	select {
	case <-tp.done:
	case <-time.After(10 * time.Second):
	}
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return slices.Clone(tp.fromServer), slices.Clone(tp.fromClient)
}

// advConn opens a session: through a fresh tap to the proxy (database adv)
// or directly over the Unix socket (database adv_ref, for the reference
// answer). extra are more connection-string settings.
func advConn(ctx context.Context, f *advFixture, viaProxy bool, login string, extra map[string]string) (*pgconn.PgConn, *advTap, error) {
	var tap *advTap
	cfgStr := ""
	if viaProxy {
		var err error
		tap, err = newAdvTap(fmt.Sprintf("127.0.0.1:%d", f.proxy.port))
		if err != nil {
			return nil, nil, err
		}
		cfgStr = fmt.Sprintf("host=127.0.0.1 port=%d dbname=%s", tap.port(), advDB)
	} else {
		cfgStr = fmt.Sprintf("host=%s port=%d dbname=%s", w.pg.SocketDir, w.pg.Port, advRefDB)
	}
	cfgStr += fmt.Sprintf(" user=%s sslmode=disable connect_timeout=10", login)
	cfg, err := pgconn.ParseConfig(cfgStr)
	if err != nil {
		return nil, tap, err
	}
	for k, v := range extra {
		cfg.RuntimeParams[k] = v
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	return conn, tap, err
}

// advResult is one statement's outcome as the client saw it.
type advResult struct {
	label  string // "pre", "attack" or "aux"
	fields []string
	rows   []string
	tag    string
	code   string
	msg    string
	copy   string
}

func (r advResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "[%s]", r.label)
	if len(r.fields) > 0 {
		fmt.Fprintf(&b, " fields(%s)", strings.Join(r.fields, ", "))
	}
	for _, row := range r.rows {
		fmt.Fprintf(&b, "\n    row %s", row)
	}
	if r.copy != "" {
		fmt.Fprintf(&b, "\n    copy %q", r.copy)
	}
	if r.tag != "" {
		fmt.Fprintf(&b, "\n    tag %s", r.tag)
	}
	if r.code != "" {
		fmt.Fprintf(&b, "\n    error %s %s", r.code, r.msg)
	}
	return b.String()
}

// advTranscript renders results, sorting rows (and COPY text lines) unless
// the order is part of the answer.
func advTranscript(rs []advResult, ordered bool) string {
	var b strings.Builder
	for _, r := range rs {
		if !ordered {
			r.rows = slices.Clone(r.rows)
			sort.Strings(r.rows)
			if r.copy != "" && !strings.HasPrefix(r.copy, "PGCOPY\n") {
				lines := strings.SplitAfter(r.copy, "\n")
				sort.Strings(lines)
				r.copy = strings.Join(lines, "")
			}
		}
		b.WriteString(r.String())
		b.WriteString("\n")
	}
	return b.String()
}

// advTypeName normalises a result column type: the whole-row value of a
// masking sub-query is an anonymous record where the direct query has the
// table's row type (a user type OID), which is a difference of typing, not
// of data.
func advTypeName(oid uint32) string {
	switch {
	case oid == 2249 || oid >= 16384: // record
		return "composite"
	case oid == 2287: // record[]
		return "composite[]"
	}
	return fmt.Sprint(oid)
}

func advFields(fds []pgconn.FieldDescription) []string {
	var out []string
	for _, fd := range fds {
		out = append(out, fmt.Sprintf("%s:%s:%d", fd.Name, advTypeName(fd.DataTypeOID), fd.Format))
	}
	return out
}

func advRow(vals [][]byte) string {
	parts := make([]string, len(vals))
	for i, v := range vals {
		if v == nil {
			parts[i] = "NULL"
		} else {
			parts[i] = fmt.Sprintf("%q", v)
		}
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

func advFromResult(label string, r *pgconn.Result) advResult {
	out := advResult{label: label, fields: advFields(r.FieldDescriptions), tag: r.CommandTag.String()}
	for _, row := range r.Rows {
		out.rows = append(out.rows, advRow(row))
	}
	out.setErr(r.Err)
	return out
}

func (r *advResult) setErr(err error) {
	if err == nil {
		return
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		r.code, r.msg = pe.Code, pe.Message
		return
	}
	r.code, r.msg = "CLIENT", err.Error()
}

// advExec runs sql with the simple protocol.
func advExec(ctx context.Context, conn *pgconn.PgConn, sql, label string) []advResult {
	rs, err := conn.Exec(ctx, sql).ReadAll()
	var out []advResult
	for _, r := range rs {
		out = append(out, advFromResult(label, r))
	}
	if err != nil {
		e := advResult{label: label}
		e.setErr(err)
		if len(out) == 0 || out[len(out)-1].code != e.code || out[len(out)-1].msg != e.msg {
			out = append(out, e)
		}
	}
	return out
}

// advExecParams runs sql with the extended protocol (unnamed statement),
// text parameters, and the given result format (0 text, 1 binary).
func advExecParams(ctx context.Context, conn *pgconn.PgConn, sql string, params []string, format int16, label string) []advResult {
	var vals [][]byte
	for _, p := range params {
		vals = append(vals, []byte(p))
	}
	r := conn.ExecParams(ctx, sql, vals, nil, nil, []int16{format}).Read()
	return []advResult{advFromResult(label, r)}
}

// advCopyTo runs a COPY ... TO STDOUT and keeps the data.
func advCopyTo(ctx context.Context, conn *pgconn.PgConn, sql, label string) []advResult {
	var buf bytes.Buffer
	tag, err := conn.CopyTo(ctx, &buf, sql)
	r := advResult{label: label, tag: tag.String(), copy: buf.String()}
	r.setErr(err)
	return []advResult{r}
}

// advStep is something a case does on its session before the attack.
type advStep struct {
	sql       string   // run with the simple protocol
	parseOnly bool     // send sql as Parse (+Describe, Sync) and never execute it
	pipeline  []string // run these with the extended protocol in one pipeline, one Sync
	// execPrepared runs the statement advParseOnly prepared (Bind, Execute, Sync).
	execPrepared bool
}

func advQ(sql string) advStep         { return advStep{sql: sql} }
func advParseOnly(sql string) advStep { return advStep{sql: sql, parseOnly: true} }
func advPipeline(sqls ...string) advStep {
	return advStep{pipeline: sqls}
}
func advExecParsed() advStep { return advStep{execPrepared: true} }

func (s advStep) run(ctx context.Context, conn *pgconn.PgConn) []advResult {
	switch {
	case s.execPrepared:
		return []advResult{advFromResult("pre", conn.ExecPrepared(ctx, "adv_parse_only", nil, nil, nil).Read())}
	case s.parseOnly:
		_, err := conn.Prepare(ctx, "adv_parse_only", s.sql, nil)
		r := advResult{label: "pre", tag: "PARSED"}
		r.setErr(err)
		return []advResult{r}
	case s.pipeline != nil:
		pl := conn.StartPipeline(ctx)
		for _, q := range s.pipeline {
			pl.SendQueryParams(q, nil, nil, nil, nil)
		}
		pl.SendPipelineSync()
		var out []advResult
		if err := pl.Flush(); err != nil {
			r := advResult{label: "pre"}
			r.setErr(err)
			return append(out, r)
		}
		for {
			res, err := pl.GetResults()
			if err != nil {
				r := advResult{label: "pre"}
				r.setErr(err)
				out = append(out, r)
				break
			}
			if rr, ok := res.(*pgconn.ResultReader); ok {
				out = append(out, advFromResult("pre", rr.Read()))
				continue
			}
			if _, ok := res.(*pgconn.PipelineSync); ok {
				break
			}
		}
		if err := pl.Close(); err != nil {
			r := advResult{label: "pre"}
			r.setErr(err)
			out = append(out, r)
		}
		return out
	}
	return advExec(ctx, conn, s.sql, "pre")
}

// advPath is one way of sending the attack.
type advPath struct {
	name string
	run  func(ctx context.Context, conn *pgconn.PgConn, c *advCase) []advResult
}

var (
	pathSimple = advPath{"simple", func(ctx context.Context, conn *pgconn.PgConn, c *advCase) []advResult {
		return advExec(ctx, conn, c.sql, "attack")
	}}
	pathExtText = advPath{"ext-text", func(ctx context.Context, conn *pgconn.PgConn, c *advCase) []advResult {
		return advExecParams(ctx, conn, c.sql, c.params, 0, "attack")
	}}
	pathExtBinary = advPath{"ext-binary", func(ctx context.Context, conn *pgconn.PgConn, c *advCase) []advResult {
		return advExecParams(ctx, conn, c.sql, c.params, 1, "attack")
	}}
	pathPrepare = advPath{"prepare-execute", func(ctx context.Context, conn *pgconn.PgConn, c *advCase) []advResult {
		out := advExec(ctx, conn, "PREPARE adv_p AS "+c.sql, "attack")
		return append(out, advExec(ctx, conn, "EXECUTE adv_p", "aux")...)
	}}
	pathCursor = advPath{"cursor", func(ctx context.Context, conn *pgconn.PgConn, c *advCase) []advResult {
		return advCursor(ctx, conn, c, "CURSOR")
	}}
	pathBinaryCursor = advPath{"binary-cursor", func(ctx context.Context, conn *pgconn.PgConn, c *advCase) []advResult {
		return advCursor(ctx, conn, c, "BINARY CURSOR")
	}}
	pathCopyQuery = advPath{"copy-query", func(ctx context.Context, conn *pgconn.PgConn, c *advCase) []advResult {
		return advCopyTo(ctx, conn, "COPY ("+c.sql+") TO STDOUT", "attack")
	}}
	pathMulti = advPath{"multi-statement", func(ctx context.Context, conn *pgconn.PgConn, c *advCase) []advResult {
		return advExec(ctx, conn, "SELECT 1; "+c.sql, "attack")
	}}
	// pathSimpleTemplated sends, before the attack, the same text with
	// other constants, so that the attack is answered by the statement
	// template of its shape (rewrite/template.go) when it has one.
	pathSimpleTemplated = advPath{"simple-templated", func(ctx context.Context, conn *pgconn.PgConn, c *advCase) []advResult {
		out := advExec(ctx, conn, advVaryLiterals(c.sql), "pre")
		return append(out, advExec(ctx, conn, c.sql, "attack")...)
	}}
	// pathCopyStatement runs a case whose SQL is itself a COPY.
	pathCopyStatement = advPath{"copy", func(ctx context.Context, conn *pgconn.PgConn, c *advCase) []advResult {
		return advCopyTo(ctx, conn, c.sql, "attack")
	}}
)

// advVaryLiterals returns sql with every constant a statement template
// can take replaced by another of its kind: strings by 'pgveil-variant',
// numbers by 7 (or 8 where the constant is 7).
func advVaryLiterals(sql string) string {
	var ls rewrite.LiteralScan
	if _, ok := rewrite.Normalize(nil, sql, true, &ls); !ok {
		return sql
	}
	var b strings.Builder
	prev := 0
	for _, l := range ls.Lits {
		b.WriteString(sql[prev:l.Start])
		switch tok := sql[l.Start:l.End]; {
		case tok[0] == '\'':
			b.WriteString("'pgveil-variant'")
		case tok == "7":
			b.WriteString("8")
		default:
			b.WriteString("7")
		}
		prev = l.End
	}
	b.WriteString(sql[prev:])
	return b.String()
}

func advCursor(ctx context.Context, conn *pgconn.PgConn, c *advCase, kind string) []advResult {
	var out []advResult
	if !c.tx {
		out = append(out, advExec(ctx, conn, "BEGIN", "aux")...)
	}
	out = append(out, advExec(ctx, conn, "DECLARE adv_c "+kind+" FOR "+c.sql, "attack")...)
	out = append(out, advExec(ctx, conn, "FETCH ALL FROM adv_c", "aux")...)
	if !c.tx {
		out = append(out, advExec(ctx, conn, "ROLLBACK", "aux")...)
	}
	return out
}

// Path sets by kind of statement.
var (
	// queryPaths: a SELECT, VALUES or TABLE, which every wrapper accepts.
	queryPaths = []advPath{pathSimple, pathSimpleTemplated, pathExtText, pathExtBinary, pathPrepare, pathCursor, pathBinaryCursor, pathCopyQuery, pathMulti}
	// dmlPaths: INSERT/UPDATE/DELETE (DECLARE takes only queries, COPY only
	// with RETURNING).
	dmlPaths          = []advPath{pathSimple, pathExtText, pathExtBinary, pathPrepare, pathMulti}
	dmlReturningPaths = []advPath{pathSimple, pathExtText, pathExtBinary, pathPrepare, pathCopyQuery, pathMulti}
	// utilityPaths: other statements.
	utilityPaths = []advPath{pathSimple, pathExtText, pathExtBinary, pathMulti}
	// copyPaths: a COPY ... TO STDOUT statement.
	copyPaths = []advPath{pathCopyStatement, pathExtText, pathMulti}
	// paramPaths: statements with $n parameters.
	paramPaths = []advPath{pathExtText, pathExtBinary}
)

// advWant is a case's expected outcome.
type advWant struct {
	kind string // "masked", "refused", "syntax", "code", "connect-refused", "refused-or-rows"
	code string
	rows []string // for "refused-or-rows"
}

var (
	advMasked         = advWant{kind: "masked"}
	advRefused        = advWant{kind: "refused", code: "42501"}
	advSyntax         = advWant{kind: "syntax", code: "42601"}
	advConnectRefused = advWant{kind: "connect-refused", code: "28000"}
)

func advCode(code string) advWant { return advWant{kind: "code", code: code} }

// advRefusedOrRows expects a refusal or exactly these rows (as advRow
// prints them) from the attack: for statements whose masked answer cannot
// come from adv_ref, because PostgreSQL itself would run something the
// proxy must not.
func advRefusedOrRows(rows ...string) advWant {
	return advWant{kind: "refused-or-rows", code: "42501", rows: rows}
}

// advCase is one attack.
type advCase struct {
	name   string
	sql    string
	want   advWant
	paths  []advPath // nil: queryPaths
	pre    []advStep // run first on the same session, both through the proxy and directly
	params []string  // for paramPaths
	tx     bool      // run inside BEGIN ... ROLLBACK
	// ordered says the row order is part of the answer.
	ordered bool
	// refSQL, when set, is what the reference session runs instead of sql
	// (the server cannot run sql as such, the proxy rewrites it into this).
	refSQL string
	// refErr is the SQLSTATE the reference answer fails with, for masked
	// cases about errors ("" means it must succeed).
	refErr string
	// setup runs once before the case, as the superuser.
	setup func(t *testing.T)
	// login is the session user; "" means adv_analyst.
	login string
	// params of the startup message (e.g. "options").
	startup map[string]string
	// bug names the product defect the case demonstrates, if any (the
	// bug constants in adversarial_cases_test.go); such a case fails until
	// the product is fixed.
	bug string
}

// advSession runs a case on one path in a fresh session and returns the
// transcript and, for proxied sessions, the tap.
func advSession(ctx context.Context, f *advFixture, c *advCase, p advPath, viaProxy bool) ([]advResult, *advTap, error) {
	login := c.login
	if login == "" {
		login = advAnalyst
	}
	conn, tap, err := advConn(ctx, f, viaProxy, login, c.startup)
	if err != nil {
		return nil, tap, err
	}
	var out []advResult
	for _, s := range c.pre {
		out = append(out, s.run(ctx, conn)...)
	}
	if c.tx {
		out = append(out, advExec(ctx, conn, "BEGIN", "aux")...)
	}
	cc := *c
	if !viaProxy && c.refSQL != "" {
		cc.sql = c.refSQL
	}
	out = append(out, p.run(ctx, conn, &cc)...)
	if c.tx {
		out = append(out, advExec(ctx, conn, "ROLLBACK", "aux")...)
	}
	closeCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = conn.Close(closeCtx)
	return out, tap, nil
}

// advReportLeaks fails the test for every canary found in what the proxy
// sent through tap, one line per canary listing the forms found.
func advReportLeaks(t *testing.T, tap *advTap) {
	t.Helper()
	fromServer, fromClient := tap.captured()
	forms := map[string][]string{}
	sample := map[string]string{}
	var order []string
	for _, l := range advScan(fromServer, fromClient) {
		if l.echo {
			t.Logf("canary form %s appears in the proxy's answer but the client sent it itself (echo, not a leak)", l.form)
			continue
		}
		canary, form, _ := strings.Cut(l.form, "/")
		if _, ok := forms[canary]; !ok {
			order = append(order, canary)
			sample[canary] = l.context
		}
		forms[canary] = append(forms[canary], form)
	}
	for _, canary := range order {
		t.Errorf("LEAK: canary %s reached the client (forms: %s), e.g. ...%q...", canary, strings.Join(forms[canary], ", "), sample[canary])
	}
}

// advShort abbreviates a very long SQL text for messages.
func advShort(sql string) string {
	if len(sql) > 300 {
		return sql[:300] + fmt.Sprintf("... (%d bytes)", len(sql))
	}
	return sql
}

// firstAttackError returns the first error among the attack's results.
func firstAttackError(rs []advResult) (advResult, bool) {
	for _, r := range rs {
		if r.label == "attack" && r.code != "" {
			return r, true
		}
	}
	return advResult{}, false
}

// runAdvCase runs c on every path as subtests.
func runAdvCase(t *testing.T, f *advFixture, c *advCase) {
	if c.bug != "" {
		// An open product bug, listed in the notes. The case stays
		// so that fixing the bug means deleting its tag, not writing it.
		t.Skipf("OPEN PRODUCT BUG: %s", c.bug)
	}
	if c.setup != nil {
		c.setup(t)
	}
	paths := c.paths
	if paths == nil {
		paths = queryPaths
	}
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			bugNote := "KNOWN PRODUCT BUG (reported to the lead): " + c.bug
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			defer func() {
				if t.Failed() && c.bug != "" {
					t.Log(bugNote)
				}
			}()
			got, tap, err := advSession(ctx, f, c, p, true)
			if tap != nil {
				advReportLeaks(t, tap)
			}
			if c.want.kind == "connect-refused" {
				if err == nil {
					t.Fatalf("session was accepted; want it refused with %s", c.want.code)
				}
				if code := serverCode(err); code != c.want.code {
					t.Fatalf("connect error %v (SQLSTATE %q); want %s", err, code, c.want.code)
				}
				return
			}
			if err != nil {
				t.Fatalf("connect through the proxy: %v", err)
			}
			gotText := advTranscript(got, c.ordered)
			switch c.want.kind {
			case "masked":
				ref, _, err := advSession(ctx, f, c, p, false)
				if err != nil {
					t.Fatalf("reference session: %v", err)
				}
				// A reference answer that fails unexpectedly (bad SQL for a
				// path, say) would make the comparison vacuous.
				first := ""
				for _, r := range ref {
					if r.label != "pre" && r.code != "" {
						first = r.code + " " + r.msg
						break
					}
				}
				if code, _, _ := strings.Cut(first, " "); code != c.refErr {
					t.Errorf("harness: the reference answer fails with %q, the case expects %q", first, c.refErr)
				}
				if refText := advTranscript(ref, c.ordered); refText != gotText {
					t.Errorf("the answer through the proxy differs from the answer over masked data\nSQL: %s\n--- through the proxy (adv):\n%s--- want, direct over masked data (adv_ref):\n%s", advShort(c.sql), gotText, refText)
				}
			case "refused", "syntax", "code":
				e, ok := firstAttackError(got)
				switch {
				case !ok:
					t.Errorf("the attack was not refused; want SQLSTATE %s\nSQL: %s\n--- through the proxy:\n%s", c.want.code, advShort(c.sql), gotText)
				case e.code != c.want.code:
					t.Errorf("the attack failed with %s %s; want SQLSTATE %s\nSQL: %s\n--- through the proxy:\n%s", e.code, e.msg, c.want.code, advShort(c.sql), gotText)
				case c.want.kind == "refused" && !strings.HasPrefix(e.msg, "pgveil: "):
					t.Errorf("42501 does not come from pgveil's rules: %s", e.msg)
				}
			case "refused-or-rows":
				if e, ok := firstAttackError(got); ok && e.code == c.want.code && strings.HasPrefix(e.msg, "pgveil: ") {
					break
				}
				var rows []string
				for _, r := range got {
					if r.label == "attack" {
						rows = append(rows, r.rows...)
					}
				}
				if !slices.Equal(rows, c.want.rows) {
					t.Errorf("the attack was neither refused nor answered with %v\nSQL: %s\n--- through the proxy:\n%s", c.want.rows, advShort(c.sql), gotText)
				}
			default:
				t.Fatalf("unknown expectation %q", c.want.kind)
			}
		})
	}
}

// TestAdversarial runs the whole suite against one fixture.
func TestAdversarial(t *testing.T) {
	f := advSetup(t)
	t.Run("control", func(t *testing.T) { advControls(t, f) })
	names := map[string]bool{}
	for i := range advCases {
		c := &advCases[i]
		if names[c.name] {
			t.Fatalf("duplicate case name %s", c.name)
		}
		names[c.name] = true
		t.Run("case/"+c.name, func(t *testing.T) { runAdvCase(t, f, c) })
	}
	t.Run("protocol", func(t *testing.T) { advProtocolCases(t, f) })
	// The simple-templated path must really have exercised templates.
	if n := f.proxy.srv.Stats().PlanTemplateHits; n < 20 {
		t.Errorf("only %d attacks were answered by a statement template", n)
	} else {
		t.Logf("%d attacks answered by a statement template", n)
	}
}

// advRaw is a hijacked session driven message by message.
type advRaw struct {
	conn net.Conn
	fe   *pgproto3.Frontend
}

// advRawSession connects with pgconn (through a tap to the proxy, or
// directly to adv_ref) and takes the connection over.
func advRawSession(ctx context.Context, f *advFixture, viaProxy bool) (*advRaw, *advTap, error) {
	conn, tap, err := advConn(ctx, f, viaProxy, advAnalyst, nil)
	if err != nil {
		return nil, tap, err
	}
	hc, err := conn.Hijack()
	if err != nil {
		return nil, tap, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = hc.Conn.SetDeadline(dl)
	}
	return &advRaw{conn: hc.Conn, fe: hc.Frontend}, tap, nil
}

func (r *advRaw) send(msgs ...pgproto3.FrontendMessage) error {
	for _, m := range msgs {
		r.fe.Send(m)
	}
	return r.fe.Flush()
}

// sendBytes writes a hand-made message.
func (r *advRaw) sendBytes(b []byte) error {
	_, err := r.conn.Write(b)
	return err
}

// until reads messages until n ReadyForQuery messages arrived and returns
// a transcript line per message.
func (r *advRaw) until(n int) ([]string, error) {
	var out []string
	for n > 0 {
		msg, err := r.fe.Receive()
		if err != nil {
			return out, err
		}
		switch m := msg.(type) {
		case *pgproto3.RowDescription:
			var names []string
			for _, f := range m.Fields {
				names = append(names, string(f.Name))
			}
			out = append(out, "T "+strings.Join(names, ","))
		case *pgproto3.DataRow:
			out = append(out, "D "+advRow(m.Values))
		case *pgproto3.CommandComplete:
			out = append(out, "C "+string(m.CommandTag))
		case *pgproto3.ErrorResponse:
			out = append(out, "E "+m.Code+" "+m.Message)
		case *pgproto3.FunctionCallResponse:
			out = append(out, fmt.Sprintf("V %q", m.Result))
		case *pgproto3.ReadyForQuery:
			out = append(out, "Z "+string(m.TxStatus))
			n--
		case *pgproto3.ParseComplete:
			out = append(out, "1")
		case *pgproto3.BindComplete:
			out = append(out, "2")
		case *pgproto3.NoData:
			out = append(out, "n")
		case *pgproto3.EmptyQueryResponse:
			out = append(out, "I")
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus, *pgproto3.ParameterDescription:
		default:
			out = append(out, fmt.Sprintf("%T", msg))
		}
	}
	return out, nil
}

func (r *advRaw) close() {
	_ = r.send(&pgproto3.Terminate{})
	_ = r.conn.Close()
}

// advRawCase is a protocol-level attack: run drives a raw session and
// returns its transcript; check judges the transcripts through the proxy
// and (when the case needs it) directly over masked data.
type advRawCase struct {
	name  string
	run   func(r *advRaw) ([]string, error)
	ref   bool // also run directly over adv_ref and pass that transcript to check
	check func(got, ref []string) error
	bug   string
}

func advProtocolCases(t *testing.T, f *advFixture) {
	for _, c := range advRawCases(t, f) {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			defer func() {
				if t.Failed() && c.bug != "" {
					t.Log("KNOWN PRODUCT BUG (reported to the lead): " + c.bug)
				}
			}()
			run := func(viaProxy bool) ([]string, *advTap) {
				r, tap, err := advRawSession(ctx, f, viaProxy)
				if err != nil {
					t.Fatalf("connect: %v", err)
				}
				tr, err := c.run(r)
				r.close()
				if err != nil && !errors.Is(err, io.EOF) {
					tr = append(tr, "ERR "+err.Error())
				}
				return tr, tap
			}
			got, tap := run(true)
			advReportLeaks(t, tap)
			var ref []string
			if c.ref {
				ref, _ = run(false)
			}
			if err := c.check(got, ref); err != nil {
				t.Errorf("%v\n--- through the proxy:\n%s\n--- direct over masked data:\n%s", err, strings.Join(got, "\n"), strings.Join(ref, "\n"))
			}
		})
	}
}
