//go:build !linux

package audit

import "os"

// cacheRelease is a no-op where sync_file_range and fadvise do not exist;
// see pagecache_linux.go.
type cacheRelease struct{}

func (c *cacheRelease) wrote(*os.File, int64) {}
func (c *cacheRelease) reset(int64)           {}
func releaseAll(*os.File)                     {}
