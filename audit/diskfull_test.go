package audit

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// tinyFS mounts a tmpfs of the given size ("256k") for one test. It needs
// root; without it the test is skipped, or fails when PGVEIL_REQUIRE_ALL=1.
func tinyFS(t *testing.T, size string) string {
	t.Helper()
	need := func(format string, args ...any) {
		t.Helper()
		if os.Getenv("PGVEIL_REQUIRE_ALL") == "1" {
			t.Fatalf(format, args...)
		}
		t.Skipf(format, args...)
	}
	if os.Geteuid() != 0 {
		need("mounting a tmpfs to fill the disk needs root")
	}
	mnt := filepath.Join(t.TempDir(), "fs")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size="+size); err != nil {
		need("mount a tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	return mnt
}

// fill writes a file in dir until the file system is full.
func fill(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return p
		}
	}
}

// checkFileEnds checks that a log ends with a complete line and that the
// writer's head is that line: a failed write left no partial line behind.
func checkFileEnds(t *testing.T, w *Writer, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) == 0 || data[len(data)-1] != '\n' {
		t.Fatalf("log does not end with a complete line: %q", data[max(0, len(data)-40):])
	}
	lines := readLines(t, path)
	if seq, hash := w.Head(); hash != lineHash(lines[len(lines)-1]) || seq == 0 {
		t.Fatalf("head %d:%s is not the last line on disk", seq, hash)
	}
}

// TestDiskFullDrop fills the file system under the log: Write must not
// block, the losses must be counted, logged (rate-limited) and, once the
// disk has room again, recorded in a gap marker that Verify shows.
func TestDiskFullDrop(t *testing.T) {
	mnt := tinyFS(t, "256k")
	path := filepath.Join(mnt, "audit.log")
	logs := &logBuffer{}
	obs := &countingObserver{}
	w := newTestWriter(t, Config{Path: path, Key: testKey, QueueSize: 64, RetryInterval: 20 * time.Millisecond,
		Logger: logs.logger(), Observer: obs})
	ctx := context.Background()
	total := 0
	write := func(n int) {
		for range n {
			total++
			start := time.Now()
			w.Write(testRecord(total))
			if d := time.Since(start); d > time.Second {
				t.Fatalf("Write blocked for %v", d)
			}
		}
	}
	write(20)
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	filler := fill(t, mnt)
	write(2000)
	w.Flush(ctx) // The result depends on what still fits in the log's last page.
	st := w.Stats()
	if st.Errors == 0 || st.Dropped == 0 {
		t.Fatalf("stats with the disk full: %+v", st)
	}
	obs.mu.Lock()
	enospc := obs.kinds["enospc"]
	obs.mu.Unlock()
	if enospc == 0 || obs.dropped.Load() != int64(st.Dropped) {
		t.Fatalf("observer: kinds %v, dropped %d; stats %+v", obs.kinds, obs.dropped.Load(), st)
	}
	out := logs.String()
	if n := strings.Count(out, "audit log write failed"); n == 0 || n > 2 || !strings.Contains(out, "kind=enospc") {
		t.Fatalf("want one or two (rate-limited) write-failure lines with kind=enospc, got:\n%s", out)
	}
	checkFileEnds(t, w, path)

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	write(100)
	if err := w.Flush(ctx); err != nil {
		t.Fatalf("Flush after the disk has room again: %v", err)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := Verify(ctx, []string{path}, VerifyOptions{Key: testKey})
	if err != nil {
		t.Fatal(err)
	}
	st = w.Stats()
	if res.Statements+res.Lost != int64(total) || res.Lost != int64(st.Dropped) || res.Statements != int64(st.Written) {
		t.Fatalf("log: %d statements + %d lost, want %d; stats %+v", res.Statements, res.Lost, total, st)
	}
	ioGap := false
	for _, m := range res.Markers {
		if m.Kind == KindGap && strings.Contains(m.Reason, "write error") {
			ioGap = true
		}
	}
	if !ioGap {
		t.Fatalf("no gap marker for the write errors: %+v", res.Markers)
	}
}

// TestDiskFullBlock checks the fail-closed policy: with the disk full,
// Write blocks once the queue is full; when the disk has room again,
// every record is written and nothing is lost.
func TestDiskFullBlock(t *testing.T) {
	mnt := tinyFS(t, "256k")
	path := filepath.Join(mnt, "audit.log")
	w := newTestWriter(t, Config{Path: path, OnFull: OnFullBlock, QueueSize: 4, RetryInterval: 10 * time.Millisecond})
	ctx := context.Background()
	for i := 1; i <= 5; i++ {
		w.Write(testRecord(i))
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	filler := fill(t, mnt)
	const n = 200
	var done atomic.Int64
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for i := range n {
			w.Write(testRecord(6 + i))
			done.Add(1)
		}
	}()
	time.Sleep(300 * time.Millisecond)
	select {
	case <-finished:
		t.Fatal("Write did not block with the disk full")
	default:
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	select {
	case <-finished:
	case <-time.After(30 * time.Second):
		t.Fatalf("Write still blocked after the disk has room (%d of %d done)", done.Load(), n)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := Verify(ctx, []string{path}, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st := w.Stats(); res.Statements != n+5 || len(res.Markers) != 0 || st.Dropped != 0 || st.Errors == 0 {
		t.Fatalf("result %+v, stats %+v", res, st)
	}
}

// TestDiskFullCloseTimeout checks that Close gives up when the disk stays
// full under OnFullBlock: it returns an error, counts what was lost, and
// leaves a log that verifies.
func TestDiskFullCloseTimeout(t *testing.T) {
	mnt := tinyFS(t, "256k")
	path := filepath.Join(mnt, "audit.log")
	w := newTestWriter(t, Config{Path: path, OnFull: OnFullBlock, QueueSize: 4, RetryInterval: 10 * time.Millisecond})
	for i := 1; i <= 5; i++ {
		w.Write(testRecord(i))
	}
	if err := w.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	fill(t, mnt)
	const n = 100
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for i := range n {
			w.Write(testRecord(6 + i))
		}
	}()
	time.Sleep(100 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := w.Close(ctx)
	if err == nil || !strings.Contains(err.Error(), "close gave up") {
		t.Fatalf("Close with the disk full: %v", err)
	}
	select {
	case <-finished:
	case <-time.After(10 * time.Second):
		t.Fatal("Write still blocked after Close gave up")
	}
	res, verr := Verify(context.Background(), []string{path}, VerifyOptions{})
	if verr != nil {
		t.Fatal(verr)
	}
	if st := w.Stats(); st.Dropped == 0 || res.Statements+int64(st.Dropped) != n+5 {
		t.Fatalf("result %+v, stats %+v", res, st)
	}
}
