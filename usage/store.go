package usage

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Store keeps usage counts. Add must be additive: adding the same delta
// twice counts it twice, and deltas from many ledgers may be added in any
// order. Implementations are safe for concurrent use.
type Store interface {
	// Add adds deltas to the stored counts: counters are summed, LastSeen
	// and LastRead take the later time. Either all deltas are added or
	// none (and an error is returned).
	Add(ctx context.Context, deltas []Row) error
	// Query returns the stored rows whose hour starts at or after the hour
	// holding since, sorted by key.
	Query(ctx context.Context, since time.Time) ([]Row, error)
	// Close releases the store's connections.
	Close() error
}

// SchemaVersion is the version of the stores' table layout. Opening a
// store written by a newer layout fails.
const SchemaVersion = 1

// ErrNewerSchema is wrapped by Open when the store's layout is newer than
// this pgveil knows.
var ErrNewerSchema = errors.New("usage store schema is newer than this pgveil")

// Open opens (and creates if missing) the store named by spec:
// "sqlite:path/to/usage.db" for a local SQLite file, or a PostgreSQL
// connection URL "postgres://user@host:5432/db?..." (also "postgresql://")
// for a table shared by many proxies in schema pgveil.
func Open(ctx context.Context, spec string) (Store, error) {
	switch {
	case strings.HasPrefix(spec, "sqlite:"):
		path := strings.TrimPrefix(strings.TrimPrefix(spec, "sqlite:"), "//")
		return OpenSQLite(ctx, path)
	case strings.HasPrefix(spec, "postgres://"), strings.HasPrefix(spec, "postgresql://"):
		return OpenPostgres(ctx, spec)
	case spec == "":
		return nil, errors.New("usage: empty store (want sqlite:path or postgres://...)")
	}
	return nil, fmt.Errorf("usage: unknown store %q (want sqlite:path or postgres://...)", redact(spec))
}

// redact keeps only the scheme-like prefix of a store spec for error
// messages, which must not echo a password.
func redact(spec string) string {
	if i := strings.Index(spec, "@"); i >= 0 {
		return "…" + spec[i:]
	}
	return spec
}

// mergeRows sums rows with equal keys, so one upsert statement never
// touches a row twice, and sorts them (a stable lock order for concurrent
// writers).
func mergeRows(rows []Row) []Row {
	out := make([]Row, len(rows))
	copy(out, rows)
	SortRows(out)
	n := 0
	for i := range out {
		if n > 0 && CompareKeys(&out[n-1].Key, &out[i].Key) == 0 {
			out[n-1].Counts.Add(&out[i].Counts)
			continue
		}
		out[n] = out[i]
		n++
	}
	return out[:n]
}

// hourOf returns the start of the UTC hour holding t.
func hourOf(t time.Time) time.Time { return t.UTC().Truncate(time.Hour) }

// micros converts a time to Unix microseconds, 0 for the zero time.
func micros(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

// fromMicros is the inverse of micros.
func fromMicros(us int64) time.Time {
	if us == 0 {
		return time.Time{}
	}
	return time.UnixMicro(us).UTC()
}
