package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgveil/pgveil/internal/vaultdev"
	"github.com/pgveil/pgveil/vaultkms"
)

// encryptionPolicy stores payments.card_number encrypted (searchable):
// shop_billing decrypts it, shop_analyst sees it masked, shop_dpo reads
// the stored ciphertext (raw, but no decrypt grant).
const encryptionPolicy = `version: 1
classes:
  email: { mask: email }
  card:  { mask: "partial(last=4)" }
columns:
  public.customers.email: email
  public.payments.card_number:
    class: card
    encrypted: { key: payments-card, searchable: true }
roles:
  shop_analyst: {}
  shop_dpo:     { raw: all }
  shop_billing: { raw: [email], decrypt: [card] }
`

const (
	cardVisa   = "4111111111111111"
	cardMaster = "5500000000000004"
)

// encryptionFixture creates the payments table (empty) and the billing role.
func encryptionFixture(t *testing.T) string {
	t.Helper()
	shopProxy(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := w.pg.PsqlDB(ctx, "shop", `
		DO $$ BEGIN CREATE ROLE shop_billing LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
		DROP TABLE IF EXISTS payments;
		CREATE TABLE payments (id int PRIMARY KEY, customer_id int, card_number text);
		GRANT SELECT, INSERT, UPDATE, DELETE ON payments TO shop_billing;
		GRANT SELECT ON payments TO shop_analyst, shop_dpo;
		GRANT SELECT ON customers TO shop_billing;`); err != nil {
		t.Fatal(err)
	}
	// Other tests list the tables of database shop.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := w.pg.PsqlDB(ctx, "shop", "DROP TABLE IF EXISTS payments"); err != nil {
			t.Error(err)
		}
	})
	dir := t.TempDir()
	policy := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policy, []byte(encryptionPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	return policy
}

// storedCards reads card_number directly from PostgreSQL, by id.
func storedCards(t *testing.T) map[int]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, w.pg.URL("postgres", "", "shop"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT id, card_number FROM payments")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]string{}
	for rows.Next() {
		var id int
		var c *string
		if err := rows.Scan(&id, &c); err != nil {
			t.Fatal(err)
		}
		if c != nil {
			out[id] = *c
		}
	}
	return out
}

// encryptionSuite runs the read and write paths through a proxy on port;
// prefix is the stored ciphertexts' prefix ("vault:v1:", "local:v1:").
func encryptionSuite(t *testing.T, port int, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	connect := func(user string) *pgx.Conn {
		t.Helper()
		c, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=shop sslmode=disable", port, user))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		return c
	}
	billing := connect("shop_billing")
	// Writes: a bound parameter (extended protocol) and a literal
	// (simple protocol).
	if _, err := billing.Exec(ctx, "INSERT INTO payments (id, customer_id, card_number) VALUES ($1, $2, $3)", 1, 1, cardVisa); err != nil {
		t.Fatal(err)
	}
	if _, err := billing.Exec(ctx, "INSERT INTO payments VALUES (2, 2, '"+cardMaster+"')", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	stored := storedCards(t)
	for id, c := range stored {
		if !strings.HasPrefix(c, prefix) || strings.Contains(c, cardVisa) || strings.Contains(c, cardMaster) {
			t.Fatalf("row %d is stored as %q, want ciphertext starting %q", id, c, prefix)
		}
	}
	if len(stored) != 2 {
		t.Fatalf("stored rows: %v", stored)
	}

	read := func(c *pgx.Conn, sql string, args ...any) []string {
		t.Helper()
		rows, err := c.Query(ctx, sql, args...)
		if err != nil {
			t.Fatal(err)
		}
		vals, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return vals
	}
	// Reads by role, in both protocols.
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		if got := read(billing, "SELECT card_number FROM payments ORDER BY id", mode); strings.Join(got, ",") != cardVisa+","+cardMaster {
			t.Errorf("billing (%v) reads %v", mode, got)
		}
		if got := read(connect("shop_analyst"), "SELECT p.card_number AS c FROM payments p ORDER BY id", mode); strings.Join(got, ",") != "************1111,************0004" {
			t.Errorf("analyst (%v) reads %v", mode, got)
		}
		if got := read(connect("shop_dpo"), "SELECT card_number FROM payments ORDER BY id", mode); strings.Join(got, ",") != stored[1]+","+stored[2] {
			t.Errorf("dpo (%v) reads %v, want the stored ciphertext", mode, got)
		}
	}
	// An expression over the column sees ciphertext: no role learns
	// anything from it.
	if got := read(connect("shop_analyst"), "SELECT upper(card_number) FROM payments WHERE id = 1"); len(got) != 1 || strings.Contains(got[0], "1111") && !strings.HasPrefix(strings.ToLower(got[0]), prefix) {
		t.Errorf("analyst expression: %v", got)
	}
	// A cursor's FETCH returns its query's rows, decrypted.
	tx, err := billing.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "DECLARE cards CURSOR FOR SELECT card_number FROM payments ORDER BY id"); err != nil {
		t.Fatal(err)
	}
	rows, err := tx.Query(ctx, "FETCH 2 FROM cards")
	if err != nil {
		t.Fatal(err)
	}
	fetched, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || strings.Join(fetched, ",") != cardVisa+","+cardMaster {
		t.Errorf("FETCH from a cursor: %v %v", fetched, err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// Searchable equality, with a parameter and with a literal.
	if got := read(billing, "SELECT id::text FROM payments WHERE card_number = $1", cardVisa); strings.Join(got, ",") != "1" {
		t.Errorf("equality with a parameter finds %v", got)
	}
	if got := read(billing, "SELECT id::text FROM payments WHERE card_number = '"+cardMaster+"'", pgx.QueryExecModeSimpleProtocol); strings.Join(got, ",") != "2" {
		t.Errorf("equality with a literal finds %v", got)
	}
	// UPDATE SET with a parameter.
	if _, err := billing.Exec(ctx, "UPDATE payments SET card_number = $1 WHERE id = $2", "4000000000000002", 1); err != nil {
		t.Fatal(err)
	}
	if got := read(billing, "SELECT card_number FROM payments WHERE id = 1"); strings.Join(got, ",") != "4000000000000002" {
		t.Errorf("after UPDATE: %v", got)
	}
	// What cannot be encrypted is refused with a reason.
	_, err = billing.Exec(ctx, "INSERT INTO payments SELECT 9, 9, name FROM customers WHERE id = 1")
	if serverCode(err) != "42501" || !strings.Contains(err.Error(), "encrypt") {
		t.Errorf("INSERT ... SELECT into an encrypted column: %v", err)
	}
	// COPY FROM STDIN, text and CSV: the card fields are encrypted.
	if _, err := billing.PgConn().CopyFrom(ctx, strings.NewReader("10\t10\t4000000000000010\n11\t11\t\\N\n"), "COPY payments FROM STDIN"); err != nil {
		t.Fatal(err)
	}
	csvIn := "id,customer_id,card_number\n12,12,\"4000000000000012\"\n13,13,4000000000000013\n"
	if _, err := billing.PgConn().CopyFrom(ctx, strings.NewReader(csvIn), "COPY payments (id, customer_id, card_number) FROM STDIN WITH (FORMAT csv, HEADER)"); err != nil {
		t.Fatal(err)
	}
	stored = storedCards(t)
	for _, id := range []int{10, 12, 13} {
		if !strings.HasPrefix(stored[id], prefix) {
			t.Errorf("COPY FROM stored row %d as %.20q...", id, stored[id])
		}
	}
	if stored[11] != "" {
		t.Errorf("a NULL card was stored as %q", stored[11])
	}
	// COPY TO STDOUT: decrypted, masked or ciphertext by role.
	copyOut := func(c *pgx.Conn, sql string) string {
		t.Helper()
		var b strings.Builder
		if _, err := c.PgConn().CopyTo(ctx, &b, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return b.String()
	}
	if got := copyOut(billing, "COPY (SELECT id, card_number FROM payments WHERE id IN (10, 11, 12) ORDER BY id) TO STDOUT"); got != "10\t4000000000000010\n11\t\\N\n12\t4000000000000012\n" {
		t.Errorf("billing COPY TO (text): %q", got)
	}
	if got := copyOut(billing, "COPY (SELECT card_number, id FROM payments WHERE id = 13) TO STDOUT WITH (FORMAT csv, HEADER)"); got != "card_number,id\n4000000000000013,13\n" {
		t.Errorf("billing COPY TO (CSV): %q", got)
	}
	if got := copyOut(connect("shop_analyst"), "COPY (SELECT id, card_number FROM payments WHERE id = 10) TO STDOUT"); got != "10\t************0010\n" {
		t.Errorf("analyst COPY TO: %q", got)
	}
	if got := copyOut(connect("shop_dpo"), "COPY (SELECT card_number FROM payments WHERE id = 12) TO STDOUT"); got != stored[12]+"\n" {
		t.Errorf("dpo COPY TO: %q, want the stored ciphertext", got)
	}
	if _, err := billing.Exec(ctx, "DELETE FROM payments WHERE id BETWEEN 10 AND 13"); err != nil {
		t.Fatal(err)
	}

	// Many rows: decrypted in batches, order kept.
	batch := &pgx.Batch{}
	for i := 100; i < 2600; i++ {
		batch.Queue("INSERT INTO payments VALUES ($1, $1, $2)", i, fmt.Sprintf("4%015d", i))
	}
	if err := billing.SendBatch(ctx, batch).Close(); err != nil {
		t.Fatal(err)
	}
	got := read(billing, "SELECT card_number FROM payments WHERE id >= 100 ORDER BY id")
	if len(got) != 2500 {
		t.Fatalf("read %d rows, want 2500", len(got))
	}
	for i, v := range got {
		if want := fmt.Sprintf("4%015d", i+100); v != want {
			t.Fatalf("row %d: %q, want %q", i, v, want)
		}
	}
}

// TestEncryptionKeyring runs the encryption suite with the local keyring.
func TestEncryptionKeyring(t *testing.T) {
	policy := encryptionFixture(t)
	keyring := filepath.Join(t.TempDir(), "keys.json")
	if code, out, stderr := runBinary(t, "keyring", "init", keyring, "--key", "payments-card"); code != 0 {
		t.Fatalf("keyring init: %d %s %s", code, out, stderr)
	}
	_, port, _ := startBinary(t, "--upstream", fmt.Sprintf("postgres://shop_pgveil@127.0.0.1:%d/shop?sslmode=disable", w.pg.Port),
		"--policy", policy, "--keyring", keyring)
	encryptionSuite(t, port, "local:v1:")
}

// TestEncryptionVault runs the encryption suite against a real Vault,
// then pauses Vault mid-session: the statement fails with a clear error,
// the session survives, and it recovers when Vault answers again.
func TestEncryptionVault(t *testing.T) {
	policy := encryptionFixture(t)
	vs := vaultdev.StartT(t, vaultdev.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	v, err := vaultkms.NewVault(ctx, vaultkms.VaultConfig{Addr: vs.Addr(), Token: vs.Token(), TransitMount: vs.TransitMount()})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := v.EnsureKey(ctx, "payments-card", true); err != nil {
		t.Fatal(err)
	}
	_, port, logs := startBinaryEnv(t, []string{"VAULT_TOKEN=" + vs.Token()},
		"--upstream", fmt.Sprintf("postgres://shop_pgveil@127.0.0.1:%d/shop?sslmode=disable", w.pg.Port),
		"--policy", policy, "--vault-addr", vs.Addr(), "--vault-transit-mount", vs.TransitMount(), "--vault-timeout", "500ms")
	encryptionSuite(t, port, "vault:v1:")

	// Rotation: new values use version 2, old ones still decrypt.
	if _, err := v.RotateKey(ctx, "payments-card"); err != nil {
		t.Fatal(err)
	}
	billing, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=shop_billing dbname=shop sslmode=disable", port))
	if err != nil {
		t.Fatal(err)
	}
	defer billing.Close(ctx)
	if _, err := billing.Exec(ctx, "INSERT INTO payments VALUES (3, 3, $1)", "6011000000000004"); err != nil {
		t.Fatal(err)
	}
	if c := storedCards(t)[3]; !strings.HasPrefix(c, "vault:v2:") {
		t.Errorf("after rotation a new value is stored as %.12q...", c)
	}
	var cards []string
	rows, _ := billing.Query(ctx, "SELECT card_number FROM payments WHERE id IN (2, 3) ORDER BY id")
	cards, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || strings.Join(cards, ",") != cardMaster+",6011000000000004" {
		t.Fatalf("after rotation: %v %v", cards, err)
	}

	// Vault stops answering mid-session.
	if err := vs.Pause(); err != nil {
		t.Fatal(err)
	}
	var c string
	err = billing.QueryRow(ctx, "SELECT card_number FROM payments WHERE id = 2").Scan(&c)
	if serverCode(err) != "58000" || !strings.Contains(err.Error(), "vault") {
		t.Errorf("with Vault paused: %q %v, want SQLSTATE 58000 naming Vault", c, err)
	}
	_, err = billing.Exec(ctx, "INSERT INTO payments VALUES (4, 4, $1)", cardVisa)
	if serverCode(err) != "58000" {
		t.Errorf("a write with Vault paused: %v, want SQLSTATE 58000", err)
	}
	var one int
	if err := billing.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("the session did not survive the Vault outage: %v", err)
	}
	if err := vs.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := billing.QueryRow(ctx, "SELECT card_number FROM payments WHERE id = 2").Scan(&c); err != nil || c != cardMaster {
		t.Fatalf("after Vault came back: %q %v", c, err)
	}
	if _, ok := storedCards(t)[4]; ok {
		t.Error("the write during the outage reached the table")
	}
	if strings.Contains(logs.String(), cardVisa) || strings.Contains(logs.String(), cardMaster) {
		t.Error("the log contains a card number")
	}
}
