package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgveil/pgveil/internal/pgcluster"
	"github.com/pgveil/pgveil/vaultkms"
)

// migrateRows is the number of non-NULL values of the test table.
const migrateRows = 10000

// migrateNulls is the number of extra rows whose value is NULL.
const migrateNulls = 50

// migrateFixture is a database with a payments table of migrateRows card
// numbers and migrateNulls NULLs, a keyring and a policy declaring
// payments.card_number encrypted in the given mode.
type migrateFixture struct {
	pg       *pgcluster.Cluster
	db       string
	upstream string
	keyring  string
	policy   string
	col      vaultkms.Column
}

func card(i int) string { return fmt.Sprintf("4111-1111-%08d", i) }

func newMigrateFixture(t *testing.T, pg *pgcluster.Cluster, db, mode string) *migrateFixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := pg.Psql(ctx, fmt.Sprintf("CREATE DATABASE %s;", db)); err != nil {
		t.Fatal(err)
	}
	if _, err := pg.PsqlDB(ctx, db, fmt.Sprintf(`
		CREATE TABLE payments (id int PRIMARY KEY, card_number text, note text);
		INSERT INTO payments SELECT i, '4111-1111-' || lpad(i::text, 8, '0'), 'n' FROM generate_series(1, %d) i;
		INSERT INTO payments SELECT i, NULL, 'null' FROM generate_series(%d, %d) i;
	`, migrateRows, migrateRows+1, migrateRows+migrateNulls)); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f := &migrateFixture{pg: pg, db: db, upstream: pg.URL("postgres", "", db), keyring: filepath.Join(dir, "keys.json"),
		col: vaultkms.Column{ID: "public.payments.card_number", Key: "payments-card", Mode: vaultkms.Mode(mode)}}
	if _, err := vaultkms.InitKeyringFile(f.keyring, []string{"payments-card"}); err != nil {
		t.Fatal(err)
	}
	f.policy = writeFile(t, "policy.yaml", fmt.Sprintf(`version: 1
classes:
  card: { mask: "partial(last=4)" }
columns:
  public.payments.card_number:
    class: card
    encrypted: { key: payments-card, mode: %s }
  public.payments.note:
    class: card
roles:
  billing: { decrypt: [card] }
`, mode))
	return f
}

// args are migrate's arguments for op on the fixture, plus extra.
func (f *migrateFixture) args(op string, extra ...string) []string {
	return append([]string{op, "--upstream", f.upstream, "--policy", f.policy, "--keyring", f.keyring,
		"--table", "payments", "--column", "card_number", "--progress", "never"}, extra...)
}

// migrate runs runMigrate and returns its error and summary line.
func (f *migrateFixture) migrate(t *testing.T, op string, extra ...string) (string, error) {
	t.Helper()
	var out, errb strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := runMigrate(ctx, f.args(op, extra...), &out, &errb)
	return out.String() + errb.String(), err
}

// mustMigrate runs runMigrate and fails the test on an error.
func (f *migrateFixture) mustMigrate(t *testing.T, op string, extra ...string) string {
	t.Helper()
	out, err := f.migrate(t, op, extra...)
	if err != nil {
		t.Fatalf("migrate %s: %v\n%s", op, err, out)
	}
	return out
}

// values reads id → card_number (NULL as nil).
func (f *migrateFixture) values(t *testing.T) map[int][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, f.upstream)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT id, card_number FROM payments")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int][]byte{}
	for rows.Next() {
		var id int
		var v *string
		if err := rows.Scan(&id, &v); err != nil {
			t.Fatal(err)
		}
		if v != nil {
			out[id] = []byte(*v)
		} else {
			out[id] = nil
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) != migrateRows+migrateNulls {
		t.Fatalf("%d rows, want %d", len(out), migrateRows+migrateNulls)
	}
	return out
}

// service opens the fixture's keyring afresh (it sees rotations).
func (f *migrateFixture) service(t *testing.T) vaultkms.Service {
	t.Helper()
	kr, err := vaultkms.NewKeyring(vaultkms.KeyringConfig{Path: f.keyring})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kr.Close() })
	return kr
}

// state counts the ciphertexts among the values and checks the rest: NULL
// rows stay NULL, ciphertexts decrypt to want(id) and plaintexts equal it.
// It returns the number of ciphertexts and their key versions.
func (f *migrateFixture) state(t *testing.T, want func(id int) string) (int, map[int]int) {
	t.Helper()
	vals := f.values(t)
	svc := f.service(t)
	var ids []int
	var cts [][]byte
	versions := map[int]int{}
	for id, v := range vals {
		switch {
		case id > migrateRows:
			if v != nil {
				t.Fatalf("row %d: NULL became a value", id)
			}
		case v == nil:
			t.Fatalf("row %d: value became NULL", id)
		case svc.IsCiphertext(f.col, v):
			ids = append(ids, id)
			cts = append(cts, v)
			ver, ok := ciphertextVersion(v)
			if !ok {
				t.Fatalf("row %d: ciphertext shows no key version", id)
			}
			versions[ver]++
		case string(v) != want(id):
			t.Fatalf("row %d: plaintext differs from the expected value", id)
		}
	}
	if len(cts) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		pts, err := svc.Decrypt(ctx, f.col, cts)
		if err != nil {
			t.Fatalf("decrypt the table's ciphertexts: %v", err)
		}
		for i, p := range pts {
			if string(p) != want(ids[i]) {
				t.Fatalf("row %d: ciphertext does not decrypt to the expected value", ids[i])
			}
		}
	}
	return len(cts), versions
}

// TestMigrate runs migrate against one PostgreSQL: the full cycle in both
// modes, interruption and resumption, concurrent writers, and refusals.
func TestMigrate(t *testing.T) {
	pg := testCluster(t)
	for _, mode := range []string{"transit", "envelope"} {
		t.Run("cycle/"+mode, func(t *testing.T) { testMigrateCycle(t, newMigrateFixture(t, pg, "cycle_"+mode, mode)) })
	}
	t.Run("interrupt", func(t *testing.T) { testMigrateInterrupt(t, newMigrateFixture(t, pg, "interrupt", "transit")) })
	t.Run("concurrent", func(t *testing.T) { testMigrateConcurrent(t, newMigrateFixture(t, pg, "concurrent", "transit")) })
	t.Run("refusals", func(t *testing.T) { testMigrateRefusals(t, newMigrateFixture(t, pg, "refusals", "transit")) })
	t.Run("keys", func(t *testing.T) { testMigrateKeys(t, newMigrateFixture(t, pg, "keys", "transit")) })
}

// testMigrateCycle: dry run, encrypt, rerun, rotate, rewrap, rerun,
// decrypt, rerun; every step checks every value of the table.
func testMigrateCycle(t *testing.T, f *migrateFixture) {
	out := f.mustMigrate(t, "encrypt", "--dry-run")
	if !strings.Contains(out, "dry run: 10000 would be encrypted, 0 already ciphertext, 50 NULL") {
		t.Errorf("dry run: %s", out)
	}
	if n, _ := f.state(t, card); n != 0 {
		t.Fatalf("dry run changed %d values", n)
	}

	var errb strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var outb strings.Builder
	if err := runMigrate(ctx, f.args("encrypt", "--batch", "1000", "--progress", "always"), &outb, &errb); err != nil {
		t.Fatalf("encrypt: %v\n%s%s", err, outb.String(), errb.String())
	}
	if s := outb.String(); !strings.Contains(s, "10000 encrypted, 0 already ciphertext, 50 NULL; 10000 of 10000 values examined") ||
		!strings.Contains(s, "; 10 batches in ") || strings.Count(s, "\n") != 1 {
		t.Errorf("encrypt summary: %q", s)
	}
	if s := errb.String(); !strings.Contains(s, "10000/10000 rows 100%") || !strings.Contains(s, "rows/s ETA") {
		t.Errorf("progress bar: %q", s)
	}
	if n, v := f.state(t, card); n != migrateRows || v[1] != migrateRows {
		t.Fatalf("after encrypt: %d ciphertexts, versions %v", n, v)
	}
	before := f.values(t)

	// Running again changes nothing.
	out = f.mustMigrate(t, "encrypt")
	if !strings.Contains(out, "0 encrypted, 10000 already ciphertext") || !strings.Contains(out, "0 batches") {
		t.Errorf("encrypt again: %s", out)
	}
	if after := f.values(t); !sameValues(before, after) {
		t.Fatal("encrypt again changed values")
	}

	// Rotate, then rewrap: every value moves to version 2 and still
	// decrypts; running again is a no-op.
	if code, out, errs := runCLI(t, "keyring", "rotate", f.keyring, "payments-card"); code != exitOK {
		t.Fatalf("keyring rotate: exit %d\n%s%s", code, out, errs)
	}
	out = f.mustMigrate(t, "rewrap", "--batch", "3000")
	if !strings.Contains(out, "10000 rewrapped, 0 already at the newest key version") || !strings.Contains(out, "4 batches") {
		t.Errorf("rewrap: %s", out)
	}
	if n, v := f.state(t, card); n != migrateRows || v[2] != migrateRows {
		t.Fatalf("after rewrap: %d ciphertexts, versions %v", n, v)
	}
	rewrapped := f.values(t)
	out = f.mustMigrate(t, "rewrap")
	if !strings.Contains(out, "0 rewrapped, 10000 already at the newest key version") {
		t.Errorf("rewrap again: %s", out)
	}
	if !sameValues(rewrapped, f.values(t)) {
		t.Fatal("rewrap again changed values")
	}

	// Decrypt: the original plaintexts come back.
	out = f.mustMigrate(t, "decrypt", "--batch", "999")
	if !strings.Contains(out, "10000 decrypted, 0 already plaintext") || !strings.Contains(out, "11 batches") {
		t.Errorf("decrypt: %s", out)
	}
	if n, _ := f.state(t, card); n != 0 {
		t.Fatalf("after decrypt: %d ciphertexts left", n)
	}
	out = f.mustMigrate(t, "decrypt")
	if !strings.Contains(out, "0 decrypted, 10000 already plaintext") {
		t.Errorf("decrypt again: %s", out)
	}
	// Rewrapping plaintext leaves it alone and says so.
	out = f.mustMigrate(t, "rewrap")
	if !strings.Contains(out, "0 rewrapped, 0 already at the newest key version, 10000 not ciphertext") {
		t.Errorf("rewrap of plaintext: %s", out)
	}
}

func sameValues(a, b map[int][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || string(v) != string(w) || (v == nil) != (w == nil) {
			return false
		}
	}
	return true
}

// migrateConfigFor parses the fixture's arguments into a config, for
// tests that need its hooks.
func (f *migrateFixture) config(t *testing.T, op string, extra ...string) migrateConfig {
	t.Helper()
	var out, errb strings.Builder
	cfg, closeSvc, err := parseMigrate(context.Background(), f.args(op, extra...), &out, &errb)
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, errb.String())
	}
	t.Cleanup(closeSvc)
	return cfg
}

// testMigrateInterrupt cancels a run after 3 batches and resumes it, and
// stops another with --limit-batches.
func testMigrateInterrupt(t *testing.T, f *migrateFixture) {
	cfg := f.config(t, "encrypt")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg.AfterBatch = func(st migrateStats) {
		if st.Batches == 3 {
			cancel()
		}
	}
	m, err := newMigrator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	st, err := m.run(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted run: %v", err)
	}
	if st.Batches != 3 || st.Converted != 3000 {
		t.Fatalf("interrupted run: %+v", st)
	}
	if s := m.summary(st, err); !strings.Contains(s, "3000 encrypted") || !strings.Contains(s, "interrupted") {
		t.Errorf("summary: %s", s)
	}
	if n, _ := f.state(t, card); n != 3000 {
		t.Fatalf("after the interruption: %d ciphertexts, want 3000", n)
	}

	out := f.mustMigrate(t, "encrypt", "--limit-batches", "2")
	if !strings.Contains(out, "2000 encrypted, 3000 already ciphertext") || !strings.Contains(out, "stopped after 2 batches (--limit-batches)") {
		t.Errorf("limited run: %s", out)
	}
	if n, _ := f.state(t, card); n != 5000 {
		t.Fatalf("after --limit-batches 2: %d ciphertexts, want 5000", n)
	}

	out = f.mustMigrate(t, "encrypt")
	if !strings.Contains(out, "5000 encrypted, 5000 already ciphertext") || !strings.Contains(out, "5 batches") {
		t.Errorf("resumed run: %s", out)
	}
	if n, _ := f.state(t, card); n != migrateRows {
		t.Fatalf("after resuming: %d ciphertexts, want %d", n, migrateRows)
	}
}

// testMigrateConcurrent runs an encryption while a writer keeps storing
// new ciphertexts into random rows (as the proxy's write path would), and
// while another transaction holds a row locked for the first batches:
// every value the writer stored survives, the locked row is converted
// once it is free, and every other row decrypts to its original.
func testMigrateConcurrent(t *testing.T, f *migrateFixture) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	svc := f.service(t)

	// A transaction holds row 5 locked, with a new ciphertext, until
	// batch 2 is committed.
	holder, err := pgx.Connect(ctx, f.upstream)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(ctx)
	held, err := svc.Encrypt(ctx, f.col, [][]byte{[]byte("held-5")})
	if err != nil {
		t.Fatal(err)
	}
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "UPDATE payments SET card_number = $1 WHERE id = 5", string(held[0])); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	written := map[int]string{5: "held-5"} // id → the plaintext of the writer's last value
	var writes, writesDuring atomic.Int64
	stop := make(chan struct{})
	writerDone := make(chan error, 1)
	go func() {
		writerDone <- func() error {
			conn, err := pgx.Connect(ctx, f.upstream)
			if err != nil {
				return err
			}
			defer conn.Close(ctx)
			r := rand.New(rand.NewPCG(1, 2))
			for n := 0; ; n++ {
				select {
				case <-stop:
					return nil
				default:
				}
				id := 6 + r.IntN(migrateRows-5)
				pt := fmt.Sprintf("new-%d-%d", id, n)
				ct, err := svc.Encrypt(ctx, f.col, [][]byte{[]byte(pt)})
				if err != nil {
					return err
				}
				mu.Lock()
				if _, err := conn.Exec(ctx, "UPDATE payments SET card_number = $1 WHERE id = $2", string(ct[0]), id); err != nil {
					mu.Unlock()
					return err
				}
				written[id] = pt
				mu.Unlock()
				writes.Add(1)
			}
		}()
	}()
	// Let the writer start before the migration does.
	for writes.Load() < 5 {
		time.Sleep(time.Millisecond)
	}

	cfg := f.config(t, "encrypt", "--batch", "500")
	var atFirst int64 = -1
	cfg.AfterBatch = func(st migrateStats) {
		if atFirst < 0 {
			atFirst = writes.Load()
		}
		writesDuring.Store(writes.Load() - atFirst)
		if st.Batches == 2 {
			if err := tx.Commit(ctx); err != nil {
				t.Errorf("commit the held row: %v", err)
			}
		}
	}
	m, err := newMigrator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	st, err := m.run(ctx)
	close(stop)
	if werr := <-writerDone; werr != nil {
		t.Fatalf("writer: %v", werr)
	}
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	t.Logf("%d writes during the migration; %s", writesDuring.Load(), m.summary(st, nil))
	if writesDuring.Load() == 0 {
		t.Fatal("the writer made no write while the migration ran")
	}
	if st.Locked < 1 || st.Unconverted != 0 {
		t.Errorf("locked row: %+v", st)
	}
	want := func(id int) string {
		if pt, ok := written[id]; ok {
			return pt
		}
		return card(id)
	}
	if n, _ := f.state(t, want); n != migrateRows {
		t.Fatalf("%d ciphertexts, want %d", n, migrateRows)
	}
}

// testMigrateRefusals: what migrate refuses, at run time.
func testMigrateRefusals(t *testing.T, f *migrateFixture) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := f.pg.PsqlDB(ctx, f.db, `
		CREATE TABLE nokey (card_number text);
		CREATE TABLE ints (id int PRIMARY KEY, card_number int);
		CREATE TABLE "Mixed" (a int, b text, card_number varchar(200), PRIMARY KEY (a, b));
		INSERT INTO "Mixed" SELECT i, 'k' || (i % 3), 'v' || i FROM generate_series(1, 40) i;
		INSERT INTO "Mixed" VALUES (41, 'k0', NULL);
		CREATE VIEW payview AS SELECT * FROM payments;
		CREATE ROLE reader LOGIN;
		GRANT SELECT ON payments TO reader;
	`); err != nil {
		t.Fatal(err)
	}
	policy := writeFile(t, "policy.yaml", `version: 1
classes:
  card: { mask: "partial(last=4)" }
columns:
  public.nokey.card_number: { class: card, encrypted: { key: payments-card } }
  public.ints.card_number: { class: card, encrypted: { key: payments-card } }
  'public."Mixed".card_number': { class: card, encrypted: { key: payments-card } }
  public.payview.card_number: { class: card, encrypted: { key: payments-card } }
  public.payments.card_number: { class: card, encrypted: { key: payments-card } }
  public.gone.card_number: { class: card, encrypted: { key: payments-card } }
`)
	for _, tc := range []struct {
		table, upstream, want string
	}{
		{"nokey", "", "table public.nokey has no primary key: migrate refuses it"},
		{"ints", "", "column public.ints.card_number has type integer: ciphertext is text"},
		{"payview", "", "public.payview is a view, not a table"},
		{"gone", "", "table public.gone: no such relation"},
		{"payments", f.pg.URL("reader", "", f.db), "the --upstream account lacks UPDATE on public.payments.card_number"},
	} {
		up := tc.upstream
		if up == "" {
			up = f.upstream
		}
		var out, errb strings.Builder
		err := runMigrate(ctx, []string{"encrypt", "--upstream", up, "--policy", policy, "--keyring", f.keyring,
			"--table", tc.table, "--column", "card_number"}, &out, &errb)
		var ue *usageError
		if err == nil || errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want a runtime error with %q", tc.table, err, tc.want)
		}
		if out.Len() != 0 {
			t.Errorf("%s: a summary for a refused run: %q", tc.table, out.String())
		}
	}

	// A composite primary key of mixed types on a mixed-case table, with
	// a batch size that does not divide the rows.
	var out, errb strings.Builder
	if err := runMigrate(ctx, []string{"encrypt", "--upstream", f.upstream, "--policy", policy, "--keyring", f.keyring,
		"--table", `public."Mixed"`, "--column", "card_number", "--batch", "7"}, &out, &errb); err != nil {
		t.Fatalf("composite key: %v\n%s", err, errb.String())
	}
	if !strings.Contains(out.String(), `migrate encrypt public."Mixed".card_number: 40 encrypted, 0 already ciphertext, 1 NULL`) ||
		!strings.Contains(out.String(), "6 batches") {
		t.Errorf("composite key: %s", out.String())
	}
	got, err := f.pg.PsqlDB(ctx, f.db, `SELECT count(*) FILTER (WHERE card_number LIKE 'local:v1:%') || '/' || count(card_number) FROM "Mixed";`)
	if err != nil || !strings.Contains(got, "40/40") {
		t.Errorf("composite key: %q, %v", got, err)
	}
}

// testMigrateKeys: a key the key service lacks is an error before any
// row is touched.
func testMigrateKeys(t *testing.T, f *migrateFixture) {
	other := filepath.Join(t.TempDir(), "other.json")
	if _, err := vaultkms.InitKeyringFile(other, []string{"something-else"}); err != nil {
		t.Fatal(err)
	}
	for _, op := range []string{"encrypt", "rewrap"} {
		out, err := f.migrate(t, op, "--keyring", other)
		if err == nil || !strings.Contains(err.Error(), `key "payments-card" (column public.payments.card_number): no such key in the key service`) {
			t.Errorf("%s with a keyring lacking the key: %v\n%s", op, err, out)
		}
	}
	if n, _ := f.state(t, card); n != 0 {
		t.Fatalf("%d values changed", n)
	}
}

func TestMigrateUsage(t *testing.T) {
	dir := t.TempDir()
	keyring := filepath.Join(dir, "keys.json")
	if _, err := vaultkms.InitKeyringFile(keyring, []string{"payments-card"}); err != nil {
		t.Fatal(err)
	}
	policy := writeFile(t, "policy.yaml", `version: 1
classes:
  card: { mask: "partial(last=4)" }
columns:
  public.payments.card_number: { class: card, encrypted: { key: payments-card } }
  public.payments.note: card
`)
	up := "postgres://owner@127.0.0.1:1/app"
	base := func(extra ...string) []string {
		return append([]string{"--upstream", up, "--policy", policy, "--keyring", keyring, "--table", "payments", "--column", "card_number"}, extra...)
	}
	without := func(flag string) []string {
		a := base()
		for i := range a {
			if a[i] == flag {
				return append(a[:i:i], a[i+2:]...)
			}
		}
		t.Fatalf("no %s", flag)
		return nil
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no operation", nil, "missing operation"},
		{"unknown operation", append([]string{"scramble"}, base()...), `unknown migrate operation "scramble"`},
		{"no upstream", append([]string{"encrypt"}, without("--upstream")...), "missing --upstream"},
		{"bad upstream", append([]string{"encrypt"}, base("--upstream", "mysql://x")...), "invalid --upstream"},
		{"no policy", append([]string{"encrypt"}, without("--policy")...), "missing --policy"},
		{"no table", append([]string{"encrypt"}, without("--table")...), "missing --table"},
		{"no column", append([]string{"encrypt"}, without("--column")...), "missing --column"},
		{"bad table", append([]string{"encrypt"}, base("--table", "a.b.c")...), "invalid --table"},
		{"bad quote", append([]string{"encrypt"}, base("--table", `"pay`)...), "unterminated quoted identifier"},
		{"batch zero", append([]string{"encrypt"}, base("--batch", "0")...), "--batch must be between 1 and 100000"},
		{"batch huge", append([]string{"encrypt"}, base("--batch", "1000000")...), "--batch must be between"},
		{"negative limit", append([]string{"encrypt"}, base("--limit-batches", "-1")...), "--limit-batches must not be negative"},
		{"bad progress", append([]string{"decrypt"}, base("--progress", "sometimes")...), `invalid --progress "sometimes"`},
		{"unknown flag", append([]string{"rewrap"}, base("--force")...), "unknown flag: --force"},
		{"extra argument", append([]string{"encrypt"}, base("payments")...), `unexpected argument "payments"`},
		{"not in policy", append([]string{"encrypt"}, base("--column", "cvv")...), "public.payments.cvv is not an encrypted column of policy"},
		{"not encrypted", append([]string{"encrypt"}, base("--column", "note")...), "public.payments.note is not an encrypted column"},
		{"other schema", append([]string{"encrypt"}, base("--table", "billing.payments")...), "billing.payments.card_number is not an encrypted column"},
		{"no key service", append([]string{"encrypt"}, without("--keyring")...), "need a key service"},
		{"missing keyring", append([]string{"encrypt"}, base("--keyring", filepath.Join(dir, "none.json"))...), "--keyring"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("VAULT_ADDR", "")
			var out, errb strings.Builder
			err := runMigrate(context.Background(), tc.args, &out, &errb)
			var ue *usageError
			if !errors.As(err, &ue) {
				t.Fatalf("got %v, want a usage error (exit 2)", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %q, want %q", err, tc.want)
			}
		})
	}
	// --help prints the usage and the flags, and is not an error.
	var out strings.Builder
	err := runMigrate(context.Background(), []string{"--help"}, &out, &out)
	if !strings.Contains(out.String(), "pgveil migrate encrypt|decrypt|rewrap") || !strings.Contains(out.String(), "--limit-batches") {
		t.Errorf("help: %v\n%s", err, out.String())
	}
}

func TestParseTableName(t *testing.T) {
	for _, tc := range []struct {
		in, schema, name, err string
	}{
		{"payments", "public", "payments", ""},
		{"Billing.Payments", "billing", "payments", ""},
		{`"Billing"."Pay.ments"`, "Billing", "Pay.ments", ""},
		{`s."a""b"`, "s", `a"b`, ""},
		{"a.b.c", "", "", "dotted parts"},
		{"a..b", "", "", "empty name"},
		{`"a"b`, "", "", "unexpected"},
		{"", "", "", "empty name"},
	} {
		n, err := parseTableName(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: got %v, want an error with %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || n.Schema != tc.schema || n.Name != tc.name {
			t.Errorf("%q: got %+v, %v", tc.in, n, err)
		}
	}
}

func TestCiphertextVersion(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
		ok   bool
	}{
		{"vault:v1:abcd", 1, true},
		{"local:v12:abcd", 12, true},
		{"pgveil:e1:vault:v3:wrapped:payload", 3, true},
		{"pgveil:e1:local:v2:wrapped:payload", 2, true},
		{"vault:v0:abcd", 0, false},
		{"vault:vx:abcd", 0, false},
		{"vault:v1", 0, false},
		{"4111-1111", 0, false},
		{"", 0, false},
	} {
		got, ok := ciphertextVersion([]byte(tc.in))
		if got != tc.want || ok != tc.ok {
			t.Errorf("%q: got %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}
