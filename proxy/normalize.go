package proxy

import "github.com/pgveil/pgveil/rewrite"

// normalizeSQL is rewrite.NormalizeSQL: the statement text with literals
// replaced by "?", the key of the usage-facts cache and the audit
// fingerprint.
func normalizeSQL(dst []byte, sql string, standardStrings bool) ([]byte, bool) {
	return rewrite.NormalizeSQL(dst, sql, standardStrings)
}
