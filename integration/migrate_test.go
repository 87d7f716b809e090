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

// Sizes of the migrate test table: migrateValues card numbers (with
// repeats, so that searchable columns show equal ciphertexts) and
// migrateNulls NULLs.
const (
	migrateValues = 2500
	migrateNulls  = 20
)

func migrateCard(id int) string { return fmt.Sprintf("5500-0000-%06d", id%1000) }

// TestMigrateVault runs the pgveil binary's migrate cycle — encrypt,
// rerun, rotate the key in Vault, rewrap, rerun, decrypt — against a real
// Vault dev server, for transit, envelope and searchable transit columns,
// checking every stored value with an independent Vault client after each
// step; and pgveil check's key checks against the same Vault.
func TestMigrateVault(t *testing.T) {
	s := vaultdev.StartT(t, vaultdev.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	v, err := vaultkms.NewVault(ctx, vaultkms.VaultConfig{Addr: s.Addr(), Token: s.Token()})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	for _, k := range []struct {
		name       string
		searchable bool
	}{{"mig-card", false}, {"mig-card-env", false}, {"mig-search", true}} {
		if err := v.EnsureKey(ctx, k.name, k.searchable); err != nil {
			t.Fatal(err)
		}
	}
	env := []string{"VAULT_TOKEN=" + s.Token(), "VAULT_ADDR="}
	pgveil := func(t *testing.T, args ...string) (int, string, string) {
		t.Helper()
		return runBinaryEnv(t, env, args...)
	}

	for _, tc := range []struct {
		name, key, mode string
		searchable      bool
		prefix          string // of a ciphertext at version %d
	}{
		{"transit", "mig-card", "transit", false, "vault:v%d:"},
		{"envelope", "mig-card-env", "envelope", false, "pgveil:e1:vault:v%d:"},
		{"searchable", "mig-search", "transit", true, "vault:v%d:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := "migrate_" + tc.name
			upstream := cliDatabase(t, db, fmt.Sprintf(`
				CREATE TABLE payments (id int PRIMARY KEY, card_number text);
				INSERT INTO payments SELECT i, '5500-0000-' || lpad((i %% 1000)::text, 6, '0') FROM generate_series(1, %d) i;
				INSERT INTO payments SELECT i, NULL FROM generate_series(%d, %d) i;
			`, migrateValues, migrateValues+1, migrateValues+migrateNulls))
			policy := filepath.Join(t.TempDir(), "policy.yaml")
			if err := os.WriteFile(policy, []byte(fmt.Sprintf(`version: 1
classes:
  card: { mask: "partial(last=4)" }
columns:
  public.payments.card_number:
    class: card
    encrypted: { key: %s, mode: %s, searchable: %v }
roles:
  billing: { decrypt: [card] }
`, tc.key, tc.mode, tc.searchable)), 0o644); err != nil {
				t.Fatal(err)
			}
			col := vaultkms.Column{ID: "public.payments.card_number", Key: tc.key, Mode: vaultkms.Mode(tc.mode), Searchable: tc.searchable}
			migrate := func(op string, extra ...string) string {
				t.Helper()
				args := append([]string{"migrate", op, "--upstream", upstream, "--policy", policy, "--vault-addr", s.Addr(),
					"--table", "public.payments", "--column", "card_number"}, extra...)
				code, out, errs := pgveil(t, args...)
				if code != 0 {
					t.Fatalf("migrate %s: exit %d\nstdout:\n%s\nstderr:\n%s", op, code, out, errs)
				}
				return out
			}
			// check verifies every stored value: NULLs stay NULL, the rest are
			// ciphertexts at the given key version (0: plaintexts) that
			// decrypt to the originals.
			check := func(version int) {
				t.Helper()
				conn, err := pgx.Connect(ctx, upstream)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close(ctx)
				rows, err := conn.Query(ctx, "SELECT id, card_number FROM payments ORDER BY id")
				if err != nil {
					t.Fatal(err)
				}
				var ids []int
				var vals [][]byte
				for rows.Next() {
					var id int
					var val *string
					if err := rows.Scan(&id, &val); err != nil {
						t.Fatal(err)
					}
					if id > migrateValues {
						if val != nil {
							t.Fatalf("row %d: NULL became a value", id)
						}
						continue
					}
					if val == nil {
						t.Fatalf("row %d: value became NULL", id)
					}
					ids = append(ids, id)
					vals = append(vals, []byte(*val))
				}
				if err := rows.Err(); err != nil {
					t.Fatal(err)
				}
				if len(ids) != migrateValues {
					t.Fatalf("%d values, want %d", len(ids), migrateValues)
				}
				if version == 0 {
					for i, id := range ids {
						if string(vals[i]) != migrateCard(id) {
							t.Fatalf("row %d: not the original plaintext", id)
						}
					}
					return
				}
				prefix := fmt.Sprintf(tc.prefix, version)
				for i, id := range ids {
					if !strings.HasPrefix(string(vals[i]), prefix) {
						t.Fatalf("row %d: not a ciphertext at version %d", id, version)
					}
				}
				pts, err := v.Decrypt(ctx, col, vals)
				if err != nil {
					t.Fatalf("decrypt the stored values: %v", err)
				}
				for i, id := range ids {
					if string(pts[i]) != migrateCard(id) {
						t.Fatalf("row %d: does not decrypt to the original", id)
					}
				}
				if tc.searchable {
					// Deterministic: what the proxy computes for "WHERE
					// card_number = $1" is what migrate stored.
					probe, err := v.Encrypt(ctx, col, [][]byte{[]byte(migrateCard(ids[7]))})
					if err != nil {
						t.Fatal(err)
					}
					if string(probe[0]) != string(vals[7]) || string(vals[7]) != string(vals[1007]) {
						t.Fatal("searchable column: equal plaintexts do not have equal ciphertexts")
					}
				}
			}

			out := migrate("encrypt", "--dry-run")
			if !strings.Contains(out, "dry run: 2500 would be encrypted, 0 already ciphertext, 20 NULL") {
				t.Errorf("dry run: %s", out)
			}
			check(0)
			out = migrate("encrypt", "--batch", "1000")
			if !strings.Contains(out, "2500 encrypted, 0 already ciphertext, 20 NULL") || !strings.Contains(out, "3 batches") {
				t.Errorf("encrypt: %s", out)
			}
			check(1)
			if out = migrate("encrypt"); !strings.Contains(out, "0 encrypted, 2500 already ciphertext") {
				t.Errorf("encrypt again: %s", out)
			}

			if _, err := s.Do(ctx, "POST", "transit/keys/"+tc.key+"/rotate", map[string]any{}); err != nil {
				t.Fatal(err)
			}
			out = migrate("rewrap", "--batch", "1000")
			if !strings.Contains(out, "2500 rewrapped, 0 already at the newest key version") {
				t.Errorf("rewrap: %s", out)
			}
			check(2)
			if out = migrate("rewrap"); !strings.Contains(out, "0 rewrapped, 2500 already at the newest key version") {
				t.Errorf("rewrap again: %s", out)
			}

			out = migrate("decrypt", "--batch", "1000")
			if !strings.Contains(out, "2500 decrypted, 0 already plaintext") {
				t.Errorf("decrypt: %s", out)
			}
			check(0)
			if out = migrate("decrypt"); !strings.Contains(out, "0 decrypted, 2500 already plaintext") {
				t.Errorf("decrypt again: %s", out)
			}
		})
	}

	// pgveil check against the same Vault: a missing key and a searchable
	// column on a randomised key are errors naming the key.
	policy := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(policy, []byte(`version: 1
classes:
  card: { mask: "partial(last=4)" }
columns:
  public.payments.card_number: { class: card, encrypted: { key: mig-card } }
  public.payments.iban: { class: card, encrypted: { key: mig-card-env, searchable: true } }
  public.payments.cvv: { class: card, encrypted: { key: mig-lost, mode: envelope } }
  public.payments.email: { class: card, encrypted: { key: mig-search, searchable: true } }
roles:
  billing: { decrypt: [card] }
`), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := pgveil(t, "check", "--policy", policy, "--vault-addr", s.Addr())
	if code != 1 {
		t.Fatalf("check: exit %d, want 1\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	for _, w := range []string{
		`error: key "mig-lost" (column public.payments.cvv): no such key in the key service`,
		`error: key "mig-card-env" (column public.payments.iban): searchable columns need a convergent Vault key`,
		"2 errors",
		"keys checked",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("check report lacks %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, `key "mig-card"`) || strings.Contains(out, `key "mig-search"`) {
		t.Errorf("check reports a good key:\n%s", out)
	}
}
