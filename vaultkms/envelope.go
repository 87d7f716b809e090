package vaultkms

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"sync"
	"time"
)

// envelopePrefix starts every envelope ciphertext: "pgveil:e1:" (format 1).
const envelopePrefix = "pgveil:e1:"

// dataKeyBytes is the size of a data key: AES-256.
const dataKeyBytes = 32

// gcmNonceBytes and gcmTagBytes are AES-GCM's standard nonce and tag sizes
// (NIST SP 800-38D, 5.2.1.1 and 5.2.1.2).
const (
	gcmNonceBytes = 12
	gcmTagBytes   = 16
)

// EnvelopeConfig tunes envelope mode. The zero value is usable.
type EnvelopeConfig struct {
	// CacheSize bounds how many unwrapped data keys are kept in memory
	// (least recently used are dropped first); 0 means 4096.
	CacheSize int
	// CacheTTL is how long an unwrapped data key stays cached; 0 means 10
	// minutes.
	CacheTTL time.Duration
	// DataKeyUses is how many values one data key encrypts before a new
	// one is made; 0 means 1<<20. Random 96-bit GCM nonces stay safe far
	// beyond that (NIST SP 800-38D, 8.3 allows 2^32 per key).
	DataKeyUses int
	// DataKeyMaxAge is how long a data key is used for encryption; 0
	// means one hour.
	DataKeyMaxAge time.Duration
}

func (c EnvelopeConfig) withDefaults() EnvelopeConfig {
	if c.CacheSize <= 0 {
		c.CacheSize = 4096
	}
	if c.CacheTTL <= 0 {
		c.CacheTTL = 10 * time.Minute
	}
	if c.DataKeyUses <= 0 {
		c.DataKeyUses = 1 << 20
	}
	if c.DataKeyMaxAge <= 0 {
		c.DataKeyMaxAge = time.Hour
	}
	return c
}

// kek is a key-encryption-key service for envelope mode: Vault transit's
// datakey and decrypt endpoints, or the keyring. Wrapped keys are ASCII
// without spaces, in the service's own "<source>:vN:<base64>" format.
type kek interface {
	// newDataKey returns a fresh data key and its wrapped form, bound to
	// col (derivation context).
	newDataKey(ctx context.Context, col Column) (plain []byte, wrapped string, err error)
	// unwrapDataKeys unwraps wrapped keys of col, in order.
	unwrapDataKeys(ctx context.Context, col Column, wrapped []string) ([][]byte, error)
	// rewrapDataKeys re-wraps keys of col under the newest key version.
	rewrapDataKeys(ctx context.Context, col Column, wrapped []string) ([]string, error)
	// isWrapped is a cheap format check for a wrapped key.
	isWrapped(s string) bool
	// addr names the service in errors.
	addr() string
}

// envelope implements ModeEnvelope over a kek.
type envelope struct {
	cfg   EnvelopeConfig
	kek   kek
	cache *keyCache[cipher.AEAD] // by column ID, NUL, wrapped key

	mu      sync.Mutex
	current map[string]*dataKey // by column ID, NUL, key name
}

// dataKey is the data key a column currently encrypts with.
type dataKey struct {
	aead    cipher.AEAD
	wrapped string
	uses    int
	created time.Time
}

func newEnvelope(cfg EnvelopeConfig, k kek) *envelope {
	cfg = cfg.withDefaults()
	return &envelope{
		cfg:     cfg,
		kek:     k,
		cache:   newKeyCache[cipher.AEAD](cfg.CacheSize, cfg.CacheTTL, time.Now),
		current: make(map[string]*dataKey),
	}
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func cacheKey(col Column, wrapped string) string { return col.ID + "\x00" + wrapped }

// dataKeyFor returns the data key to encrypt n values of col with, making
// a new one when the current one is used up or too old.
func (e *envelope) dataKeyFor(ctx context.Context, col Column, n int) (*dataKey, error) {
	id := col.ID + "\x00" + col.Key
	e.mu.Lock()
	dk := e.current[id]
	if dk != nil && dk.uses < e.cfg.DataKeyUses && time.Since(dk.created) < e.cfg.DataKeyMaxAge {
		dk.uses += n
		e.mu.Unlock()
		return dk, nil
	}
	e.mu.Unlock()

	plain, wrapped, err := e.kek.newDataKey(ctx, col)
	if err != nil {
		return nil, err
	}
	aead, err := newGCM(plain)
	clear(plain)
	if err != nil {
		return nil, &Error{Op: "envelope new data key", Key: col.Key, Addr: e.kek.addr(), Kind: ErrInvalidCiphertext, Err: err}
	}
	dk = &dataKey{aead: aead, wrapped: wrapped, uses: n, created: time.Now()}
	e.cache.put(cacheKey(col, wrapped), aead)
	e.mu.Lock()
	e.current[id] = dk
	e.mu.Unlock()
	return dk, nil
}

func (e *envelope) encrypt(ctx context.Context, col Column, plaintexts [][]byte) ([][]byte, error) {
	if len(plaintexts) == 0 {
		return [][]byte{}, nil
	}
	dk, err := e.dataKeyFor(ctx, col, len(plaintexts))
	if err != nil {
		return nil, err
	}
	ad := []byte(col.ID)
	out := make([][]byte, len(plaintexts))
	sealed := make([]byte, 0, 64)
	for i, pt := range plaintexts {
		sealed = sealed[:gcmNonceBytes]
		if _, err := rand.Read(sealed); err != nil {
			return nil, fmt.Errorf("vaultkms: envelope nonce: %w", err)
		}
		sealed = dk.aead.Seal(sealed, sealed[:gcmNonceBytes], pt, ad)
		v := make([]byte, 0, len(envelopePrefix)+len(dk.wrapped)+1+base64.StdEncoding.EncodedLen(len(sealed)))
		v = append(v, envelopePrefix...)
		v = append(v, dk.wrapped...)
		v = append(v, ':')
		v = base64.StdEncoding.AppendEncode(v, sealed)
		out[i] = v
	}
	return out, nil
}

// splitEnvelope splits "pgveil:e1:<wrapped>:<base64 nonce|ct>". The
// wrapped key contains colons itself; base64 does not, so the payload
// starts after the last colon.
func splitEnvelope(v []byte) (wrapped string, payload []byte, ok bool) {
	if !bytes.HasPrefix(v, []byte(envelopePrefix)) {
		return "", nil, false
	}
	rest := v[len(envelopePrefix):]
	i := bytes.LastIndexByte(rest, ':')
	if i <= 0 {
		return "", nil, false
	}
	return string(rest[:i]), rest[i+1:], true
}

func (e *envelope) isCiphertext(v []byte) bool {
	w, p, ok := splitEnvelope(v)
	if !ok || !e.kek.isWrapped(w) {
		return false
	}
	n := base64.StdEncoding.DecodedLen(len(p))
	return n >= gcmNonceBytes+gcmTagBytes && isBase64(p)
}

func isBase64(p []byte) bool {
	if len(p)%4 != 0 {
		return false
	}
	for i, c := range p {
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '+', c == '/':
		case c == '=' && i >= len(p)-2:
		default:
			return false
		}
	}
	return true
}

// resolve returns the AEADs for the distinct wrapped keys, from the cache
// or by unwrapping the missing ones in one batch.
func (e *envelope) resolve(ctx context.Context, col Column, wrapped []string) (map[string]cipher.AEAD, error) {
	keys := make(map[string]cipher.AEAD, 1)
	var missing []string
	for _, w := range wrapped {
		if _, done := keys[w]; done {
			continue
		}
		if a, ok := e.cache.get(cacheKey(col, w)); ok {
			keys[w] = a
			continue
		}
		keys[w] = nil
		missing = append(missing, w)
	}
	if len(missing) == 0 {
		return keys, nil
	}
	plains, err := e.kek.unwrapDataKeys(ctx, col, missing)
	if err != nil {
		return nil, err
	}
	for i, w := range missing {
		a, err := newGCM(plains[i])
		clear(plains[i])
		if err != nil {
			return nil, &Error{Op: "envelope unwrap", Key: col.Key, Addr: e.kek.addr(), Kind: ErrInvalidCiphertext, Err: fmt.Errorf("data key: %w", err)}
		}
		keys[w] = a
		e.cache.put(cacheKey(col, w), a)
	}
	return keys, nil
}

func (e *envelope) parseAll(col Column, op string, ciphertexts [][]byte) ([]string, [][]byte, error) {
	wrapped := make([]string, len(ciphertexts))
	payloads := make([][]byte, len(ciphertexts))
	for i, v := range ciphertexts {
		w, p, ok := splitEnvelope(v)
		if !ok || !e.kek.isWrapped(w) {
			return nil, nil, &Error{Op: op, Key: col.Key, Addr: e.kek.addr(), Kind: ErrInvalidCiphertext, Err: fmt.Errorf("value %d is not an envelope ciphertext", i)}
		}
		wrapped[i], payloads[i] = w, p
	}
	return wrapped, payloads, nil
}

func (e *envelope) decrypt(ctx context.Context, col Column, ciphertexts [][]byte) ([][]byte, error) {
	wrapped, payloads, err := e.parseAll(col, "envelope decrypt", ciphertexts)
	if err != nil {
		return nil, err
	}
	keys, err := e.resolve(ctx, col, wrapped)
	if err != nil {
		return nil, err
	}
	ad := []byte(col.ID)
	out := make([][]byte, len(ciphertexts))
	buf := make([]byte, 0, 64)
	for i, p := range payloads {
		buf, err = base64.StdEncoding.AppendDecode(buf[:0], p)
		if err != nil || len(buf) < gcmNonceBytes+gcmTagBytes {
			return nil, &Error{Op: "envelope decrypt", Key: col.Key, Addr: e.kek.addr(), Kind: ErrInvalidCiphertext, Err: fmt.Errorf("value %d: malformed payload", i)}
		}
		pt, err := keys[wrapped[i]].Open(nil, buf[:gcmNonceBytes], buf[gcmNonceBytes:], ad)
		if err != nil {
			return nil, &Error{Op: "envelope decrypt", Key: col.Key, Addr: e.kek.addr(), Kind: ErrInvalidCiphertext, Err: fmt.Errorf("value %d: %w", i, err)}
		}
		if pt == nil {
			pt = []byte{}
		}
		out[i] = pt
	}
	return out, nil
}

// rewrap re-wraps each value's data key under the newest key version; the
// sealed payload is unchanged.
func (e *envelope) rewrap(ctx context.Context, col Column, ciphertexts [][]byte) ([][]byte, error) {
	wrapped, payloads, err := e.parseAll(col, "envelope rewrap", ciphertexts)
	if err != nil {
		return nil, err
	}
	idx := make(map[string]int)
	var uniq []string
	for _, w := range wrapped {
		if _, ok := idx[w]; !ok {
			idx[w] = len(uniq)
			uniq = append(uniq, w)
		}
	}
	var rewrapped []string
	if len(uniq) > 0 {
		if rewrapped, err = e.kek.rewrapDataKeys(ctx, col, uniq); err != nil {
			return nil, err
		}
	}
	out := make([][]byte, len(ciphertexts))
	for i, p := range payloads {
		w := rewrapped[idx[wrapped[i]]]
		v := make([]byte, 0, len(envelopePrefix)+len(w)+1+len(p))
		v = append(v, envelopePrefix...)
		v = append(v, w...)
		v = append(v, ':')
		out[i] = append(v, p...)
	}
	return out, nil
}

func (e *envelope) close() {
	e.cache.clear()
	e.mu.Lock()
	clear(e.current)
	e.mu.Unlock()
}
