package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// tailChunk is how much lastLine reads from the end of a file at a time.
const tailChunk = 64 << 10

// MaxLineSize bounds one line of the log, for the readers (a restarting
// Writer and Verify). Statement text is normalised, so 16 MiB is generous.
const MaxLineSize = 16 << 20

// lastLine returns the last complete line of f without its newline (nil if
// there is none) and end, the offset just past that line's newline: the
// bytes from end to size are an incomplete line.
func lastLine(f *os.File, size int64) (line []byte, end int64, err error) {
	var tail []byte // the bytes [pos, size)
	pos := size
	for {
		if i := bytes.LastIndexByte(tail, '\n'); i >= 0 {
			end = pos + int64(i) + 1
			if j := bytes.LastIndexByte(tail[:i], '\n'); j >= 0 {
				return tail[j+1 : i], end, nil
			}
			if pos == 0 {
				return tail[:i], end, nil
			}
		} else if pos == 0 {
			return nil, 0, nil
		}
		if size-pos > MaxLineSize+tailChunk {
			return nil, 0, fmt.Errorf("last line longer than %d bytes", MaxLineSize)
		}
		n := min(int64(tailChunk), pos)
		buf := make([]byte, int(n)+len(tail))
		if _, err := f.ReadAt(buf[:n], pos-n); err != nil && !errors.Is(err, io.EOF) {
			return nil, 0, err
		}
		copy(buf[n:], tail)
		tail = buf
		pos -= n
	}
}

// head is a position in the chain: the last line's sequence number and
// the hex SHA-256 of its bytes.
type head struct {
	seq  uint64
	hash [hashHexLen]byte
}

func genesisHead() head {
	var h head
	copy(h.hash[:], Genesis)
	return h
}

// headOf returns the chain position after line.
func headOf(line []byte) (head, error) {
	var l struct {
		Seq uint64 `json:"seq"`
	}
	if err := json.Unmarshal(line, &l); err != nil {
		return head{}, fmt.Errorf("last line is not an audit record: %w", err)
	}
	if l.Seq == 0 {
		return head{}, errors.New("last line has no sequence number")
	}
	h := head{seq: l.Seq}
	sum := sha256.Sum256(line)
	hex.Encode(h.hash[:], sum[:])
	return h, nil
}

// resume opens the log at path for appending and finds where its chain
// ends. An incomplete last line (a crash mid-write) is truncated and its
// length returned as torn. An empty or missing log continues the chain of
// its newest rotated predecessor, path.1, if there is one.
func resume(path string) (f *os.File, size int64, h head, torn int64, err error) {
	f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, 0, head{}, 0, fmt.Errorf("audit: open log: %w", err)
	}
	fail := func(err error) (*os.File, int64, head, int64, error) {
		f.Close()
		return nil, 0, head{}, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		return fail(fmt.Errorf("audit: open log: %w", err))
	}
	if !fi.Mode().IsRegular() {
		return fail(fmt.Errorf("audit: log %s is not a regular file", path))
	}
	size = fi.Size()
	line, end, err := lastLine(f, size)
	if err != nil {
		return fail(fmt.Errorf("audit: read the end of %s: %w", path, err))
	}
	if end < size {
		torn = size - end
		if err := f.Truncate(end); err != nil {
			return fail(fmt.Errorf("audit: truncate the torn last line of %s: %w", path, err))
		}
		size = end
	}
	if line != nil {
		h, err = headOf(line)
		if err != nil {
			return fail(fmt.Errorf("audit: %s: %w; move the file aside to start a new log", path, err))
		}
		return f, size, h, torn, nil
	}
	h, err = rotatedHead(path + ".1")
	if err != nil {
		return fail(err)
	}
	return f, size, h, torn, nil
}

// rotatedHead returns the chain position at the end of a rotated file, or
// the genesis position when there is no such file.
func rotatedHead(path string) (head, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return genesisHead(), nil
	}
	if err != nil {
		return head{}, fmt.Errorf("audit: open rotated log: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return head{}, fmt.Errorf("audit: open rotated log: %w", err)
	}
	line, _, err := lastLine(f, fi.Size())
	if err != nil {
		return head{}, fmt.Errorf("audit: read the end of %s: %w", path, err)
	}
	if line == nil {
		return genesisHead(), nil
	}
	h, err := headOf(line)
	if err != nil {
		return head{}, fmt.Errorf("audit: %s: %w", path, err)
	}
	return h, nil
}
