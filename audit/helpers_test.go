package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var testKey = []byte("0123456789abcdef0123456789abcdef-test-key")

// testRecord returns a statement record numbered i, with text that needs
// escaping.
func testRecord(i int) *Record {
	return &Record{
		Time:        time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Millisecond),
		Session:     fmt.Sprintf("s-%d", i%7),
		User:        "analyst",
		Roles:       []string{"analyst", "reporting"},
		Client:      "10.0.0.7:51234",
		Database:    "app",
		Application: "psql \"quoted\"",
		Fingerprint: fmt.Sprintf("fp%08d", i),
		SQL:         "SELECT email, ssn FROM public.customers WHERE id = $1\n\t-- no literals",
		Columns: []Column{
			{Table: "public.customers", Column: "email", Treatment: TreatmentMasked, Clauses: []string{"select"}},
			{Table: "public.customers", Column: "ssn", Treatment: TreatmentRaw, Clauses: []string{"select", "where"}},
		},
		Rows:     int64(i % 100),
		Duration: time.Duration(i) * time.Microsecond,
		Outcome:  OutcomeOK,
	}
}

// newTestWriter starts a Writer and closes it at the end of the test if
// the test did not.
func newTestWriter(t testing.TB, cfg Config) *Writer {
	t.Helper()
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close(context.Background()) })
	return w
}

// writeLog writes n records to a new log at path and closes it.
func writeLog(t testing.TB, path string, key []byte, n int) {
	t.Helper()
	w := newTestWriter(t, Config{Path: path, Key: key, OnFull: OnFullBlock})
	for i := 1; i <= n; i++ {
		w.Write(testRecord(i))
	}
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// readLines returns the lines of a file without their newlines.
func readLines(t testing.TB, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.TrimSuffix(string(data), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func writeLines(t testing.TB, path string, lines []string) {
	t.Helper()
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

func lineHash(line string) string {
	sum := sha256.Sum256([]byte(line))
	return hex.EncodeToString(sum[:])
}

// setPrev replaces the prev value of a line.
func setPrev(t testing.TB, line, prev string) string {
	t.Helper()
	i := strings.Index(line, `,"prev":"`)
	if i < 0 {
		t.Fatalf("no prev in %s", line)
	}
	i += len(`,"prev":"`)
	return line[:i] + prev + line[i+hashHexLen:]
}

// countingObserver counts the writer's events.
type countingObserver struct {
	written, dropped, errors, rotated atomic.Int64
	mu                                sync.Mutex
	kinds                             map[string]int
}

func (o *countingObserver) Written(n int) { o.written.Add(int64(n)) }
func (o *countingObserver) Dropped(n int) { o.dropped.Add(int64(n)) }
func (o *countingObserver) Rotated()      { o.rotated.Add(1) }
func (o *countingObserver) Error(kind string) {
	o.errors.Add(1)
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.kinds == nil {
		o.kinds = map[string]int{}
	}
	o.kinds[kind]++
}

// logBuffer is a goroutine-safe log sink.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// TestEncodeSum compares encodeSum with encoding/hex on sums of every
// byte value in every position.
func TestEncodeSum(t *testing.T) {
	for i := range 256 {
		var sum [sha256.Size]byte
		for j := range sum {
			sum[j] = byte(i + j*37)
		}
		var got [hashHexLen]byte
		encodeSum(&got, sum)
		if want := hex.EncodeToString(sum[:]); string(got[:]) != want {
			t.Fatalf("encodeSum(%x) = %s", sum, got)
		}
	}
}
