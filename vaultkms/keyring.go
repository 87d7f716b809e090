package vaultkms

import (
	"context"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"
)

// keyringFormat identifies the keyring file format.
const keyringFormat = "pgveil-keyring-v1"

// keyringSource prefixes the keyring's ciphertexts: "local:vN:<base64>".
const keyringSource = "local"

// masterKeyBytes is the size of a keyring master key version.
const masterKeyBytes = 32

// HKDF info labels: one derived key per (master key version, column, use).
const (
	infoValueKey   = "pgveil keyring value key\x00"
	infoNonceKey   = "pgveil keyring convergent nonce key\x00"
	infoDataKeyKEK = "pgveil keyring data key wrapping key\x00"
)

// KeyringConfig configures a local keyring.
type KeyringConfig struct {
	// Path is the keyring file written by `pgveil keyring init`; required.
	// It must not be readable or writable by group or others.
	Path string
	// Envelope tunes envelope-mode columns; the zero value is usable.
	Envelope EnvelopeConfig
	// Observer, if not nil, receives an Event per operation.
	Observer Observer
}

// keyringFile is the JSON document on disk.
type keyringFile struct {
	Format string                 `json:"format"`
	Keys   map[string]*keyringKey `json:"keys"`
}

type keyringKey struct {
	Versions []keyringVersion `json:"versions"`
}

type keyringVersion struct {
	Version int       `json:"version"`
	Created time.Time `json:"created"`
	// Key is the base64 of 32 random bytes.
	Key []byte `json:"key"`
}

// Keyring is the local key service: master keys with versions, read from a
// 0600 file. It serves ModeTransit columns with keys derived per column
// (HKDF-SHA256) and ModeEnvelope columns with data keys wrapped by such
// derived keys. It implements Service.
type Keyring struct {
	cfg      KeyringConfig
	mu       sync.RWMutex
	keys     map[string]*keyringKey
	derived  *keyCache[cipher.AEAD]
	nonceKey *keyCache[[]byte]
	env      *envelope
	closed   bool
}

// NewKeyring loads the keyring at cfg.Path. It refuses a file that group
// or others can read or write.
func NewKeyring(cfg KeyringConfig) (*Keyring, error) {
	if cfg.Path == "" {
		return nil, fmt.Errorf("%w: keyring path is empty", ErrConfig)
	}
	f, err := loadKeyringFile(cfg.Path)
	if err != nil {
		return nil, err
	}
	k := &Keyring{
		cfg:      cfg,
		keys:     f.Keys,
		derived:  newKeyCache[cipher.AEAD](4096, time.Hour, time.Now),
		nonceKey: newKeyCache[[]byte](4096, time.Hour, time.Now),
	}
	k.env = newEnvelope(cfg.Envelope, keyringKEK{k})
	return k, nil
}

func loadKeyringFile(path string) (*keyringFile, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: keyring: %w", ErrConfig, err)
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: keyring: %w", ErrConfig, err)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: keyring %s has mode %04o: it must not be readable or writable by group or others (chmod 600 %s)", ErrConfig, path, perm, path)
	}
	var f keyringFile
	dec := json.NewDecoder(fh)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%w: keyring %s: malformed JSON", ErrConfig, path)
	}
	if f.Format != keyringFormat {
		return nil, fmt.Errorf("%w: keyring %s: format %q, want %q", ErrConfig, path, f.Format, keyringFormat)
	}
	if f.Keys == nil {
		f.Keys = make(map[string]*keyringKey)
	}
	for name, key := range f.Keys {
		if !validKeyName(name) {
			return nil, fmt.Errorf("%w: keyring %s: invalid key name %q", ErrConfig, path, name)
		}
		if key == nil || len(key.Versions) == 0 {
			return nil, fmt.Errorf("%w: keyring %s: key %q has no versions", ErrConfig, path, name)
		}
		for i, v := range key.Versions {
			if v.Version != i+1 {
				return nil, fmt.Errorf("%w: keyring %s: key %q: versions must be 1, 2, ... in order", ErrConfig, path, name)
			}
			if len(v.Key) != masterKeyBytes {
				return nil, fmt.Errorf("%w: keyring %s: key %q version %d is not %d bytes", ErrConfig, path, name, v.Version, masterKeyBytes)
			}
		}
	}
	return &f, nil
}

// writeKeyringFile replaces path atomically with f, mode 0600.
func writeKeyringFile(path string, f *keyringFile) error {
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".keyring-*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func newKeyVersion(version int) (keyringVersion, error) {
	key := make([]byte, masterKeyBytes)
	if _, err := rand.Read(key); err != nil {
		return keyringVersion{}, err
	}
	return keyringVersion{Version: version, Created: time.Now().UTC().Truncate(time.Second), Key: key}, nil
}

// InitKeyringFile creates the keyring file at path (mode 0600) with a
// first version of each named key, or, if it exists, adds the keys it
// lacks. It returns the names of the keys it added.
func InitKeyringFile(path string, keys []string) ([]string, error) {
	for _, name := range keys {
		if err := checkKeyName(name); err != nil {
			return nil, err
		}
	}
	f := &keyringFile{Format: keyringFormat, Keys: make(map[string]*keyringKey)}
	if _, err := os.Lstat(path); err == nil {
		if f, err = loadKeyringFile(path); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	var added []string
	for _, name := range keys {
		if _, ok := f.Keys[name]; ok {
			continue
		}
		v, err := newKeyVersion(1)
		if err != nil {
			return nil, fmt.Errorf("keyring: %w", err)
		}
		f.Keys[name] = &keyringKey{Versions: []keyringVersion{v}}
		added = append(added, name)
	}
	if err := writeKeyringFile(path, f); err != nil {
		return nil, fmt.Errorf("keyring: write %s: %w", path, err)
	}
	return added, nil
}

// RotateKeyringFile adds a new version to key in the keyring file at path
// and returns it. New values use it; older versions still decrypt.
// A running Keyring sees it after Reload.
func RotateKeyringFile(path, key string) (int, error) {
	f, err := loadKeyringFile(path)
	if err != nil {
		return 0, err
	}
	k, ok := f.Keys[key]
	if !ok {
		return 0, fmt.Errorf("%w: keyring %s has no key %q (add it with keyring init --key)", ErrKeyNotFound, path, key)
	}
	v, err := newKeyVersion(len(k.Versions) + 1)
	if err != nil {
		return 0, fmt.Errorf("keyring: %w", err)
	}
	k.Versions = append(k.Versions, v)
	if err := writeKeyringFile(path, f); err != nil {
		return 0, fmt.Errorf("keyring: write %s: %w", path, err)
	}
	return v.Version, nil
}

// Reload re-reads the keyring file, e.g. after RotateKeyringFile.
func (k *Keyring) Reload() error {
	f, err := loadKeyringFile(k.cfg.Path)
	if err != nil {
		return err
	}
	k.mu.Lock()
	k.keys = f.Keys
	k.mu.Unlock()
	return nil
}

// KeyNames returns the keyring's key names, sorted.
func (k *Keyring) KeyNames() []string {
	k.mu.RLock()
	defer k.mu.RUnlock()
	names := make([]string, 0, len(k.keys))
	for n := range k.keys {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// master returns version v of key (0 = latest) and the version number.
func (k *Keyring) master(op, key string, v int) ([]byte, int, error) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.closed {
		return nil, 0, &Error{Op: op, Key: key, Addr: k.cfg.Path, Kind: ErrClosed}
	}
	kk, ok := k.keys[key]
	if !ok {
		return nil, 0, &Error{Op: op, Key: key, Addr: k.cfg.Path, Kind: ErrKeyNotFound}
	}
	if v == 0 {
		v = len(kk.Versions)
	}
	if v < 1 || v > len(kk.Versions) {
		return nil, 0, &Error{Op: op, Key: key, Addr: k.cfg.Path, Kind: ErrInvalidCiphertext, Err: fmt.Errorf("unknown key version %d", v)}
	}
	return kk.Versions[v-1].Key, v, nil
}

// aead returns the AES-256-GCM of (key, version, column, use).
func (k *Keyring) aead(op string, col Column, v int, info string) (cipher.AEAD, int, error) {
	m, v, err := k.master(op, col.Key, v)
	if err != nil {
		return nil, 0, err
	}
	ck := col.Key + "\x00" + strconv.Itoa(v) + "\x00" + info + col.ID
	if a, ok := k.derived.get(ck); ok {
		return a, v, nil
	}
	dk, err := hkdf.Key(sha256.New, m, nil, info+col.ID, 32)
	if err != nil {
		return nil, 0, fmt.Errorf("vaultkms: keyring derive: %w", err)
	}
	a, err := newGCM(dk)
	if err != nil {
		return nil, 0, fmt.Errorf("vaultkms: keyring derive: %w", err)
	}
	k.derived.put(ck, a)
	return a, v, nil
}

func (k *Keyring) convergentNonceKey(col Column, v int) ([]byte, error) {
	ck := col.Key + "\x00" + strconv.Itoa(v) + "\x00" + col.ID
	if nk, ok := k.nonceKey.get(ck); ok {
		return nk, nil
	}
	m, _, err := k.master("encrypt", col.Key, v)
	if err != nil {
		return nil, err
	}
	nk, err := hkdf.Key(sha256.New, m, nil, infoNonceKey+col.ID, 32)
	if err != nil {
		return nil, fmt.Errorf("vaultkms: keyring derive: %w", err)
	}
	k.nonceKey.put(ck, nk)
	return nk, nil
}

// seal encrypts pts for col with the latest version under info:
// "local:vN:" + base64(nonce | ciphertext | tag), the column ID as
// associated data. With convergent, the nonce is HMAC-SHA256 of the
// plaintext under a per-column nonce key (a synthetic IV), so equal
// plaintexts give equal ciphertexts; otherwise it is random.
func (k *Keyring) seal(op string, col Column, info string, convergent bool, pts [][]byte) ([][]byte, error) {
	a, v, err := k.aead(op, col, 0, info)
	if err != nil {
		return nil, err
	}
	var h hash.Hash
	if convergent {
		nk, err := k.convergentNonceKey(col, v)
		if err != nil {
			return nil, err
		}
		h = hmac.New(sha256.New, nk)
	}
	prefix := keyringSource + ":v" + strconv.Itoa(v) + ":"
	ad := []byte(col.ID)
	out := make([][]byte, len(pts))
	buf := make([]byte, 0, 64)
	var sum [sha256.Size]byte
	for i, pt := range pts {
		buf = buf[:gcmNonceBytes]
		if convergent {
			h.Reset()
			h.Write(pt)
			copy(buf, h.Sum(sum[:0]))
		} else if _, err := rand.Read(buf); err != nil {
			return nil, fmt.Errorf("vaultkms: keyring nonce: %w", err)
		}
		buf = a.Seal(buf, buf[:gcmNonceBytes], pt, ad)
		c := make([]byte, 0, len(prefix)+base64.StdEncoding.EncodedLen(len(buf)))
		c = append(c, prefix...)
		out[i] = base64.StdEncoding.AppendEncode(c, buf)
	}
	return out, nil
}

// open decrypts "local:vN:..." values of col under info.
func (k *Keyring) open(op string, col Column, info string, cts [][]byte) ([][]byte, error) {
	ad := []byte(col.ID)
	out := make([][]byte, len(cts))
	buf := make([]byte, 0, 64)
	for i, c := range cts {
		v, b64, ok := splitVersioned(keyringSource, c)
		if !ok {
			return nil, &Error{Op: op, Key: col.Key, Addr: k.cfg.Path, Kind: ErrInvalidCiphertext, Err: fmt.Errorf("value %d is not a keyring ciphertext", i)}
		}
		a, _, err := k.aead(op, col, v, info)
		if err != nil {
			return nil, err
		}
		buf, err = base64.StdEncoding.AppendDecode(buf[:0], b64)
		if err != nil || len(buf) < gcmNonceBytes+gcmTagBytes {
			return nil, &Error{Op: op, Key: col.Key, Addr: k.cfg.Path, Kind: ErrInvalidCiphertext, Err: fmt.Errorf("value %d: malformed", i)}
		}
		pt, err := a.Open(nil, buf[:gcmNonceBytes], buf[gcmNonceBytes:], ad)
		if err != nil {
			return nil, &Error{Op: op, Key: col.Key, Addr: k.cfg.Path, Kind: ErrInvalidCiphertext, Err: fmt.Errorf("value %d: %w", i, err)}
		}
		if pt == nil {
			pt = []byte{}
		}
		out[i] = pt
	}
	return out, nil
}

// Encrypt implements Service.
func (k *Keyring) Encrypt(ctx context.Context, col Column, plaintexts [][]byte) (out [][]byte, err error) {
	defer func(start time.Time) { k.cfg.Observer.observe("encrypt", false, col.Key, len(plaintexts), start, err) }(time.Now())
	if err := col.Validate(); err != nil {
		return nil, err
	}
	if col.mode() == ModeEnvelope {
		return k.env.encrypt(ctx, col, plaintexts)
	}
	return k.seal("encrypt", col, infoValueKey, col.Searchable, plaintexts)
}

// Decrypt implements Service.
func (k *Keyring) Decrypt(ctx context.Context, col Column, ciphertexts [][]byte) (out [][]byte, err error) {
	defer func(start time.Time) { k.cfg.Observer.observe("decrypt", false, col.Key, len(ciphertexts), start, err) }(time.Now())
	if err := col.Validate(); err != nil {
		return nil, err
	}
	if col.mode() == ModeEnvelope {
		return k.env.decrypt(ctx, col, ciphertexts)
	}
	return k.open("decrypt", col, infoValueKey, ciphertexts)
}

// Rewrap implements Service.
func (k *Keyring) Rewrap(ctx context.Context, col Column, ciphertexts [][]byte) (out [][]byte, err error) {
	defer func(start time.Time) { k.cfg.Observer.observe("rewrap", false, col.Key, len(ciphertexts), start, err) }(time.Now())
	if err := col.Validate(); err != nil {
		return nil, err
	}
	if col.mode() == ModeEnvelope {
		return k.env.rewrap(ctx, col, ciphertexts)
	}
	pts, err := k.open("rewrap", col, infoValueKey, ciphertexts)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, p := range pts {
			clear(p)
		}
	}()
	return k.seal("rewrap", col, infoValueKey, col.Searchable, pts)
}

// IsCiphertext implements Service.
func (k *Keyring) IsCiphertext(col Column, v []byte) bool {
	if col.mode() == ModeEnvelope {
		return k.env.isCiphertext(v)
	}
	return isVersionedCiphertext(keyringSource, v)
}

func isVersionedCiphertext(source string, v []byte) bool {
	_, b64, ok := splitVersioned(source, v)
	return ok && isBase64(b64) && base64.StdEncoding.DecodedLen(len(b64)) >= gcmNonceBytes+gcmTagBytes
}

// KeyInfo implements Service. Keyring keys are derived per column and
// convergent per column (Column.Searchable), so Convergent is false.
func (k *Keyring) KeyInfo(ctx context.Context, key string) (KeyInfo, error) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.closed {
		return KeyInfo{}, &Error{Op: "keyinfo", Key: key, Addr: k.cfg.Path, Kind: ErrClosed}
	}
	kk, ok := k.keys[key]
	if !ok {
		return KeyInfo{Name: key}, nil
	}
	return KeyInfo{Name: key, Exists: true, LatestVersion: len(kk.Versions), MinDecryptionVersion: 1, Derived: true}, nil
}

// Close implements Service: it drops derived and cached keys.
func (k *Keyring) Close() error {
	k.mu.Lock()
	k.closed = true
	k.keys = nil
	k.mu.Unlock()
	k.derived.clear()
	k.nonceKey.clear()
	k.env.close()
	return nil
}

// keyringKEK wraps envelope data keys with keyring-derived keys.
type keyringKEK struct{ k *Keyring }

func (w keyringKEK) addr() string { return w.k.cfg.Path }

func (w keyringKEK) isWrapped(s string) bool {
	return isVersionedCiphertext(keyringSource, []byte(s))
}

func (w keyringKEK) newDataKey(ctx context.Context, col Column) ([]byte, string, error) {
	plain := make([]byte, dataKeyBytes)
	if _, err := rand.Read(plain); err != nil {
		return nil, "", fmt.Errorf("vaultkms: data key: %w", err)
	}
	wrapped, err := w.k.seal("envelope datakey", col, infoDataKeyKEK, false, [][]byte{plain})
	if err != nil {
		return nil, "", err
	}
	return plain, string(wrapped[0]), nil
}

func (w keyringKEK) unwrapDataKeys(ctx context.Context, col Column, wrapped []string) ([][]byte, error) {
	in := make([][]byte, len(wrapped))
	for i, s := range wrapped {
		in[i] = []byte(s)
	}
	return w.k.open("envelope unwrap", col, infoDataKeyKEK, in)
}

func (w keyringKEK) rewrapDataKeys(ctx context.Context, col Column, wrapped []string) ([]string, error) {
	plains, err := w.unwrapDataKeys(ctx, col, wrapped)
	if err != nil {
		return nil, err
	}
	sealed, err := w.k.seal("envelope rewrap", col, infoDataKeyKEK, false, plains)
	for _, p := range plains {
		clear(p)
	}
	if err != nil {
		return nil, err
	}
	out := make([]string, len(sealed))
	for i, s := range sealed {
		out[i] = string(s)
	}
	return out, nil
}

var _ Service = (*Keyring)(nil)
