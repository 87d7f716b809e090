package vaultkms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgveil/pgveil/internal/vaultdev"
)

// eventLog records Observer events.
type eventLog struct {
	mu     sync.Mutex
	events []Event
}

func (l *eventLog) observe(e Event) {
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
}

// count returns how many events have op (a prefix) and, if kind != "",
// that kind.
func (l *eventLog) count(op, kind string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, e := range l.events {
		if strings.HasPrefix(e.Op, op) && (kind == "" || e.Kind == kind) {
			n++
		}
	}
	return n
}

// remote counts requests to Vault.
func (l *eventLog) remote() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, e := range l.events {
		if e.Remote {
			n++
		}
	}
	return n
}

func (l *eventLog) reset() {
	l.mu.Lock()
	l.events = nil
	l.mu.Unlock()
}

func values(n int, f string) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = fmt.Appendf(nil, f, i)
	}
	return out
}

// TestVaultTransitBatch encrypts and decrypts 10,000 values with derived
// keys in batches of 1000: 10 requests each way.
func TestVaultTransitBatch(t *testing.T) {
	s := startVault(t)
	var log eventLog
	v := newVault(t, VaultConfig{Addr: s.Addr(), Token: s.Token(), Observer: log.observe})
	ctx := context.Background()
	col := Column{ID: "public.payments.card_number", Key: keyPlain}
	in := values(10000, "4111-0000-%06d")
	log.reset()
	cts, err := v.Encrypt(ctx, col, in)
	if err != nil {
		t.Fatal(err)
	}
	// 10 encrypt batches plus one read of the key's settings.
	if n := log.count("vault transit/encrypt", "ok"); n != 10 {
		t.Errorf("%d encrypt requests, want 10", n)
	}
	if n := log.remote(); n != 11 {
		t.Errorf("%d requests to Vault, want 11", n)
	}
	log.reset()
	pts, err := v.Decrypt(ctx, col, cts)
	if err != nil {
		t.Fatal(err)
	}
	if n := log.remote(); n != 10 {
		t.Errorf("decrypt: %d requests to Vault, want 10", n)
	}
	for i := range in {
		if !bytes.Equal(pts[i], in[i]) {
			t.Fatalf("value %d did not round-trip", i)
		}
	}
	// A bad value deep in the batch is named by its index in the call.
	bad := append([][]byte(nil), cts...)
	bad[7500] = cts[7501]
	bad[7501] = []byte("vault:v1:" + strings.Repeat("A", 40))
	if _, err := v.Decrypt(ctx, col, bad); !errors.Is(err, ErrInvalidCiphertext) || !strings.Contains(err.Error(), "value 7501:") {
		t.Errorf("bad value 7501: got %v", err)
	}
	// Derivation: the key's context is the column, so Vault itself
	// refuses another column's context.
	_, err = v.Decrypt(ctx, Column{ID: "public.other.col", Key: keyPlain}, cts[:3])
	if !errors.Is(err, ErrInvalidCiphertext) {
		t.Fatalf("other column: %v", err)
	}
	if !strings.Contains(err.Error(), s.Addr()) || !strings.Contains(err.Error(), "transit/decrypt") {
		t.Errorf("error %q does not name the address and operation", err)
	}
	for _, p := range in[:3] {
		if strings.Contains(err.Error(), string(p)) {
			t.Fatal("error contains a plaintext")
		}
	}
}

func TestVaultKeySettings(t *testing.T) {
	s := startVault(t)
	v := newVault(t, VaultConfig{Addr: s.Addr(), Token: s.Token()})
	ctx := context.Background()
	// A searchable column on a randomised key, and the reverse, are
	// configuration errors, not silent non-searchability.
	for _, col := range []Column{
		{ID: "s.t.a", Key: keyPlain, Searchable: true},
		{ID: "s.t.b", Key: keySearch},
		{ID: "s.t.c", Key: keySearch, Mode: ModeEnvelope},
	} {
		if _, err := v.Encrypt(ctx, col, [][]byte{[]byte("x")}); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: got %v, want ErrConfig", col, err)
		}
	}
	// EnsureKey creates derived keys with the right convergence, accepts
	// them again, and refuses a mismatch.
	if err := v.EnsureKey(ctx, "new-search", true); err != nil {
		t.Fatal(err)
	}
	if err := v.EnsureKey(ctx, "new-search", true); err != nil {
		t.Fatalf("EnsureKey twice: %v", err)
	}
	info, err := v.KeyInfo(ctx, "new-search")
	if err != nil || !info.Exists || !info.Derived || !info.Convergent || info.LatestVersion != 1 {
		t.Fatalf("KeyInfo = %+v, %v", info, err)
	}
	if err := v.EnsureKey(ctx, "new-search", false); !errors.Is(err, ErrConfig) {
		t.Fatalf("EnsureKey with other settings: %v", err)
	}
	if _, err := s.Do(ctx, "POST", "transit/keys/not-derived", map[string]any{}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Encrypt(ctx, Column{ID: "s.t.d", Key: "not-derived"}, [][]byte{[]byte("x")}); !errors.Is(err, ErrConfig) {
		t.Errorf("non-derived key: got %v, want ErrConfig", err)
	}
}

// TestVaultEnvelopeCallCount decrypts 100,000 envelope values with a
// handful of Vault calls: data keys are unwrapped in one batch and cached.
func TestVaultEnvelopeCallCount(t *testing.T) {
	s := startVault(t)
	ctx := context.Background()
	col := Column{ID: "public.customers.notes", Key: keyPlain, Mode: ModeEnvelope}
	var wlog eventLog
	w := newVault(t, VaultConfig{Addr: s.Addr(), Token: s.Token(), Observer: wlog.observe, Envelope: EnvelopeConfig{DataKeyUses: 10000}})
	wlog.reset() // NewVault looked its token up
	in := values(100000, "note %d")
	var cts [][]byte
	for lo := 0; lo < len(in); lo += 5000 {
		out, err := w.Encrypt(ctx, col, in[lo:lo+5000])
		if err != nil {
			t.Fatal(err)
		}
		cts = append(cts, out...)
	}
	// 100,000 values at 10,000 per data key: 10 data keys, one key read.
	if n := wlog.count("vault transit/datakey", "ok"); n != 10 {
		t.Errorf("writer made %d datakey requests, want 10", n)
	}
	if n := wlog.remote(); n != 11 {
		t.Errorf("writer made %d requests, want 11", n)
	}

	var rlog eventLog
	r := newVault(t, VaultConfig{Addr: s.Addr(), Token: s.Token(), Observer: rlog.observe})
	rlog.reset()
	start := time.Now()
	pts, err := r.Decrypt(ctx, col, cts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("decrypted 100,000 envelope values in %v with %d Vault requests", time.Since(start), rlog.remote())
	if n := rlog.remote(); n != 1 {
		t.Errorf("reader made %d Vault requests for 100,000 values, want 1 (one batch unwrap of 10 data keys)", n)
	}
	for i := range in {
		if !bytes.Equal(pts[i], in[i]) {
			t.Fatalf("value %d did not round-trip", i)
		}
	}
	if _, err := r.Decrypt(ctx, col, cts); err != nil {
		t.Fatal(err)
	}
	if n := rlog.remote(); n != 1 {
		t.Errorf("a second decrypt with cached keys made %d requests in total, want still 1", n)
	}
}

// TestVaultDenied: a token whose policy does not grant transit gets
// ErrDenied, never ErrUnavailable, and no retries.
func TestVaultDenied(t *testing.T) {
	s := startVault(t)
	ctx := context.Background()
	if _, err := s.Do(ctx, "PUT", "sys/policies/acl/only-keys", map[string]any{
		"policy": `path "transit/keys/*" { capabilities = ["read"] }`,
	}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.DoToken(ctx, s.Token(), "POST", "auth/token/create", map[string]any{"policies": []string{"only-keys"}, "ttl": "1h"})
	if err != nil {
		t.Fatal(err)
	}
	token := resp["auth"].(map[string]any)["client_token"].(string)
	var log eventLog
	v := newVault(t, VaultConfig{Addr: s.Addr(), Token: token, Observer: log.observe})
	col := Column{ID: "s.t.c", Key: keyPlain}
	_, err = v.Encrypt(ctx, col, [][]byte{[]byte("secret value")})
	if !errors.Is(err, ErrDenied) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("got %v, want ErrDenied", err)
	}
	if !strings.Contains(err.Error(), s.Addr()) || !strings.Contains(err.Error(), "403") || strings.Contains(err.Error(), "secret value") {
		t.Errorf("error message %q: want the address and status, never the value", err)
	}
	if n := log.count("vault transit/encrypt", "denied"); n != 1 {
		t.Errorf("%d denied encrypt requests, want exactly 1 (no retry on 403)", n)
	}
	if _, err := v.Decrypt(ctx, col, [][]byte{[]byte("vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")}); !errors.Is(err, ErrDenied) {
		t.Errorf("decrypt: got %v, want ErrDenied", err)
	}
	// A token Vault does not know is denied at NewVault.
	if _, err := NewVault(ctx, VaultConfig{Addr: s.Addr(), Token: "not-a-token"}); !errors.Is(err, ErrDenied) {
		t.Errorf("unknown token: got %v, want ErrDenied", err)
	}
}

// writeAppRole enables AppRole with the root token and writes role_id and
// secret_id files for a role whose tokens live ttl (renewable up to max).
func writeAppRole(t *testing.T, s *vaultdev.Server, ttl, maxTTL string) *AppRole {
	t.Helper()
	ctx := context.Background()
	if _, err := s.Do(ctx, "POST", "sys/auth/approle", map[string]any{"type": "approle"}); err != nil && !strings.Contains(err.Error(), "already in use") {
		t.Fatal(err)
	}
	if _, err := s.Do(ctx, "PUT", "sys/policies/acl/pgveil", map[string]any{
		"policy": `path "transit/encrypt/*" { capabilities = ["update"] }
path "transit/decrypt/*" { capabilities = ["update"] }
path "transit/keys/*" { capabilities = ["read"] }`,
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Do(ctx, "POST", "auth/approle/role/pgveil", map[string]any{
		"token_policies": []string{"pgveil"}, "token_ttl": ttl, "token_max_ttl": maxTTL,
	}); err != nil {
		t.Fatal(err)
	}
	rid, err := s.Do(ctx, "GET", "auth/approle/role/pgveil/role-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	sid, err := s.Do(ctx, "POST", "auth/approle/role/pgveil/secret-id", map[string]any{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	a := &AppRole{RoleIDFile: filepath.Join(dir, "role_id"), SecretIDFile: filepath.Join(dir, "secret_id")}
	if err := os.WriteFile(a.RoleIDFile, []byte(rid["role_id"].(string)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(a.SecretIDFile, []byte(sid["secret_id"].(string)), 0o600); err != nil {
		t.Fatal(err)
	}
	return a
}

// TestVaultAppRoleRenewAndRelogin logs in with AppRole; tokens live 3s and
// at most 5s, so within 8s the service must renew and log in again, and
// keep working throughout.
func TestVaultAppRoleRenewAndRelogin(t *testing.T) {
	s := startVault(t)
	a := writeAppRole(t, s, "3s", "5s")
	var log eventLog
	v := newVault(t, VaultConfig{Addr: s.Addr(), AppRole: a, Observer: log.observe})
	ctx := context.Background()
	col := Column{ID: "s.t.c", Key: keyPlain}
	deadline := time.Now().Add(8 * time.Second)
	for time.Now().Before(deadline) {
		cts, err := v.Encrypt(ctx, col, [][]byte{[]byte("v")})
		if err != nil {
			t.Fatalf("encrypt at %v: %v", time.Until(deadline), err)
		}
		if _, err := v.Decrypt(ctx, col, cts); err != nil {
			t.Fatalf("decrypt: %v", err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	if n := log.count("vault auth/login", "ok"); n < 2 {
		t.Errorf("%d AppRole logins in 8s with a 5s max TTL, want >= 2", n)
	}
	if n := log.count("vault token/renew", "ok"); n < 1 {
		t.Errorf("%d token renewals, want >= 1", n)
	}
	// A wrong secret_id is denied at NewVault.
	if err := os.WriteFile(a.SecretIDFile, []byte("wrong"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewVault(ctx, VaultConfig{Addr: s.Addr(), AppRole: a}); !errors.Is(err, ErrDenied) {
		t.Errorf("wrong secret_id: got %v, want ErrDenied", err)
	}
}

// TestVaultTokenRenewal uses a renewable 2s token: without renewal it
// would expire long before the 5s the test runs.
func TestVaultTokenRenewal(t *testing.T) {
	s := startVault(t)
	ctx := context.Background()
	resp, err := s.DoToken(ctx, s.Token(), "POST", "auth/token/create", map[string]any{"ttl": "2s", "explicit_max_ttl": "1h", "renewable": true})
	if err != nil {
		t.Fatal(err)
	}
	token := resp["auth"].(map[string]any)["client_token"].(string)
	var log eventLog
	v := newVault(t, VaultConfig{Addr: s.Addr(), Token: token, Observer: log.observe})
	col := Column{ID: "s.t.c", Key: keyPlain}
	time.Sleep(5 * time.Second)
	if _, err := v.Encrypt(ctx, col, [][]byte{[]byte("v")}); err != nil {
		t.Fatalf("after 5s with a 2s token: %v", err)
	}
	if n := log.count("vault token/renew", "ok"); n < 2 {
		t.Errorf("%d renewals in 5s of a 2s token, want >= 2", n)
	}
}

// TestVaultDownAndRecovery: a hung Vault (SIGSTOP) and a dead one (killed)
// give ErrUnavailable within the configured timeouts, with a message
// naming the address; the service recovers when Vault is back.
func TestVaultDownAndRecovery(t *testing.T) {
	s := startVault(t)
	var log eventLog
	v := newVault(t, VaultConfig{
		Addr: s.Addr(), Token: s.Token(), Observer: log.observe,
		Timeout: 400 * time.Millisecond, MaxAttempts: 3, BackoffMin: 50 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
	})
	ctx := context.Background()
	col := Column{ID: "s.t.c", Key: keyPlain}
	cts, err := v.Encrypt(ctx, col, [][]byte{[]byte("before")})
	if err != nil {
		t.Fatal(err)
	}
	envCol := Column{ID: "s.t.env", Key: keyPlain, Mode: ModeEnvelope}
	envCts, err := v.Encrypt(ctx, envCol, [][]byte{[]byte("cached")})
	if err != nil {
		t.Fatal(err)
	}
	// 3 attempts of 400ms and two backoffs of at most 200ms: 1.6s at
	// most, plus slack for a loaded machine.
	const bound = 3 * time.Second
	expectUnavailable := func(what string) {
		t.Helper()
		start := time.Now()
		_, err := v.Decrypt(ctx, col, cts)
		took := time.Since(start)
		if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrDenied) {
			t.Fatalf("%s: got %v, want ErrUnavailable", what, err)
		}
		if took > bound {
			t.Errorf("%s: took %v, want < %v", what, took, bound)
		}
		if !strings.Contains(err.Error(), s.Addr()) || !strings.Contains(err.Error(), "3 attempts") {
			t.Errorf("%s: message %q does not name the address and attempts", what, err)
		}
		t.Logf("%s after %v: %v", what, took.Round(time.Millisecond), err)
	}

	if err := s.Pause(); err != nil {
		t.Fatal(err)
	}
	expectUnavailable("paused")
	// Envelope values whose data key is cached still decrypt.
	if pts, err := v.Decrypt(ctx, envCol, envCts); err != nil || string(pts[0]) != "cached" {
		t.Errorf("envelope with a cached data key while Vault hangs: %v", err)
	}
	// The caller's deadline wins over retries.
	dctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	start := time.Now()
	_, err = v.Decrypt(dctx, col, cts)
	cancel()
	if !errors.Is(err, ErrUnavailable) || time.Since(start) > time.Second {
		t.Errorf("with a 100ms deadline: %v after %v", err, time.Since(start))
	}
	if err := s.Resume(); err != nil {
		t.Fatal(err)
	}
	pts, err := v.Decrypt(ctx, col, cts)
	if err != nil || string(pts[0]) != "before" {
		t.Fatalf("after resume: %v", err)
	}

	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	expectUnavailable("killed")
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	// A dev server forgets its keys; Setup recreated them, so new values
	// work again (old ones cannot: their key is gone, and that is an
	// invalid ciphertext, not an outage).
	fresh, err := v.Encrypt(ctx, col, [][]byte{[]byte("after")})
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	pts, err = v.Decrypt(ctx, col, fresh)
	if err != nil || string(pts[0]) != "after" {
		t.Fatalf("after restart: %v", err)
	}
	if n := log.count("vault transit/decrypt", "unavailable"); n < 2 {
		t.Errorf("observer saw %d unavailable decrypts, want >= 2", n)
	}
}

func TestNewVaultConfig(t *testing.T) {
	ctx := context.Background()
	for _, cfg := range []VaultConfig{
		{},
		{Addr: "http://127.0.0.1:1"},
		{Addr: "http://127.0.0.1:1", Token: "t", AppRole: &AppRole{RoleIDFile: "a", SecretIDFile: "b"}},
		{Addr: "http://127.0.0.1:1", AppRole: &AppRole{RoleIDFile: "a"}},
		{Addr: "http://127.0.0.1:1", Token: "t", TLS: VaultTLS{CAFile: "/nonexistent/ca.pem"}},
	} {
		if _, err := NewVault(ctx, cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("NewVault(%+v) = %v, want ErrConfig", cfg, err)
		}
	}
	// Nothing listens on port 1: unavailable, quickly.
	start := time.Now()
	_, err := NewVault(ctx, VaultConfig{Addr: "http://127.0.0.1:1", Token: "t", MaxAttempts: 2, BackoffMin: time.Millisecond})
	if !errors.Is(err, ErrUnavailable) || time.Since(start) > 2*time.Second {
		t.Errorf("unreachable Vault: %v after %v", err, time.Since(start))
	}
}

// TestVaultTLS talks HTTPS to a -dev-tls server: trusting its CA works,
// the system roots or a wrong server name are configuration errors (not
// retried as outages).
func TestVaultTLS(t *testing.T) {
	s := vaultdev.StartT(t, vaultdev.Config{TLS: true, Setup: setupKeys})
	if !strings.HasPrefix(s.Addr(), "https://") {
		t.Fatalf("Addr = %s", s.Addr())
	}
	ctx := context.Background()
	v := newVault(t, VaultConfig{Addr: s.Addr(), Token: s.Token(), TLS: VaultTLS{CAFile: s.CAFile()}})
	col := Column{ID: "s.t.c", Key: keyPlain}
	cts, err := v.Encrypt(ctx, col, [][]byte{[]byte("over TLS")})
	if err != nil {
		t.Fatal(err)
	}
	if pts, err := v.Decrypt(ctx, col, cts); err != nil || string(pts[0]) != "over TLS" {
		t.Fatalf("decrypt over TLS: %v", err)
	}
	v2 := newVault(t, VaultConfig{Addr: s.Addr(), Token: s.Token(), TLS: VaultTLS{CAFile: s.CAFile(), ServerName: "localhost"}})
	if _, err := v2.Encrypt(ctx, col, [][]byte{[]byte("x")}); err != nil {
		t.Fatalf("ServerName localhost: %v", err)
	}
	for name, tlsCfg := range map[string]VaultTLS{
		"system roots": {},
		"wrong name":   {CAFile: s.CAFile(), ServerName: "vault.invalid"},
	} {
		start := time.Now()
		_, err := NewVault(ctx, VaultConfig{Addr: s.Addr(), Token: s.Token(), TLS: tlsCfg, BackoffMin: time.Second})
		if !errors.Is(err, ErrConfig) || time.Since(start) > time.Second {
			t.Errorf("%s: got %v after %v, want ErrConfig without retries", name, err, time.Since(start))
		}
	}
}
