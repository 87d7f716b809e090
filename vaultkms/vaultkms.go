// Package vaultkms owns pgveil's key services: it encrypts, decrypts and
// rewraps the values of encrypted columns. Three implementations share one
// Service interface and one set of semantics:
//
//   - Vault transit (mode "transit" on a *Vault): every value is encrypted by
//     HashiCorp Vault's transit engine with a derived key (the column identity
//     is the derivation context); the ciphertext is Vault's own "vault:vN:...".
//   - Envelope (mode "envelope", on a *Vault or a *Keyring): data keys come
//     from the key service, wrapped under the column's key; values are sealed
//     locally with AES-256-GCM and the column identity as associated data;
//     unwrapped data keys are cached, so decrypting many values costs a
//     handful of key-service calls.
//   - Local keyring (mode "transit" on a *Keyring): master keys with versions
//     in a 0600 JSON file, with the same derivation, version-visible format
//     and convergent option as Vault transit ("local:vN:...").
//
// Every batch API preserves order; NULLs are the caller's business and are
// never passed in. Errors are typed with sentinels (ErrUnavailable,
// ErrDenied, ...) and never contain plaintexts, ciphertexts or keys.
// The package does not log; it reports each operation to Config.Observer.
// The formats are described in docs/encryption.md.
package vaultkms

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Mode is how a column's values are encrypted.
type Mode string

const (
	// ModeTransit encrypts every value with the key service itself (Vault
	// transit, or the keyring's derived keys).
	ModeTransit Mode = "transit"
	// ModeEnvelope seals values locally with data keys wrapped by the key
	// service.
	ModeEnvelope Mode = "envelope"
)

// ParseMode returns the Mode named by s; "" is ModeTransit, the policy
// file's default.
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case "", ModeTransit:
		return ModeTransit, nil
	case ModeEnvelope:
		return ModeEnvelope, nil
	}
	return "", fmt.Errorf("%w: unknown encryption mode %q (want transit or envelope)", ErrConfig, s)
}

// Column identifies an encrypted column: its policy settings and its
// identity "schema.table.column". The identity is the key-derivation context
// (transit) and the associated data (envelope), so a value copied into
// another column does not decrypt there.
type Column struct {
	// ID is "schema.table.column"; it must not be empty.
	ID string
	// Key is the name of the key (Vault transit key or keyring key).
	Key string
	// Mode is transit or envelope; "" means transit.
	Mode Mode
	// Searchable asks for deterministic (convergent) encryption, so equal
	// plaintexts give equal ciphertexts and "col = $1" lookups work.
	Searchable bool
}

// Validate reports whether the column can be served: a non-empty ID and
// key, a known mode, and not searchable in envelope mode (see
// docs/encryption.md: searchable columns use mode transit).
func (c Column) Validate() error {
	if c.ID == "" {
		return fmt.Errorf("%w: encrypted column has no identity", ErrConfig)
	}
	if c.Key == "" {
		return fmt.Errorf("%w: encrypted column %s has no key", ErrConfig, c.ID)
	}
	if !validKeyName(c.Key) {
		return fmt.Errorf("%w: encrypted column %s: invalid key name %q (letters, digits, '-', '_', '.')", ErrConfig, c.ID, c.Key)
	}
	m, err := ParseMode(string(c.Mode))
	if err != nil {
		return fmt.Errorf("column %s: %w", c.ID, err)
	}
	if m == ModeEnvelope && c.Searchable {
		return fmt.Errorf("%w: column %s: searchable encryption needs mode transit; envelope mode is always randomised", ErrConfig, c.ID)
	}
	return nil
}

func (c Column) mode() Mode {
	if c.Mode == "" {
		return ModeTransit
	}
	return c.Mode
}

// KeyInfo describes a key, for `pgveil check` and the tests.
type KeyInfo struct {
	// Name is the key's name.
	Name string
	// Exists is false when the key service has no such key; the other
	// fields are then zero.
	Exists bool
	// LatestVersion is the version new values are encrypted with.
	LatestVersion int
	// MinDecryptionVersion is the oldest version that still decrypts.
	MinDecryptionVersion int
	// Derived reports per-column key derivation (always true for keys
	// pgveil creates and for the keyring).
	Derived bool
	// Convergent reports deterministic encryption. A Vault key is
	// convergent or not for life; the keyring decides per column.
	Convergent bool
}

// Service is a key service. All methods are safe for concurrent use.
type Service interface {
	// Encrypt encrypts plaintexts for col; the result has the same order
	// and length. Ciphertexts are ASCII text.
	Encrypt(ctx context.Context, col Column, plaintexts [][]byte) ([][]byte, error)
	// Decrypt decrypts ciphertexts of col. A ciphertext of another column,
	// a tampered one, or one that is not a ciphertext is an error wrapping
	// ErrInvalidCiphertext, never garbage.
	Decrypt(ctx context.Context, col Column, ciphertexts [][]byte) ([][]byte, error)
	// Rewrap re-encrypts ciphertexts of col under the key's newest version
	// without exposing the plaintexts to the caller.
	Rewrap(ctx context.Context, col Column, ciphertexts [][]byte) ([][]byte, error)
	// IsCiphertext is a cheap format check: whether v looks like a
	// ciphertext of col's mode (it does not prove that v decrypts).
	IsCiphertext(col Column, v []byte) bool
	// KeyInfo describes the key named key.
	KeyInfo(ctx context.Context, key string) (KeyInfo, error)
	// Close stops background work (token renewal) and drops cached keys.
	Close() error
}

// Sentinel errors; test with errors.Is.
var (
	// ErrUnavailable means the key service could not be reached or did not
	// answer in time (transport errors, timeouts, 5xx, 429) after retries.
	ErrUnavailable = errors.New("key service unavailable")
	// ErrDenied means the key service refused the credentials or the
	// operation (401, 403).
	ErrDenied = errors.New("key service denied the request")
	// ErrKeyNotFound means the named key does not exist.
	ErrKeyNotFound = errors.New("key not found")
	// ErrInvalidCiphertext means a value is not a ciphertext of this
	// column, or was tampered with, or its key version is retired.
	ErrInvalidCiphertext = errors.New("invalid ciphertext")
	// ErrConfig means a configuration or policy mistake (a searchable
	// envelope column, a key whose convergence does not match the column).
	ErrConfig = errors.New("key service configuration error")
	// ErrClosed means the service was closed.
	ErrClosed = errors.New("key service closed")
)

// Error is the error type of every failed operation. It names the
// operation, the key and the key service's address, never a value.
type Error struct {
	// Op is the operation, e.g. "decrypt" or "vault transit/decrypt".
	Op string
	// Key is the key name, if any.
	Key string
	// Addr is the Vault address or keyring path.
	Addr string
	// Kind is one of the sentinels above.
	Kind error
	// Err is the underlying cause (may be nil).
	Err error
}

func (e *Error) Error() string {
	s := "vaultkms: " + e.Op
	if e.Key != "" {
		s += fmt.Sprintf(" key %q", e.Key)
	}
	if e.Addr != "" {
		s += " at " + e.Addr
	}
	s += ": " + e.Kind.Error()
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the sentinel and the cause.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// ErrorKind is the stable label of err for metrics and logs: "ok",
// "unavailable", "denied", "not_found", "invalid", "config", "canceled",
// "closed" or "other".
func ErrorKind(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrUnavailable):
		return "unavailable"
	case errors.Is(err, ErrDenied):
		return "denied"
	case errors.Is(err, ErrKeyNotFound):
		return "not_found"
	case errors.Is(err, ErrInvalidCiphertext):
		return "invalid"
	case errors.Is(err, ErrConfig):
		return "config"
	case errors.Is(err, ErrClosed):
		return "closed"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "canceled"
	}
	return "other"
}

// Event is one observed operation.
type Event struct {
	// Op names the operation. Service calls are "encrypt", "decrypt",
	// "rewrap" and "keyinfo"; requests to Vault are "vault <path kind>",
	// e.g. "vault transit/decrypt", "vault transit/datakey",
	// "vault auth/login", "vault token/renew".
	Op string
	// Remote is true for a request to Vault (one HTTP round trip,
	// retries included).
	Remote bool
	// Key is the key name, if any.
	Key string
	// Values is how many values the operation handled.
	Values int
	// Duration is the wall time of the operation.
	Duration time.Duration
	// Kind is ErrorKind of the outcome.
	Kind string
}

// Observer receives an Event per operation; main feeds it to Prometheus.
// It must be safe for concurrent use and fast.
type Observer func(Event)

func (o Observer) observe(op string, remote bool, key string, n int, start time.Time, err error) {
	if o != nil {
		o(Event{Op: op, Remote: remote, Key: key, Values: n, Duration: time.Since(start), Kind: ErrorKind(err)})
	}
}
