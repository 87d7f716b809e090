package vaultkms

import (
	"bytes"
	"fmt"
	"strconv"
)

// maxKeyNameLen bounds key names; Vault has no documented limit, 128 is
// ample for names like "payments-card".
const maxKeyNameLen = 128

// validKeyName reports whether name is a key name pgveil accepts: 1 to 128
// letters, digits, '-', '_' or '.', not starting with '.'. Names go into
// Vault URL paths, so nothing else is allowed.
func validKeyName(name string) bool {
	if name == "" || len(name) > maxKeyNameLen || name[0] == '.' {
		return false
	}
	for _, c := range []byte(name) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}

func checkKeyName(name string) error {
	if !validKeyName(name) {
		return fmt.Errorf("%w: invalid key name %q (letters, digits, '-', '_', '.')", ErrConfig, name)
	}
	return nil
}

// splitVersioned splits "<source>:v<N>:<base64>", the format of Vault
// transit ("vault") and of the keyring ("local"), into the version and
// the base64 part. It checks the shape cheaply, not the base64 content.
func splitVersioned(source string, v []byte) (version int, b64 []byte, ok bool) {
	if len(v) < len(source)+4 || !bytes.HasPrefix(v, []byte(source)) || v[len(source)] != ':' || v[len(source)+1] != 'v' {
		return 0, nil, false
	}
	rest := v[len(source)+2:]
	i := bytes.IndexByte(rest, ':')
	if i <= 0 || i > 9 {
		return 0, nil, false
	}
	n, err := strconv.Atoi(string(rest[:i]))
	if err != nil || n < 1 {
		return 0, nil, false
	}
	return n, rest[i+1:], len(rest) > i+1
}
