package vaultkms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgveil/pgveil/internal/vaultdev"
)

// Test keys: keyPlain is randomised, keySearch convergent (Vault keys are
// convergent for life; the keyring decides per column).
const (
	keyPlain  = "cust-pii"
	keySearch = "cust-search"
)

// fixture is one key service under the shared behaviour suite.
type fixture struct {
	name string
	svc  Service
	mode Mode
	// rotate adds a key version.
	rotate func(t *testing.T, key string)
	// prefix is how a ciphertext made with version v of a key starts.
	prefix func(v int) string
}

// newKeyringFile writes a keyring with the test keys into a temp dir.
func newKeyringFile(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keyring.json")
	if _, err := InitKeyringFile(path, []string{keyPlain, keySearch}); err != nil {
		t.Fatal(err)
	}
	return path
}

func keyringFixtures(t *testing.T) []fixture {
	var out []fixture
	for _, mode := range []Mode{ModeTransit, ModeEnvelope} {
		path := newKeyringFile(t)
		k, err := NewKeyring(KeyringConfig{Path: path})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { k.Close() })
		f := fixture{
			name: "keyring/" + string(mode), svc: k, mode: mode,
			rotate: func(t *testing.T, key string) {
				if _, err := RotateKeyringFile(path, key); err != nil {
					t.Fatal(err)
				}
				if err := k.Reload(); err != nil {
					t.Fatal(err)
				}
			},
			prefix: func(v int) string { return fmt.Sprintf("local:v%d:", v) },
		}
		if mode == ModeEnvelope {
			f.prefix = func(v int) string { return fmt.Sprintf("pgveil:e1:local:v%d:", v) }
		}
		out = append(out, f)
	}
	return out
}

// setupKeys creates the test keys in a dev server with its root token.
func setupKeys(ctx context.Context, s *vaultdev.Server) error {
	for key, convergent := range map[string]bool{keyPlain: false, keySearch: true} {
		_, err := s.Do(ctx, "POST", "transit/keys/"+key, map[string]any{"derived": true, "convergent_encryption": convergent})
		if err != nil {
			return err
		}
	}
	return nil
}

// startVault starts a dev server with the test keys.
func startVault(t testing.TB) *vaultdev.Server {
	return vaultdev.StartT(t, vaultdev.Config{Setup: setupKeys})
}

func newVault(t testing.TB, cfg VaultConfig) *Vault {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	v, err := NewVault(ctx, cfg)
	if err != nil {
		t.Fatalf("NewVault: %v", err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

func vaultFixtures(t *testing.T) []fixture {
	s := startVault(t)
	var out []fixture
	for _, mode := range []Mode{ModeTransit, ModeEnvelope} {
		v := newVault(t, VaultConfig{Addr: s.Addr(), Token: s.Token()})
		f := fixture{
			name: "vault/" + string(mode), svc: v, mode: mode,
			rotate: func(t *testing.T, key string) {
				if _, err := v.RotateKey(context.Background(), key); err != nil {
					t.Fatal(err)
				}
			},
			prefix: func(n int) string { return fmt.Sprintf("vault:v%d:", n) },
		}
		if mode == ModeEnvelope {
			f.prefix = func(n int) string { return fmt.Sprintf("pgveil:e1:vault:v%d:", n) }
		}
		out = append(out, f)
	}
	return out
}

// sampleValues covers empty, ASCII, UTF-8, binary and longer values.
func sampleValues() [][]byte {
	return [][]byte{
		[]byte(""),
		[]byte("4111 1111 1111 1111"),
		[]byte("Zoë Ådahl — naïve café"),
		{0, 1, 2, 0xff, 0xfe, '\n', ':'},
		bytes.Repeat([]byte("long value "), 500),
		[]byte("4111 1111 1111 1111"),
	}
}

func isPrintableASCII(b []byte) bool {
	for _, c := range b {
		if c < 0x21 || c > 0x7e {
			return false
		}
	}
	return true
}

// TestServiceSuite runs the same behaviour tests against every
// implementation: the keyring and Vault, each in transit and envelope
// mode. The Vault rows need the vault binary (see internal/vaultdev).
func TestServiceSuite(t *testing.T) {
	t.Run("keyring", func(t *testing.T) { runSuite(t, keyringFixtures(t)) })
	t.Run("vault", func(t *testing.T) { runSuite(t, vaultFixtures(t)) })
}

func runSuite(t *testing.T, fixtures []fixture) {
	for _, f := range fixtures {
		t.Run(strings.ReplaceAll(f.name, "/", "_"), func(t *testing.T) {
			ctx := context.Background()
			colA := Column{ID: "public.customers.card", Key: keyPlain, Mode: f.mode}
			colB := Column{ID: "public.customers.ssn", Key: keyPlain, Mode: f.mode}

			t.Run("round trip keeps order, ASCII output", func(t *testing.T) {
				info, err := f.svc.KeyInfo(ctx, keyPlain)
				if err != nil || !info.Exists {
					t.Fatalf("KeyInfo = %+v, %v", info, err)
				}
				in := sampleValues()
				cts, err := f.svc.Encrypt(ctx, colA, in)
				if err != nil {
					t.Fatal(err)
				}
				if len(cts) != len(in) {
					t.Fatalf("got %d ciphertexts for %d values", len(cts), len(in))
				}
				for i, c := range cts {
					if !isPrintableASCII(c) {
						t.Errorf("ciphertext %d is not printable ASCII", i)
					}
					if !strings.HasPrefix(string(c), f.prefix(info.LatestVersion)) {
						t.Errorf("ciphertext %d does not start with %q", i, f.prefix(info.LatestVersion))
					}
					if !f.svc.IsCiphertext(colA, c) {
						t.Errorf("IsCiphertext(ciphertext %d) = false", i)
					}
				}
				if bytes.Equal(cts[1], cts[5]) {
					t.Error("non-searchable column: equal plaintexts gave equal ciphertexts")
				}
				pts, err := f.svc.Decrypt(ctx, colA, cts)
				if err != nil {
					t.Fatal(err)
				}
				for i := range in {
					if !bytes.Equal(pts[i], in[i]) {
						t.Errorf("value %d did not round-trip", i)
					}
				}
			})

			t.Run("empty batch", func(t *testing.T) {
				out, err := f.svc.Encrypt(ctx, colA, nil)
				if err != nil || len(out) != 0 {
					t.Fatalf("Encrypt(nil) = %d, %v", len(out), err)
				}
				out, err = f.svc.Decrypt(ctx, colA, [][]byte{})
				if err != nil || len(out) != 0 {
					t.Fatalf("Decrypt(empty) = %d, %v", len(out), err)
				}
			})

			t.Run("not a ciphertext", func(t *testing.T) {
				for _, v := range []string{"hello", "vault:v1:", "local:vx:AAAA", "pgveil:e1:", "4111 1111 1111 1111"} {
					if f.svc.IsCiphertext(colA, []byte(v)) {
						t.Errorf("IsCiphertext(%q) = true", v)
					}
				}
				_, err := f.svc.Decrypt(ctx, colA, [][]byte{[]byte("plain text")})
				if !errors.Is(err, ErrInvalidCiphertext) {
					t.Fatalf("Decrypt(plain) error = %v, want ErrInvalidCiphertext", err)
				}
			})

			t.Run("bound to the column", func(t *testing.T) {
				secret := []byte("123-45-6789")
				cts, err := f.svc.Encrypt(ctx, colA, [][]byte{secret})
				if err != nil {
					t.Fatal(err)
				}
				pts, err := f.svc.Decrypt(ctx, colB, cts)
				if !errors.Is(err, ErrInvalidCiphertext) {
					t.Fatalf("decrypting column A's value as column B: got %q, %v; want ErrInvalidCiphertext", pts, err)
				}
				if strings.Contains(err.Error(), string(secret)) {
					t.Error("error message contains the plaintext")
				}
			})

			t.Run("tampered ciphertext", func(t *testing.T) {
				cts, err := f.svc.Encrypt(ctx, colA, [][]byte{[]byte("tamper me please")})
				if err != nil {
					t.Fatal(err)
				}
				c := bytes.Clone(cts[0])
				i := len(c) - 8 // inside the sealed payload's base64
				if c[i] == 'A' {
					c[i] = 'B'
				} else {
					c[i] = 'A'
				}
				_, err = f.svc.Decrypt(ctx, colA, [][]byte{cts[0], c})
				if !errors.Is(err, ErrInvalidCiphertext) {
					t.Fatalf("tampered: got %v, want ErrInvalidCiphertext", err)
				}
				if !strings.Contains(err.Error(), "value 1") {
					t.Errorf("error %q does not name the failing value's index", err)
				}
			})

			t.Run("searchable is convergent", func(t *testing.T) {
				col := Column{ID: "public.customers.email", Key: keySearch, Mode: f.mode, Searchable: true}
				if f.mode == ModeEnvelope {
					_, err := f.svc.Encrypt(ctx, col, [][]byte{[]byte("x")})
					if !errors.Is(err, ErrConfig) {
						t.Fatalf("searchable envelope column: got %v, want ErrConfig", err)
					}
					return
				}
				in := [][]byte{[]byte("a@example.com"), []byte("b@example.com"), []byte("a@example.com")}
				c1, err := f.svc.Encrypt(ctx, col, in)
				if err != nil {
					t.Fatal(err)
				}
				c2, err := f.svc.Encrypt(ctx, col, in[:1])
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(c1[0], c1[2]) || !bytes.Equal(c1[0], c2[0]) {
					t.Error("searchable: equal plaintexts gave different ciphertexts")
				}
				if bytes.Equal(c1[0], c1[1]) {
					t.Error("searchable: different plaintexts gave equal ciphertexts")
				}
				// Convergence is per column: another column's ciphertext of
				// the same value differs.
				other := col
				other.ID = "public.leads.email"
				c3, err := f.svc.Encrypt(ctx, other, in[:1])
				if err != nil {
					t.Fatal(err)
				}
				if bytes.Equal(c3[0], c1[0]) {
					t.Error("searchable: two columns gave equal ciphertexts for the same value")
				}
				pts, err := f.svc.Decrypt(ctx, col, c1)
				if err != nil {
					t.Fatal(err)
				}
				for i := range in {
					if !bytes.Equal(pts[i], in[i]) {
						t.Errorf("searchable value %d did not round-trip", i)
					}
				}
			})

			t.Run("missing key", func(t *testing.T) {
				col := Column{ID: "public.t.c", Key: "no-such-key", Mode: f.mode}
				_, err := f.svc.Encrypt(ctx, col, [][]byte{[]byte("x")})
				if !errors.Is(err, ErrKeyNotFound) {
					t.Fatalf("got %v, want ErrKeyNotFound", err)
				}
				info, err := f.svc.KeyInfo(ctx, "no-such-key")
				if err != nil || info.Exists {
					t.Fatalf("KeyInfo(missing) = %+v, %v", info, err)
				}
			})

			// Rotation runs last: it changes the key's latest version.
			t.Run("rotation and rewrap", func(t *testing.T) {
				info, err := f.svc.KeyInfo(ctx, keyPlain)
				if err != nil || !info.Exists || !info.Derived {
					t.Fatalf("KeyInfo = %+v, %v", info, err)
				}
				v0 := info.LatestVersion
				in := [][]byte{[]byte("old value 1"), []byte("old value 2")}
				old, err := f.svc.Encrypt(ctx, colA, in)
				if err != nil {
					t.Fatal(err)
				}
				f.rotate(t, keyPlain)
				info, err = f.svc.KeyInfo(ctx, keyPlain)
				if err != nil || info.LatestVersion != v0+1 {
					t.Fatalf("after rotation KeyInfo = %+v, %v; want version %d", info, err, v0+1)
				}
				pts, err := f.svc.Decrypt(ctx, colA, old)
				if err != nil {
					t.Fatalf("old version no longer decrypts: %v", err)
				}
				if !bytes.Equal(pts[0], in[0]) || !bytes.Equal(pts[1], in[1]) {
					t.Fatal("old values decrypt wrongly after rotation")
				}
				re, err := f.svc.Rewrap(ctx, colA, old)
				if err != nil {
					t.Fatal(err)
				}
				for i, c := range re {
					if !strings.HasPrefix(string(c), f.prefix(v0+1)) {
						t.Errorf("rewrapped value %d does not start with %q", i, f.prefix(v0+1))
					}
				}
				pts, err = f.svc.Decrypt(ctx, colA, re)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(pts[0], in[0]) || !bytes.Equal(pts[1], in[1]) {
					t.Fatal("rewrapped values decrypt wrongly")
				}
				if f.mode == ModeTransit {
					fresh, err := f.svc.Encrypt(ctx, colA, in[:1])
					if err != nil {
						t.Fatal(err)
					}
					if !strings.HasPrefix(string(fresh[0]), f.prefix(v0+1)) {
						t.Errorf("a new value after rotation does not use version %d", v0+1)
					}
				}
				if _, err := f.svc.Rewrap(ctx, colB, old); !errors.Is(err, ErrInvalidCiphertext) {
					t.Errorf("rewrap as another column: got %v, want ErrInvalidCiphertext", err)
				}
			})
		})
	}
}
