package audit

import (
	"os"
	"path/filepath"
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

// TestCacheRelease: what was written back one step earlier leaves the page
// cache at the next step; what was just written stays until the step
// after.
func TestCacheRelease(t *testing.T) {
	// tmpfs pages cannot leave the cache: use the package directory then.
	dir := t.TempDir()
	var fs unix.Statfs_t
	if unix.Statfs(dir, &fs) == nil && fs.Type == unix.TMPFS_MAGIC {
		d, err := os.MkdirTemp(".", "pagecache-test-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		dir = d
	}
	f, err := os.OpenFile(filepath.Join(dir, "audit.log"), os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
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
