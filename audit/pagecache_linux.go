package audit

import (
	"os"

	"golang.org/x/sys/unix"
)

// releaseEvery is how many bytes the writer appends between two steps of
// page-cache release.
const releaseEvery = 4 << 20

// cacheRelease keeps the audit file from filling the page cache. Nobody
// reads the log back while it is written, yet every line written stays
// cached until memory runs short, evicting pages that PostgreSQL or the
// application next to the proxy do read; and taking a fresh page for every
// 4 KiB written is the expensive part of a write (on a VM whose memory is
// backed lazily, ten times the copy itself). So every releaseEvery bytes
// the writer starts the writeback of what it wrote since the last step
// (sync_file_range, which does not wait for it) and drops from the cache
// what it started writing back one step earlier (fadvise DONTNEED, which
// leaves pages alone that are still dirty or under writeback). The freed
// pages are the ones the next writes reuse.
type cacheRelease struct {
	kicked  int64 // writeback started up to here
	dropped int64 // released up to here
}

// wrote is called after the file has grown to size bytes.
func (c *cacheRelease) wrote(f *os.File, size int64) {
	if size-c.kicked < releaseEvery {
		return
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		if c.kicked > c.dropped {
			// Advice only: an error changes nothing that matters.
			_ = unix.Fadvise(int(fd), c.dropped, c.kicked-c.dropped, unix.FADV_DONTNEED)
			c.dropped = c.kicked
		}
		_ = unix.SyncFileRange(int(fd), c.kicked, size-c.kicked, unix.SYNC_FILE_RANGE_WRITE)
		c.kicked = size
	})
}

// reset starts over for a file that already holds size bytes, which are
// left to the kernel.
func (c *cacheRelease) reset(size int64) { c.kicked, c.dropped = size, size }

// releaseAll drops a synced file's pages from the cache.
func releaseAll(f *os.File) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) { _ = unix.Fadvise(int(fd), 0, 0, unix.FADV_DONTNEED) })
}
