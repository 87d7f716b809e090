package audit

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// resident counts the pages of f[off:off+n] that are in the page cache.
func resident(t *testing.T, f *os.File, off, n int64) int {
	t.Helper()
	m, err := unix.Mmap(int(f.Fd()), off, int(n), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	page := int64(os.Getpagesize())
	vec := make([]byte, (n+page-1)/page)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatal(e)
	}
	c := 0
	for _, v := range vec {
		c += int(v & 1)
	}
	return c
}

// diskDir returns a temporary directory on a disk-backed filesystem: the
// test's own, or, where that is tmpfs (whose pages cannot leave the
// cache), one in the package directory.
func diskDir(tb testing.TB) string {
	tb.Helper()
	dir := tb.TempDir()
	var fs unix.Statfs_t
	if unix.Statfs(dir, &fs) == nil && fs.Type == unix.TMPFS_MAGIC {
		d, err := os.MkdirTemp(".", "pagecache-test-")
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { os.RemoveAll(d) })
		dir = d
	}
	return dir
}

// TestCacheRelease: what was written back one step earlier leaves the page
// cache at the next step; what was just written stays until the step
// after.
func TestCacheRelease(t *testing.T) {
	f, err := os.OpenFile(filepath.Join(diskDir(t), "audit.log"), os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, releaseEvery)
	for i := range chunk {
		chunk[i] = byte('a' + i%26)
	}
	var c cacheRelease
	var size int64
	write := func() {
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
		size += int64(len(chunk))
		c.wrote(f, size)
	}
	pages := int(releaseEvery / int64(os.Getpagesize()))

	write() // writeback of [0, 4 MiB) started, nothing dropped yet
	if c.kicked != releaseEvery || c.dropped != 0 {
		t.Fatalf("after one step: kicked %d dropped %d", c.kicked, c.dropped)
	}
	if got := resident(t, f, 0, releaseEvery); got < pages/2 {
		t.Fatalf("only %d of %d pages just written are cached; the step dropped them early", got, pages)
	}
	// Wait for the writeback the step started, so that the next step's
	// DONTNEED meets clean pages and must drop them.
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	write()
	if c.kicked != 2*releaseEvery || c.dropped != releaseEvery {
		t.Fatalf("after two steps: kicked %d dropped %d", c.kicked, c.dropped)
	}
	if got := resident(t, f, 0, releaseEvery); got != 0 {
		t.Errorf("%d of %d written-back pages are still cached", got, pages)
	}
	// A small write does not step.
	if _, err := f.Write(chunk[:100]); err != nil {
		t.Fatal(err)
	}
	c.wrote(f, size+100)
	if c.kicked != 2*releaseEvery {
		t.Errorf("a 100-byte write stepped: kicked %d", c.kicked)
	}
	// The file is intact.
	st, _ := f.Stat()
	if st.Size() != size+100 {
		t.Errorf("size %d, want %d", st.Size(), size+100)
	}
}

// machineBusy returns the CPU time the whole machine has spent running
// since boot, in clock ticks: /proc/stat's cpu line's user, nice, system,
// irq and softirq (proc(5)), as bench/tracking.sh counts it; not idle,
// iowait, steal (the hypervisor's), or guest, which user already holds.
func machineBusy(b *testing.B) int64 {
	f, err := os.Open("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan()
	fields := strings.Fields(sc.Text())
	if len(fields) < 8 || fields[0] != "cpu" {
		b.Fatalf("/proc/stat: unexpected first line %q", sc.Text())
	}
	var busy int64
	for _, i := range []int{1, 2, 3, 6, 7} {
		n, err := strconv.ParseInt(fields[i], 10, 64)
		if err != nil {
			b.Fatalf("/proc/stat: %v", err)
		}
		busy += n
	}
	return busy
}

// BenchmarkLogAppend measures what appending the log costs in CPU, per
// 64 KiB write (the writer's flushSize), three ways: through the page
// cache with the writer's release of written pages (cacheRelease), through
// the page cache without it, and with O_DIRECT from an aligned buffer
// (which would bypass the cache). Besides the wall time per write it
// reports the writing thread's CPU time and the whole machine's busy time
// per write: the kernel's writeback runs in its own threads, so only the
// machine's figure shows all of it (run it on an otherwise idle machine).
// Measured here (bench/README.md), O_DIRECT costs more CPU than the
// buffered write with release, not less, which is why the writer does not
// use it.
func BenchmarkLogAppend(b *testing.B) {
	const chunk = flushSize
	for _, way := range []string{"buffered-release", "buffered", "direct"} {
		b.Run(way, func(b *testing.B) {
			flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
			if way == "direct" {
				flags |= unix.O_DIRECT
			}
			f, err := os.OpenFile(filepath.Join(diskDir(b), "audit.log"), flags, 0o600)
			if errors.Is(err, unix.EINVAL) {
				b.Skip("the filesystem refuses O_DIRECT")
			}
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			// O_DIRECT needs a buffer aligned to the logical block size;
			// 4 KiB covers every common device.
			raw := make([]byte, chunk+4096)
			off := (4096 - int(uintptr(unsafe.Pointer(&raw[0]))&4095)) & 4095
			buf := raw[off : off+chunk]
			for i := range buf {
				buf[i] = byte('a' + i%26)
			}
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			var c cacheRelease
			var size int64
			var ru0, ru1 unix.Rusage
			b.SetBytes(chunk)
			b.ResetTimer()
			busy0 := machineBusy(b)
			_ = unix.Getrusage(unix.RUSAGE_THREAD, &ru0)
			for i := 0; i < b.N; i++ {
				n, err := unix.Pwrite(int(f.Fd()), buf, size)
				if err != nil {
					b.Fatal(err)
				}
				size += int64(n)
				if way == "buffered-release" {
					c.wrote(f, size)
				}
			}
			_ = unix.Getrusage(unix.RUSAGE_THREAD, &ru1)
			busy1 := machineBusy(b)
			b.StopTimer()
			// What is still to be written back would land in the next
			// measurement.
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
			thread := (ru1.Utime.Nano() + ru1.Stime.Nano()) - (ru0.Utime.Nano() + ru0.Stime.Nano())
			b.ReportMetric(float64(thread)/float64(b.N), "thread-cpu-ns/op")
			tick := int64(1e9 / 100) // USER_HZ, which /proc/stat counts in, is 100 on Linux
			b.ReportMetric(float64((busy1-busy0)*tick)/float64(b.N), "machine-cpu-ns/op")
		})
	}
}
