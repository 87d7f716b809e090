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
	"sync/atomic"
	"testing"
	"time"
)

func TestKeyCacheTTLAndSize(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newKeyCache[int](3, time.Minute, func() time.Time { return now })
	c.put("a", 1)
	c.put("b", 2)
	c.put("c", 3)
	if v, ok := c.get("a"); !ok || v != 1 { // a is now most recent
		t.Fatalf("get(a) = %d, %t", v, ok)
	}
	c.put("d", 4) // evicts b, the least recently used
	if _, ok := c.get("b"); ok {
		t.Error("b survived beyond the size bound")
	}
	if c.len() != 3 {
		t.Errorf("len = %d, want 3", c.len())
	}
	for _, k := range []string{"a", "c", "d"} {
		if _, ok := c.get(k); !ok {
			t.Errorf("%s was evicted", k)
		}
	}
	now = now.Add(59 * time.Second)
	if _, ok := c.get("a"); !ok {
		t.Error("a expired before its TTL")
	}
	now = now.Add(2 * time.Second)
	if _, ok := c.get("a"); ok {
		t.Error("a outlived its TTL")
	}
	c.put("c", 30) // refreshes c's TTL
	if v, ok := c.get("c"); !ok || v != 30 {
		t.Errorf("get(c) after refresh = %d, %t", v, ok)
	}
	if _, ok := c.get("d"); ok {
		t.Error("d outlived its TTL")
	}
}

// countingKEK wraps the keyring's KEK and counts unwraps, to test the
// envelope's cache without Vault.
type countingKEK struct {
	kek
	unwraps, newKeys atomic.Int64
}

func (c *countingKEK) unwrapDataKeys(ctx context.Context, col Column, w []string) ([][]byte, error) {
	c.unwraps.Add(1)
	return c.kek.unwrapDataKeys(ctx, col, w)
}

func (c *countingKEK) newDataKey(ctx context.Context, col Column) ([]byte, string, error) {
	c.newKeys.Add(1)
	return c.kek.newDataKey(ctx, col)
}

func TestEnvelopeDataKeysAndCache(t *testing.T) {
	k, err := NewKeyring(KeyringConfig{Path: newKeyringFile(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	ctx := context.Background()
	col := Column{ID: "public.t.c", Key: keyPlain, Mode: ModeEnvelope}
	ck := &countingKEK{kek: keyringKEK{k}}
	writer := newEnvelope(EnvelopeConfig{DataKeyUses: 100}, ck)
	in := make([][]byte, 250)
	for i := range in {
		in[i] = []byte{byte(i)}
	}
	var cts [][]byte
	for lo := 0; lo < len(in); lo += 50 {
		out, err := writer.encrypt(ctx, col, in[lo:lo+50])
		if err != nil {
			t.Fatal(err)
		}
		cts = append(cts, out...)
	}
	// 5 batches of 50 with 100 uses per key: keys for batches 1-2, 3-4, 5.
	if n := ck.newKeys.Load(); n != 3 {
		t.Errorf("made %d data keys, want 3", n)
	}
	distinct := map[string]bool{}
	for _, c := range cts {
		w, _, _ := splitEnvelope(c)
		distinct[w] = true
	}
	if len(distinct) != 3 {
		t.Errorf("%d distinct wrapped keys, want 3", len(distinct))
	}

	// A reader with a cache of 2 keys: the first decrypt unwraps all 3 in
	// one call, a second decrypt finds at most 2 cached.
	rk := &countingKEK{kek: keyringKEK{k}}
	reader := newEnvelope(EnvelopeConfig{CacheSize: 2}, rk)
	pts, err := reader.decrypt(ctx, col, cts)
	if err != nil {
		t.Fatal(err)
	}
	for i := range in {
		if !bytes.Equal(pts[i], in[i]) {
			t.Fatalf("value %d did not round-trip", i)
		}
	}
	if n := rk.unwraps.Load(); n != 1 {
		t.Errorf("first decrypt: %d unwrap calls, want 1", n)
	}
	if n := reader.cache.len(); n != 2 {
		t.Errorf("cache holds %d keys, want the bound 2", n)
	}
	if _, err := reader.decrypt(ctx, col, cts[200:]); err != nil { // the last key is cached
		t.Fatal(err)
	}
	if n := rk.unwraps.Load(); n != 1 {
		t.Errorf("decrypt with a cached key made an unwrap call (total %d)", n)
	}
	if _, err := reader.decrypt(ctx, col, cts[:1]); err != nil { // the first key was evicted
		t.Fatal(err)
	}
	if n := rk.unwraps.Load(); n != 2 {
		t.Errorf("decrypt with an evicted key: %d unwrap calls in total, want 2", n)
	}

	// Data keys also expire by age.
	aged := newEnvelope(EnvelopeConfig{DataKeyMaxAge: time.Nanosecond}, ck)
	before := ck.newKeys.Load()
	for range 3 {
		if _, err := aged.encrypt(ctx, col, in[:1]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	if n := ck.newKeys.Load() - before; n != 3 {
		t.Errorf("with a 1ns max age, 3 encryptions made %d data keys, want 3", n)
	}
}

func TestKeyringFileMode(t *testing.T) {
	path := newKeyringFile(t)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("keyring created with mode %04o, want 0600", st.Mode().Perm())
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o660, 0o644} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := NewKeyring(KeyringConfig{Path: path})
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("mode %04o: got %v, want a refusal naming chmod 600", mode, err)
		}
		if _, err := RotateKeyringFile(path, keyPlain); err == nil {
			t.Errorf("mode %04o: rotate accepted the file", mode)
		}
	}
	if err := os.Chmod(path, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := NewKeyring(KeyringConfig{Path: path}); err != nil {
		t.Errorf("mode 0400: %v", err)
	}
}

func TestKeyringFileValidation(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, content, want string
	}{
		{"not json", "nope", "malformed JSON"},
		{"wrong format", `{"format":"x","keys":{}}`, "format"},
		{"unknown field", `{"format":"pgveil-keyring-v1","keys":{},"extra":1}`, "malformed JSON"},
		{"bad name", `{"format":"pgveil-keyring-v1","keys":{"a/b":{"versions":[{"version":1,"key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}]}}}`, "invalid key name"},
		{"no versions", `{"format":"pgveil-keyring-v1","keys":{"k":{"versions":[]}}}`, "no versions"},
		{"short key", `{"format":"pgveil-keyring-v1","keys":{"k":{"versions":[{"version":1,"key":"AAAA"}]}}}`, "32 bytes"},
		{"gap", `{"format":"pgveil-keyring-v1","keys":{"k":{"versions":[{"version":2,"key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}]}}}`, "in order"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".json")
			if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := NewKeyring(KeyringConfig{Path: p})
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrConfig mentioning %q", err, tc.want)
			}
		})
	}
}

func TestKeyringInitAddsKeysAndKeepsExisting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.json")
	added, err := InitKeyringFile(path, []string{"a"})
	if err != nil || len(added) != 1 {
		t.Fatalf("init: %v, %v", added, err)
	}
	k1, err := NewKeyring(KeyringConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	col := Column{ID: "s.t.c", Key: "a"}
	ct, err := k1.Encrypt(context.Background(), col, [][]byte{[]byte("v")})
	if err != nil {
		t.Fatal(err)
	}
	added, err = InitKeyringFile(path, []string{"a", "b"})
	if err != nil || len(added) != 1 || added[0] != "b" {
		t.Fatalf("second init added %v, %v; want [b]", added, err)
	}
	k2, err := NewKeyring(KeyringConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	if got := k2.KeyNames(); len(got) != 2 {
		t.Fatalf("keys = %v", got)
	}
	if pt, err := k2.Decrypt(context.Background(), col, ct); err != nil || string(pt[0]) != "v" {
		t.Fatalf("key a changed by the second init: %v", err)
	}
	if _, err := InitKeyringFile(path, []string{"bad name"}); !errors.Is(err, ErrConfig) {
		t.Fatalf("bad key name: %v", err)
	}
}

func TestColumnValidate(t *testing.T) {
	cases := []struct {
		col Column
		ok  bool
	}{
		{Column{ID: "s.t.c", Key: "k"}, true},
		{Column{ID: "s.t.c", Key: "k", Mode: ModeEnvelope}, true},
		{Column{ID: "s.t.c", Key: "k", Searchable: true}, true},
		{Column{ID: "s.t.c", Key: "k", Mode: ModeEnvelope, Searchable: true}, false},
		{Column{ID: "", Key: "k"}, false},
		{Column{ID: "s.t.c", Key: ""}, false},
		{Column{ID: "s.t.c", Key: "../sys"}, false},
		{Column{ID: "s.t.c", Key: "k", Mode: "rot13"}, false},
	}
	for _, tc := range cases {
		err := tc.col.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("Validate(%+v) = %v, want ok=%t", tc.col, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrConfig) {
			t.Errorf("Validate(%+v) = %v, not ErrConfig", tc.col, err)
		}
	}
}

func TestFormats(t *testing.T) {
	cases := []struct {
		in      string
		source  string
		version int
		ok      bool
	}{
		{"vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "vault", 1, true},
		{"vault:v12:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "vault", 12, true},
		{"local:v3:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "local", 3, true},
		{"vault:v0:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "vault", 0, false},
		{"vault:v1:", "vault", 0, false},
		{"vault:1:AAAA", "vault", 0, false},
		{"vaultx:v1:AAAA", "vault", 0, false},
		{"local:v1:AAAA", "vault", 0, false},
		{"vault:v1:AA AA", "vault", 0, false},
	}
	for _, tc := range cases {
		v, _, ok := splitVersioned(tc.source, []byte(tc.in))
		ok = ok && isVersionedCiphertext(tc.source, []byte(tc.in))
		if ok != tc.ok || (ok && v != tc.version) {
			t.Errorf("%q as %s: version %d ok %t, want %d %t", tc.in, tc.source, v, ok, tc.version, tc.ok)
		}
	}
	w, p, ok := splitEnvelope([]byte("pgveil:e1:vault:v2:QUJD:WFla"))
	if !ok || w != "vault:v2:QUJD" || string(p) != "WFla" {
		t.Errorf("splitEnvelope = %q %q %t", w, p, ok)
	}
	if _, _, ok := splitEnvelope([]byte("pgveil:e2:vault:v2:QUJD:WFla")); ok {
		t.Error("splitEnvelope accepted format e2")
	}
}

func TestErrorKindAndMessage(t *testing.T) {
	e := &Error{Op: "vault transit/decrypt", Key: "k", Addr: "https://vault:8200", Kind: ErrUnavailable, Err: errors.New("connection refused")}
	if !errors.Is(e, ErrUnavailable) || errors.Is(e, ErrDenied) {
		t.Error("Error does not unwrap to its kind only")
	}
	want := `vaultkms: vault transit/decrypt key "k" at https://vault:8200: key service unavailable: connection refused`
	if e.Error() != want {
		t.Errorf("Error() = %q, want %q", e.Error(), want)
	}
	for err, kind := range map[error]string{
		nil: "ok", e: "unavailable", &Error{Kind: ErrDenied}: "denied", &Error{Kind: ErrInvalidCiphertext}: "invalid",
		&Error{Kind: ErrKeyNotFound}: "not_found", context.Canceled: "canceled", errors.New("x"): "other",
	} {
		if got := ErrorKind(err); got != kind {
			t.Errorf("ErrorKind(%v) = %q, want %q", err, got, kind)
		}
	}
}

func TestKeyringObserverAndClose(t *testing.T) {
	var events []Event
	k, err := NewKeyring(KeyringConfig{Path: newKeyringFile(t), Observer: func(e Event) { events = append(events, e) }})
	if err != nil {
		t.Fatal(err)
	}
	col := Column{ID: "s.t.c", Key: keyPlain}
	if _, err := k.Encrypt(context.Background(), col, [][]byte{[]byte("a"), []byte("b")}); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Decrypt(context.Background(), col, [][]byte{[]byte("junk")}); err == nil {
		t.Fatal("decrypting junk succeeded")
	}
	if len(events) != 2 || events[0].Op != "encrypt" || events[0].Values != 2 || events[0].Kind != "ok" || events[1].Kind != "invalid" || events[0].Remote {
		t.Errorf("events = %+v", events)
	}
	k.Close()
	if _, err := k.Encrypt(context.Background(), col, [][]byte{[]byte("a")}); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: %v, want ErrClosed", err)
	}
}

// TestKeyringConcurrentUse runs encryptions, decryptions, rewraps and a
// rotation at once (run under -race): every value round-trips.
func TestKeyringConcurrentUse(t *testing.T) {
	path := newKeyringFile(t)
	k, err := NewKeyring(KeyringConfig{Path: path, Envelope: EnvelopeConfig{DataKeyUses: 7, CacheSize: 3}})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mode := ModeTransit
			if g%2 == 1 {
				mode = ModeEnvelope
			}
			col := Column{ID: fmt.Sprintf("s.t.c%d", g%3), Key: keyPlain, Mode: mode}
			for i := range 50 {
				in := [][]byte{fmt.Appendf(nil, "g%d-%d", g, i), fmt.Appendf(nil, "x%d", i)}
				cts, err := k.Encrypt(ctx, col, in)
				if err == nil {
					cts, err = k.Rewrap(ctx, col, cts)
				}
				var pts [][]byte
				if err == nil {
					pts, err = k.Decrypt(ctx, col, cts)
				}
				if err == nil && (!bytes.Equal(pts[0], in[0]) || !bytes.Equal(pts[1], in[1])) {
					err = fmt.Errorf("goroutine %d value %d did not round-trip", g, i)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	if _, err := RotateKeyringFile(path, keyPlain); err != nil {
		t.Fatal(err)
	}
	if err := k.Reload(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
