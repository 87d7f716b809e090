package vaultdev

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestBinaryFromEnv(t *testing.T) {
	t.Setenv("PGVEIL_VAULT_BIN", filepath.Join(t.TempDir(), "missing"))
	if _, err := Binary(); err == nil || !strings.Contains(err.Error(), "PGVEIL_VAULT_BIN") {
		t.Fatalf("missing PGVEIL_VAULT_BIN file: %v", err)
	}
	dir := t.TempDir()
	t.Setenv("PGVEIL_VAULT_BIN", "")
	t.Setenv("PGVEIL_CACHE", dir)
	if _, err := Binary(); err == nil || !strings.Contains(err.Error(), "build-vault.sh") {
		t.Fatalf("empty cache: %v", err)
	}
	p := filepath.Join(dir, "vault-"+Version, "vault")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := Binary(); err != nil || got != p {
		t.Fatalf("Binary() = %q, %v; want %q", got, err, p)
	}
}

// TestLifecycle starts a real dev server and exercises every outage kind:
// pause/resume keeps data, kill refuses connections, restart comes back on
// the same port and reruns Setup.
func TestLifecycle(t *testing.T) {
	setups := 0
	s := StartT(t, Config{Setup: func(ctx context.Context, s *Server) error {
		setups++
		_, err := s.Do(ctx, http.MethodPost, "transit/keys/k1", map[string]any{"derived": true})
		return err
	}})
	ctx := context.Background()
	if setups != 1 {
		t.Fatalf("Setup ran %d times, want 1", setups)
	}
	encrypt := func(ctx context.Context) error {
		_, err := s.Do(ctx, http.MethodPost, "transit/encrypt/k1", map[string]any{"plaintext": "aGk=", "context": "Yw=="})
		return err
	}
	if err := encrypt(ctx); err != nil {
		t.Fatalf("encrypt with the key Setup made: %v", err)
	}
	if _, err := s.Do(ctx, http.MethodPost, "transit/keys/extra", map[string]any{}); err != nil {
		t.Fatal(err)
	}
	port := s.Port()

	if err := s.Pause(); err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	err := encrypt(pctx)
	cancel()
	if err == nil {
		t.Fatal("a paused server answered")
	}
	if err := s.Resume(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Do(ctx, http.MethodGet, "transit/keys/extra", nil); err != nil {
		t.Fatalf("after resume, data is gone: %v", err)
	}

	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second); err == nil {
		c.Close()
		t.Fatal("a killed server still accepts connections")
	}
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if s.Port() != port || setups != 2 {
		t.Fatalf("after restart: port %d (was %d), setups %d", s.Port(), port, setups)
	}
	if err := encrypt(ctx); err != nil {
		t.Fatalf("after restart, Setup's key is missing: %v", err)
	}
	if _, err := s.Do(ctx, http.MethodGet, "transit/keys/extra", nil); err == nil {
		t.Fatal("a dev server kept data across a restart")
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	// A connection error: refused for a new connection, or EOF when the
	// client reuses a kept-alive connection the killed server left (a POST
	// is not retried on another one).
	var opErr *net.OpError
	if err := encrypt(ctx); err == nil || !errors.As(err, &opErr) && !errors.Is(err, io.EOF) {
		t.Fatalf("after Stop: %v, want a connection error", err)
	}
}
