package audit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
)

// MinKeySize is the shortest HMAC key LoadKey accepts: 32 bytes, the
// output size of SHA-256 (RFC 2104 section 3 recommends no less).
const MinKeySize = 32

// maxKeySize bounds what LoadKey reads.
const maxKeySize = 4096

// ErrKeyFileMode is returned by LoadKey for a key file that its group or
// other users may access.
var ErrKeyFileMode = errors.New("audit key file must not be accessible by group or others (chmod 600)")

// LoadKey reads an HMAC key from a file. The file must be a regular file
// with no permission bits for group or others (0600 or 0400); the key is
// its content without trailing white space, at least MinKeySize bytes
// (for example `head -c 32 /dev/urandom | base64 > audit.key`).
func LoadKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("audit key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("audit key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("audit key file %s: not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("audit key file %s has mode %04o: %w", path, perm, ErrKeyFileMode)
	}
	key, err := io.ReadAll(io.LimitReader(f, maxKeySize+1))
	if err != nil {
		return nil, fmt.Errorf("audit key file %s: %w", path, err)
	}
	if len(key) > maxKeySize {
		return nil, fmt.Errorf("audit key file %s: longer than %d bytes", path, maxKeySize)
	}
	key = bytes.TrimRight(key, " \t\r\n")
	if len(key) < MinKeySize {
		return nil, fmt.Errorf("audit key file %s: key is %d bytes, want at least %d", path, len(key), MinKeySize)
	}
	return key, nil
}
