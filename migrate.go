package main

// This file implements "pgveil migrate encrypt|decrypt|rewrap": it converts
// the stored values of an encrypted policy column in place, in batches,
// each batch in its own transaction, so that a column can be brought under
// (or out of) encryption, or moved to a key's newest version, while the
// application keeps running.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/pflag"

	"github.com/pgveil/pgveil/catalog"
	"github.com/pgveil/pgveil/rules"
	"github.com/pgveil/pgveil/vaultkms"
)

const migrateUsage = `Usage:
  pgveil migrate encrypt|decrypt|rewrap --upstream URL --policy FILE --table [SCHEMA.]TABLE --column COLUMN
                 (--keyring FILE | --vault-addr URL) [--batch 1000] [--dry-run] [--progress auto|always|never]

  encrypt  stores the column's plaintext values as ciphertext (values that already are ciphertext are left alone)
  decrypt  stores the column's ciphertext values as plaintext (other values are left alone)
  rewrap   moves ciphertext to the newest version of the column's key (values at the newest version are left alone)

The column must be an encrypted column of the policy, which gives its key, mode and searchability.
Every batch is its own transaction; interrupting loses nothing and running again continues.

Flags:
`

// migrateOp is what migrate does to each value.
type migrateOp string

// The migrate operations.
const (
	opEncrypt migrateOp = "encrypt"
	opDecrypt migrateOp = "decrypt"
	opRewrap  migrateOp = "rewrap"
)

// Limits and defaults of migrate.
const (
	// defaultMigrateBatch is the default --batch: Vault transit takes up to
	// 1000 values per batch_input request (docs/encryption.md), so one batch
	// is one request.
	defaultMigrateBatch = 1000
	// maxMigrateBatch bounds --batch: a batch's row locks and values are held
	// in one transaction and in memory.
	maxMigrateBatch = 100000
	// migrateRetryRounds is how often rows that other transactions kept
	// locked are tried again after the pass over the table.
	migrateRetryRounds = 8
	// migrateRetryDelay is the first wait before such a retry; it doubles
	// each round (0.1 s, 0.2 s, ... 12.8 s: about 25 s in all).
	migrateRetryDelay = 100 * time.Millisecond
	// progressInterval is how often the progress bar is redrawn at most.
	progressInterval = 200 * time.Millisecond
)

// errLockedRows means rows stayed locked by other transactions through
// every retry: they were not converted, and running again will.
var errLockedRows = errors.New("rows stayed locked by other transactions")

// migrateConfig is one migrate run.
type migrateConfig struct {
	// Op is encrypt, decrypt or rewrap.
	Op migrateOp
	// Upstream is the postgres:// URL of an account that can SELECT and
	// UPDATE the table.
	Upstream string
	// Table is the table; Column the encrypted column in it.
	Table  catalog.Name
	Column string
	// Col is the key service's view of the column (from the policy).
	Col vaultkms.Column
	// Service is the key service; the caller closes it.
	Service vaultkms.Service
	// Batch is how many values one transaction converts (> 0).
	Batch int
	// DryRun only counts what would change.
	DryRun bool
	// LimitBatches stops after that many batches; 0 means no limit.
	LimitBatches int
	// Progress, if not nil, receives the progress bar (a terminal).
	Progress io.Writer
	// AfterBatch, if not nil, is called after each committed batch (and
	// after each page of a dry run) with the counts so far.
	AfterBatch func(migrateStats)
	// RetryRounds and RetryDelay control the retries of locked rows; zero
	// means migrateRetryRounds and migrateRetryDelay.
	RetryRounds int
	RetryDelay  time.Duration
}

// migrateStats are the counts of a migrate run.
type migrateStats struct {
	// Rows is the number of rows of the table when the run started, Nulls
	// those whose value is NULL (left as they are).
	Rows, Nulls int64
	// Scanned is how many non-NULL values were examined.
	Scanned int64
	// Converted is how many values were converted (or, in a dry run,
	// would be).
	Converted int64
	// Done is how many values needed nothing: already ciphertext
	// (encrypt), not ciphertext (decrypt), at the newest version (rewrap).
	Done int64
	// Foreign counts, for rewrap, values that are not ciphertext at all.
	Foreign int64
	// Kept counts values another writer changed between the batch's
	// reading and writing; the writer's value was kept.
	Kept int64
	// Locked counts rows another transaction had locked when their batch
	// ran; they are retried at the end. Unconverted is how many of them
	// stayed locked and were left as they are.
	Locked, Unconverted int64
	// Batches is the number of committed batches.
	Batches int
	// Elapsed is the run time so far.
	Elapsed time.Duration
}

// pkColumn is a column of the table's primary key.
type pkColumn struct {
	name, typ string
}

// migrator converts one column.
type migrator struct {
	cfg    migrateConfig
	conn   *pgx.Conn
	table  string // the quoted table aliased t, with ONLY for a plain table
	col    string // the quoted column
	pk     []pkColumn
	latest int // the key's newest version (rewrap)
	start  time.Time
	stats  migrateStats
	// started is set once the table was found and counted: from then on
	// run's outcome is worth a summary line.
	started bool
	bar     *progressBar
}

// newMigrator validates cfg.
func newMigrator(cfg migrateConfig) (*migrator, error) {
	switch cfg.Op {
	case opEncrypt, opDecrypt, opRewrap:
	default:
		return nil, usagef("unknown migrate operation %q (want encrypt, decrypt or rewrap)", cfg.Op)
	}
	switch {
	case cfg.Upstream == "":
		return nil, usagef("missing --upstream")
	case cfg.Table.Name == "":
		return nil, usagef("missing --table")
	case cfg.Column == "":
		return nil, usagef("missing --column")
	case cfg.Batch < 1 || cfg.Batch > maxMigrateBatch:
		return nil, usagef("--batch must be between 1 and %d", maxMigrateBatch)
	case cfg.LimitBatches < 0:
		return nil, usagef("--limit-batches must not be negative")
	case cfg.Service == nil:
		return nil, errors.New("migrate: no key service")
	}
	if err := cfg.Col.Validate(); err != nil {
		return nil, usagef("%v", err)
	}
	if cfg.RetryRounds == 0 {
		cfg.RetryRounds = migrateRetryRounds
	}
	if cfg.RetryDelay == 0 {
		cfg.RetryDelay = migrateRetryDelay
	}
	return &migrator{cfg: cfg}, nil
}

// runMigrate implements "pgveil migrate encrypt|decrypt|rewrap".
func runMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, closeSvc, err := parseMigrate(ctx, args, stdout, stderr)
	if err != nil {
		return err
	}
	defer closeSvc()
	m, err := newMigrator(cfg)
	if err != nil {
		return err
	}
	st, err := m.run(ctx)
	if m.started {
		fmt.Fprintln(stdout, m.summary(st, err))
	}
	return err
}

// parseMigrate turns migrate's arguments into a config with an open key
// service; the caller calls the returned function to close it.
func parseMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) (migrateConfig, func(), error) {
	var cfg migrateConfig
	none := func() {}
	if len(args) == 0 {
		return cfg, none, usagef("migrate: missing operation (encrypt, decrypt or rewrap)")
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, migrateUsage)
		fmt.Fprint(stdout, migrateFlags(&cfg, new(keyFlags), new(string), new(string), new(string), new(string)).FlagUsages())
		return cfg, none, pflag.ErrHelp
	case string(opEncrypt), string(opDecrypt), string(opRewrap):
		cfg.Op = migrateOp(args[0])
	default:
		return cfg, none, usagef("unknown migrate operation %q (want encrypt, decrypt or rewrap)", args[0])
	}
	var keys keyFlags
	var policyFile, table, column, progress string
	fs := migrateFlags(&cfg, &keys, &policyFile, &table, &column, &progress)
	if err := parseFlags(fs, args[1:], stdout); err != nil {
		return cfg, none, err
	}
	if cfg.Upstream == "" {
		return cfg, none, usagef("missing --upstream")
	}
	if u, err := url.Parse(cfg.Upstream); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return cfg, none, usagef("invalid --upstream: want postgres://user[:password]@host[:port]/db")
	}
	if table == "" {
		return cfg, none, usagef("missing --table")
	}
	if column == "" {
		return cfg, none, usagef("missing --column")
	}
	var err error
	if cfg.Table, err = parseTableName(table); err != nil {
		return cfg, none, usagef("invalid --table: %v", err)
	}
	if cfg.Column, err = parseIdent(column); err != nil {
		return cfg, none, usagef("invalid --column: %v", err)
	}
	switch progress {
	case "always":
		cfg.Progress = stderr
	case "auto":
		if isTerminal(stderr) {
			cfg.Progress = stderr
		}
	case "never":
	default:
		return cfg, none, usagef("invalid --progress %q (want auto, always or never)", progress)
	}
	if cfg.Batch < 1 || cfg.Batch > maxMigrateBatch {
		return cfg, none, usagef("--batch must be between 1 and %d", maxMigrateBatch)
	}
	if cfg.LimitBatches < 0 {
		return cfg, none, usagef("--limit-batches must not be negative")
	}
	pol, err := loadPolicy(policyFile, stderr)
	if err != nil {
		return cfg, none, err
	}
	key := rules.ColumnKey{Schema: cfg.Table.Schema, Table: cfg.Table.Name, Column: cfg.Column}
	rule := pol.Column(key)
	if rule == nil || rule.Encrypted == nil {
		return cfg, none, usagef("%s is not an encrypted column of policy %s (declare it under columns: with encrypted: { key: ... })", columnName(key), policyFile)
	}
	cfg.Col = columnOf(rule)
	if err := cfg.Col.Validate(); err != nil {
		return cfg, none, usagef("policy %s: %v", policyFile, err)
	}
	svc, err := keys.open(ctx, nil)
	if err != nil {
		return cfg, none, err
	}
	cfg.Service = svc
	return cfg, func() { _ = svc.Close() }, nil
}

// migrateFlags declares migrate's flags.
func migrateFlags(cfg *migrateConfig, keys *keyFlags, policyFile, table, column, progress *string) *pflag.FlagSet {
	fs := pflag.NewFlagSet("migrate", pflag.ContinueOnError)
	fs.StringVar(&cfg.Upstream, "upstream", "", "the database, as an account that can SELECT and UPDATE the table: postgres://owner:secret@host:5432/db (required)")
	fs.StringVar(policyFile, "policy", "", "policy file (YAML) declaring the column encrypted: it gives the key, mode and searchability (required)")
	keys.register(fs)
	fs.StringVar(table, "table", "", "the table, [schema.]table (schema public by default; quote mixed-case names)")
	fs.StringVar(column, "column", "", "the encrypted column")
	fs.IntVar(&cfg.Batch, "batch", defaultMigrateBatch, "values converted per transaction (one key-service batch call)")
	fs.BoolVar(&cfg.DryRun, "dry-run", false, "only count the values that would change")
	fs.IntVar(&cfg.LimitBatches, "limit-batches", 0, "stop after this many batches (0: no limit); running again continues")
	fs.StringVar(progress, "progress", "auto", "progress bar on stderr: auto (when stderr is a terminal), always or never")
	return fs
}

// parseTableName parses "[schema.]table" like PostgreSQL: unquoted names
// are folded to lower case, double-quoted ones kept as written.
func parseTableName(s string) (catalog.Name, error) {
	parts, err := splitIdents(s)
	if err != nil {
		return catalog.Name{}, err
	}
	switch len(parts) {
	case 1:
		return catalog.Name{Schema: "public", Name: parts[0]}, nil
	case 2:
		return catalog.Name{Schema: parts[0], Name: parts[1]}, nil
	}
	return catalog.Name{}, fmt.Errorf("want [schema.]table, got %d dotted parts", len(parts))
}

// parseIdent parses one identifier, folded or quoted like parseTableName.
func parseIdent(s string) (string, error) {
	parts, err := splitIdents(s)
	if err != nil {
		return "", err
	}
	if len(parts) != 1 {
		return "", errors.New("want a column name (quote it if it has a dot)")
	}
	return parts[0], nil
}

// splitIdents splits a dotted name into identifiers.
func splitIdents(s string) ([]string, error) {
	var parts []string
	for i := 0; ; {
		var part string
		if i < len(s) && s[i] == '"' {
			var ok bool
			if part, i, ok = rules.ScanQuotedIdent(s, i); !ok {
				return nil, errors.New("unterminated quoted identifier")
			}
		} else {
			j := strings.IndexByte(s[i:], '.')
			if j < 0 {
				j = len(s) - i
			}
			part, i = strings.ToLower(strings.TrimSpace(s[i:i+j])), i+j
		}
		if part == "" {
			return nil, errors.New("empty name")
		}
		parts = append(parts, part)
		if i == len(s) {
			return parts, nil
		}
		if s[i] != '.' {
			return nil, fmt.Errorf("unexpected %q after a quoted identifier", s[i])
		}
		i++
	}
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// run converts the column and returns the counts.
func (m *migrator) run(ctx context.Context) (migrateStats, error) {
	m.start = time.Now()
	conn, err := connectMigrate(ctx, m.cfg.Upstream)
	if err != nil {
		return m.stats, err
	}
	m.conn = conn
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if err := m.inspect(ctx); err != nil {
		return m.stats, err
	}
	// The key must exist before any row is touched; rewrap needs its
	// newest version.
	info, err := m.cfg.Service.KeyInfo(ctx, m.cfg.Col.Key)
	if err != nil {
		return m.stats, fmt.Errorf("key %q: %w", m.cfg.Col.Key, err)
	}
	if !info.Exists {
		return m.stats, fmt.Errorf("key %q (column %s): no such key in the key service", m.cfg.Col.Key, m.colName())
	}
	m.latest = info.LatestVersion
	if err := conn.QueryRow(ctx, "SELECT count(*), count(*) - count(t."+m.col+") FROM "+m.table).Scan(&m.stats.Rows, &m.stats.Nulls); err != nil {
		return m.stats, fmt.Errorf("count rows: %w", err)
	}
	m.started = true
	if m.cfg.Progress != nil {
		m.bar = &progressBar{w: m.cfg.Progress, total: m.stats.Rows - m.stats.Nulls}
		defer m.bar.finish()
	}
	return m.stats, m.pass(ctx)
}

// connectMigrate connects to upstream, naming the session for
// pg_stat_activity.
func connectMigrate(ctx context.Context, upstream string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(upstream)
	if err != nil {
		return nil, usagef("invalid --upstream: %v", err)
	}
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "pgveil-migrate"
	}
	cctx, cancel := context.WithTimeout(ctx, upstreamTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	return conn, nil
}

// inspect finds the table, checks the column's type and the account's
// privileges, and reads the primary key.
func (m *migrator) inspect(ctx context.Context) error {
	name := m.cfg.Table
	var oid uint32
	var kind string
	err := m.conn.QueryRow(ctx, `SELECT c.oid, c.relkind::text FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`,
		name.Schema, name.Name).Scan(&oid, &kind)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("table %s: no such relation", name)
	}
	if err != nil {
		return fmt.Errorf("table %s: %w", name, err)
	}
	switch kind {
	case "r":
		// ONLY: inheritance children are tables of their own, with their
		// own classification and primary key.
		m.table = "ONLY " + quoteName(name) + " AS t"
	case "p":
		m.table = quoteName(name) + " AS t"
	default:
		return fmt.Errorf("%s is a %s, not a table: migrate converts the table it stores its rows in", name, kindName(catalog.RelKind(kind[0])))
	}
	m.col = quoteIdent(m.cfg.Column)

	var typ string
	var base uint32
	err = m.conn.QueryRow(ctx, `SELECT pg_catalog.format_type(a.atttypid, a.atttypmod),
			CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END
		FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
		WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped`, oid, m.cfg.Column).Scan(&typ, &base)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("table %s has no column %s", name, catalog.Name{Name: m.cfg.Column})
	}
	if err != nil {
		return fmt.Errorf("column %s: %w", m.cfg.Column, err)
	}
	if !textType(base) {
		return fmt.Errorf("column %s has type %s: ciphertext is text, so an encrypted column must be text or varchar (ALTER TABLE %s ALTER COLUMN %s TYPE text)",
			m.colName(), typ, quoteName(name), m.col)
	}

	rows, err := m.conn.Query(ctx, `SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)
		FROM pg_catalog.pg_index i
		CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
		JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord`, oid)
	if err != nil {
		return fmt.Errorf("primary key of %s: %w", name, err)
	}
	m.pk, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (pkColumn, error) {
		var c pkColumn
		err := r.Scan(&c.name, &c.typ)
		return c, err
	})
	if err != nil {
		return fmt.Errorf("primary key of %s: %w", name, err)
	}
	if len(m.pk) == 0 {
		// ctid would do for paging, but an UPDATE moves a row to a new
		// ctid, so rows could be visited twice or, after VACUUM FULL or
		// CLUSTER, missed; a key is what makes resuming exact.
		return fmt.Errorf("table %s has no primary key: migrate refuses it, because it pages through the rows by primary key to convert each exactly once and resume where it stopped (add one, e.g. ALTER TABLE %s ADD PRIMARY KEY (id))", name, quoteName(name))
	}
	for _, c := range m.pk {
		if c.name == m.cfg.Column {
			return fmt.Errorf("column %s is part of the primary key of %s: an encrypted column cannot be a key migrate pages by", m.colName(), name)
		}
	}

	privs := []string{"SELECT"}
	if !m.cfg.DryRun {
		privs = append(privs, "UPDATE")
	}
	for _, priv := range privs {
		var ok bool
		if err := m.conn.QueryRow(ctx, `SELECT pg_catalog.has_column_privilege($1::oid, $2::text, $3::text)`, oid, m.cfg.Column, priv).Scan(&ok); err != nil {
			return fmt.Errorf("privileges on %s: %w", name, err)
		}
		if !ok {
			return fmt.Errorf("the --upstream account lacks %s on %s", priv, m.colName())
		}
	}
	return nil
}

// colName is the column's name for messages: schema.table.column.
func (m *migrator) colName() string {
	return columnName(rules.ColumnKey{Schema: m.cfg.Table.Schema, Table: m.cfg.Table.Name, Column: m.cfg.Column})
}

// textType reports whether a column of the type with this OID can hold
// ciphertext: text (25) or varchar (1043), pg_type.dat.
func textType(oid uint32) bool { return oid == 25 || oid == 1043 }

// pkList is the primary key columns, qualified with alias if not "".
func (m *migrator) pkList(alias string) string {
	parts := make([]string, len(m.pk))
	for i, c := range m.pk {
		parts[i] = quoteIdent(c.name)
		if alias != "" {
			parts[i] = alias + "." + parts[i]
		}
	}
	return strings.Join(parts, ", ")
}

// pkText selects the primary key columns of t as text. (ORDER BY must
// name t's columns qualified: unqualified, it would sort by these text
// outputs, which have the same names.)
func (m *migrator) pkText() string {
	parts := make([]string, len(m.pk))
	for i, c := range m.pk {
		parts[i] = "t." + quoteIdent(c.name) + "::text"
	}
	return strings.Join(parts, ", ")
}

// unnestKeys is a FROM item of the keys in text-array parameters $1,
// $2, ..., cast to the key types, followed by the arrays in extra.
func (m *migrator) unnestKeys(extra ...string) string {
	args := make([]string, len(m.pk), len(m.pk)+len(extra))
	for i, c := range m.pk {
		args[i] = fmt.Sprintf("$%d::text[]::%s[]", i+1, c.typ)
	}
	return "unnest(" + strings.Join(append(args, extra...), ", ") + ")"
}

// row is one row of the table: its primary key as text and its value.
type row struct {
	key   []string
	value []byte
}

// keyArgs returns the keys of rows as one []string per key column.
func (m *migrator) keyArgs(rows []row) []any {
	out := make([]any, len(m.pk))
	for i := range m.pk {
		col := make([]string, len(rows))
		for j, r := range rows {
			col[j] = r.key[i]
		}
		out[i] = col
	}
	return out
}

// scanRows reads rows of (key columns as text, value).
func (m *migrator) scanRows(rows pgx.Rows) ([]row, error) {
	var out []row
	n := len(m.pk)
	for rows.Next() {
		vals := rows.RawValues()
		r := row{key: make([]string, n)}
		for i := range n {
			r.key[i] = string(vals[i])
		}
		if len(vals) > n && vals[n] != nil {
			r.value = append([]byte{}, vals[n]...)
		}
		out = append(out, r)
	}
	rows.Close()
	return out, rows.Err()
}

// needs reports whether a value needs converting, and counts why not.
func (m *migrator) needs(v []byte, st *migrateStats) bool {
	svc, col := m.cfg.Service, m.cfg.Col
	switch m.cfg.Op {
	case opEncrypt:
		if svc.IsCiphertext(col, v) {
			st.Done++
			return false
		}
	case opDecrypt:
		if !svc.IsCiphertext(col, v) {
			st.Done++
			return false
		}
	case opRewrap:
		if !svc.IsCiphertext(col, v) {
			st.Foreign++
			return false
		}
		if ver, ok := ciphertextVersion(v); ok && ver >= m.latest {
			st.Done++
			return false
		}
	}
	return true
}

// ciphertextVersion returns the key version a ciphertext shows:
// "vault:v<N>:...", "local:v<N>:...", and for envelope values
// "pgveil:e1:" followed by one of those (the wrapped data key), as
// docs/encryption.md describes.
func ciphertextVersion(v []byte) (int, bool) {
	s := string(v)
	s = strings.TrimPrefix(s, "pgveil:e1:")
	for _, src := range []string{"vault:v", "local:v"} {
		if rest, ok := strings.CutPrefix(s, src); ok {
			i := strings.IndexByte(rest, ':')
			if i <= 0 || i > 9 {
				return 0, false
			}
			n, err := strconv.Atoi(rest[:i])
			return n, err == nil && n > 0
		}
	}
	return 0, false
}

// pass pages through the table by primary key, converting batches, then
// retries the rows that were locked.
func (m *migrator) pass(ctx context.Context) error {
	var last []string
	var locked []row
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if m.limitReached() {
			return nil
		}
		cand, next, end, err := m.collect(ctx, last)
		if err != nil {
			return err
		}
		last = next
		if m.cfg.DryRun {
			m.stats.Converted += int64(len(cand))
			m.progress()
		} else if len(cand) > 0 {
			still, err := m.batch(ctx, cand)
			if err != nil {
				return err
			}
			locked = append(locked, still...)
		}
		if end {
			break
		}
	}
	// Rows other transactions had locked: try again, waiting longer each
	// round, until none is left or the rounds run out.
	delay := m.cfg.RetryDelay
	for round := 0; len(locked) > 0 && round < m.cfg.RetryRounds; round++ {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay *= 2
		var still []row
		for i := 0; i < len(locked); i += m.cfg.Batch {
			if m.limitReached() {
				return nil
			}
			more, err := m.batch(ctx, locked[i:min(i+m.cfg.Batch, len(locked))])
			if err != nil {
				return err
			}
			still = append(still, more...)
		}
		locked = still
	}
	if len(locked) > 0 {
		m.stats.Unconverted = int64(len(locked))
		return fmt.Errorf("%d %s: %w; run again to convert them", len(locked), pluralWord(len(locked), "row"), errLockedRows)
	}
	return nil
}

func (m *migrator) limitReached() bool {
	return m.cfg.LimitBatches > 0 && m.stats.Batches >= m.cfg.LimitBatches
}

// collect reads pages of rows after key last, without locking them, until
// it has Batch values that need converting or reaches the end of the
// table. It returns them, the key to continue after, and whether the end
// was reached.
func (m *migrator) collect(ctx context.Context, last []string) (cand []row, next []string, end bool, err error) {
	for {
		q := "SELECT " + m.pkText() + ", t." + m.col + " FROM " + m.table + " WHERE t." + m.col + " IS NOT NULL"
		var args []any
		if last != nil {
			ph := make([]string, len(m.pk))
			for i, c := range m.pk {
				ph[i] = fmt.Sprintf("$%d::%s", i+1, c.typ)
				args = append(args, last[i])
			}
			q += " AND (" + m.pkList("t") + ") > (" + strings.Join(ph, ", ") + ")"
		}
		q += " ORDER BY " + m.pkList("t") + " LIMIT " + strconv.Itoa(m.cfg.Batch)
		rows, err := m.conn.Query(ctx, q, args...)
		if err != nil {
			return nil, nil, false, fmt.Errorf("read %s: %w", m.cfg.Table, err)
		}
		page, err := m.scanRows(rows)
		if err != nil {
			return nil, nil, false, fmt.Errorf("read %s: %w", m.cfg.Table, err)
		}
		for _, r := range page {
			m.stats.Scanned++
			last = r.key
			if m.needs(r.value, &m.stats) {
				cand = append(cand, r)
				if len(cand) == m.cfg.Batch {
					return cand, last, false, nil
				}
			}
		}
		if len(page) < m.cfg.Batch {
			return cand, last, true, nil
		}
		if m.bar != nil {
			// Pages of values that need nothing can take a while.
			m.bar.update(m.stats.Scanned, time.Since(m.start))
		}
		if err := ctx.Err(); err != nil {
			return nil, nil, false, err
		}
	}
}

// batch converts the rows in one transaction: it locks those not locked
// by another transaction (and returns the others, to retry), re-reads
// their values, converts those that still need it in one key-service
// call, and writes them back guarded by the value it read.
func (m *migrator) batch(ctx context.Context, cand []row) (locked []row, err error) {
	tx, err := m.conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = tx.Rollback(rctx)
		}
	}()
	keys := m.keyArgs(cand)
	q := "SELECT " + m.pkText() + ", t." + m.col + " FROM " + m.table + " WHERE (" + m.pkList("t") + ") IN (SELECT * FROM " +
		m.unnestKeys() + ") ORDER BY " + m.pkList("t") + " FOR UPDATE OF t SKIP LOCKED"
	rows, err := tx.Query(ctx, q, keys...)
	if err != nil {
		return nil, fmt.Errorf("lock rows of %s: %w", m.cfg.Table, err)
	}
	got, err := m.scanRows(rows)
	if err != nil {
		return nil, fmt.Errorf("lock rows of %s: %w", m.cfg.Table, err)
	}

	// Rows not returned are locked by another transaction, or gone
	// (deleted, or their key changed): only the first are retried.
	if len(got) < len(cand) {
		have := make(map[string]bool, len(got))
		for _, r := range got {
			have[strings.Join(r.key, "\x00")] = true
		}
		var missing []row
		for _, r := range cand {
			if !have[strings.Join(r.key, "\x00")] {
				missing = append(missing, r)
			}
		}
		q := "SELECT " + m.pkText() + " FROM " + m.table + " WHERE (" + m.pkList("t") + ") IN (SELECT * FROM " + m.unnestKeys() + ")"
		rows, err := tx.Query(ctx, q, m.keyArgs(missing)...)
		if err != nil {
			return nil, fmt.Errorf("find locked rows of %s: %w", m.cfg.Table, err)
		}
		if locked, err = m.scanRows(rows); err != nil {
			return nil, fmt.Errorf("find locked rows of %s: %w", m.cfg.Table, err)
		}
		m.stats.Locked += int64(len(locked))
	}

	// Values may have changed since they were read: check them again.
	var st migrateStats
	var todo []row
	var in [][]byte
	for _, r := range got {
		if r.value != nil && m.needs(r.value, &st) {
			todo = append(todo, r)
			in = append(in, r.value)
		}
	}
	m.stats.Kept += st.Done + st.Foreign
	if len(todo) > 0 {
		out, err := m.convert(ctx, in)
		if err != nil {
			return nil, err
		}
		args := m.keyArgs(todo)
		olds, news := make([]string, len(todo)), make([]string, len(todo))
		for i, r := range todo {
			olds[i], news[i] = string(r.value), string(out[i])
		}
		n := len(m.pk)
		args = append(args, olds, news)
		cols := m.pkList("") + ", old, new"
		join := make([]string, n)
		for i, c := range m.pk {
			join[i] = "t." + quoteIdent(c.name) + " = v." + quoteIdent(c.name)
		}
		u := "UPDATE " + m.table + " SET " + m.col + " = v.new FROM " +
			m.unnestKeys(fmt.Sprintf("$%d::text[]", n+1), fmt.Sprintf("$%d::text[]", n+2)) + " AS v(" + cols + ")" +
			" WHERE " + strings.Join(join, " AND ") + " AND t." + m.col + " = v.old"
		tag, err := tx.Exec(ctx, u, args...)
		if err != nil {
			return nil, fmt.Errorf("update %s: %w", m.cfg.Table, err)
		}
		m.stats.Converted += tag.RowsAffected()
		m.stats.Kept += int64(len(todo)) - tag.RowsAffected()
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	m.stats.Batches++
	m.progress()
	return locked, nil
}

// convert runs the operation on values in one key-service call.
func (m *migrator) convert(ctx context.Context, in [][]byte) ([][]byte, error) {
	var out [][]byte
	var err error
	switch m.cfg.Op {
	case opEncrypt:
		out, err = m.cfg.Service.Encrypt(ctx, m.cfg.Col, in)
	case opDecrypt:
		out, err = m.cfg.Service.Decrypt(ctx, m.cfg.Col, in)
	case opRewrap:
		out, err = m.cfg.Service.Rewrap(ctx, m.cfg.Col, in)
	}
	if err != nil {
		return nil, fmt.Errorf("%s batch %d: %w", m.cfg.Op, m.stats.Batches+1, err)
	}
	if len(out) != len(in) {
		return nil, fmt.Errorf("%s batch %d: key service returned %d values for %d", m.cfg.Op, m.stats.Batches+1, len(out), len(in))
	}
	return out, nil
}

// progress updates the bar and calls the AfterBatch hook.
func (m *migrator) progress() {
	m.stats.Elapsed = time.Since(m.start)
	if m.bar != nil {
		m.bar.update(m.stats.Scanned, m.stats.Elapsed)
	}
	if m.cfg.AfterBatch != nil {
		m.cfg.AfterBatch(m.stats)
	}
}

// summary is the one line migrate prints at the end.
func (m *migrator) summary(st migrateStats, err error) string {
	st.Elapsed = time.Since(m.start)
	verb := map[migrateOp]string{opEncrypt: "encrypted", opDecrypt: "decrypted", opRewrap: "rewrapped"}[m.cfg.Op]
	done := map[migrateOp]string{opEncrypt: "already ciphertext", opDecrypt: "already plaintext", opRewrap: "already at the newest key version"}[m.cfg.Op]
	var b strings.Builder
	fmt.Fprintf(&b, "migrate %s %s: ", m.cfg.Op, m.colName())
	if m.cfg.DryRun {
		fmt.Fprintf(&b, "dry run: %d would be %s, ", st.Converted, verb)
	} else {
		fmt.Fprintf(&b, "%d %s, ", st.Converted, verb)
	}
	fmt.Fprintf(&b, "%d %s", st.Done, done)
	if st.Foreign > 0 {
		fmt.Fprintf(&b, ", %d not ciphertext (left as they are; run migrate encrypt)", st.Foreign)
	}
	fmt.Fprintf(&b, ", %d NULL; %d of %d values examined", st.Nulls, st.Scanned, st.Rows-st.Nulls)
	if st.Kept > 0 {
		fmt.Fprintf(&b, "; %d changed by another writer meanwhile (its value kept)", st.Kept)
	}
	if st.Locked > 0 {
		fmt.Fprintf(&b, "; %d found locked by another transaction (retried, %d left unconverted)", st.Locked, st.Unconverted)
	}
	rate := 0.0
	if s := st.Elapsed.Seconds(); s > 0 {
		rate = float64(st.Scanned) / s
	}
	batches := "batches"
	if st.Batches == 1 {
		batches = "batch"
	}
	fmt.Fprintf(&b, "; %d %s in %s (%.0f rows/s)", st.Batches, batches, st.Elapsed.Round(time.Millisecond), rate)
	switch {
	case err != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		b.WriteString("; interrupted: committed batches are kept, run again to continue")
	case err != nil:
		b.WriteString("; stopped by an error: committed batches are kept, run again to continue")
	case m.limitReached() && !m.cfg.DryRun:
		fmt.Fprintf(&b, "; stopped after %d batches (--limit-batches): run again to continue", st.Batches)
	}
	return b.String()
}

// progressBar draws "[####------] 3000/10000 rows 30% 1523 rows/s ETA 5s"
// on one terminal line.
type progressBar struct {
	w     io.Writer
	total int64
	last  time.Time
	drawn bool
}

func (p *progressBar) update(done int64, elapsed time.Duration) {
	now := time.Now()
	if p.drawn && now.Sub(p.last) < progressInterval && done < p.total {
		return
	}
	p.last, p.drawn = now, true
	const width = 30
	frac := 1.0
	if p.total > 0 {
		frac = min(float64(done)/float64(p.total), 1)
	}
	fill := int(frac * width)
	rate := 0.0
	if s := elapsed.Seconds(); s > 0 {
		rate = float64(done) / s
	}
	eta := "?"
	if rate > 0 {
		eta = time.Duration(float64(max(p.total-done, 0)) / rate * float64(time.Second)).Round(time.Second).String()
	}
	fmt.Fprintf(p.w, "\r[%s%s] %d/%d rows %3.0f%% %.0f rows/s ETA %s\x1b[K",
		strings.Repeat("#", fill), strings.Repeat("-", width-fill), done, p.total, frac*100, rate, eta)
}

func (p *progressBar) finish() {
	if p.drawn {
		fmt.Fprintln(p.w)
	}
}
