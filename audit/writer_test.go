package audit

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestEncodeDecodes checks that the hand-written encoder produces JSON
// that encoding/json decodes back to the record, for text that needs
// escaping.
func TestEncodeDecodes(t *testing.T) {
	tricky := []struct {
		name, in, want string
	}{
		{"plain", "SELECT 1", "SELECT 1"},
		{"quotes and backslash", `say "hi" \ there`, `say "hi" \ there`},
		{"control characters", "a\nb\rc\td\x00e\x1f\x7f", "a\nb\rc\td\x00e\x1f\x7f"},
		{"unicode", "naïve ☃ 𝄞", "naïve ☃ 𝄞"},
		{"line separators", "a\u2028b\u2029c", "a\u2028b\u2029c"},
		{"invalid utf-8", "a\xffb\xc3", "a\ufffdb\ufffd"},
		{"html", "<script>&</script>", "<script>&</script>"},
		{"empty", "", ""},
	}
	for _, tc := range tricky {
		t.Run(tc.name, func(t *testing.T) {
			for _, key := range [][]byte{nil, testKey} {
				c := newChain(key)
				r := testRecord(3)
				r.SQL, r.User, r.Roles = tc.in, tc.in, []string{tc.in}
				r.Columns[0].Clauses = []string{tc.in}
				r.Outcome, r.SQLState, r.Rule = OutcomeRefused, "42501", tc.in
				line := c.appendStatement(nil, r)
				if line[len(line)-1] != '\n' || strings.Count(string(line), "\n") != 1 {
					t.Fatalf("want one newline at the end: %q", line)
				}
				var l Line
				if err := json.Unmarshal(line, &l); err != nil {
					t.Fatalf("invalid JSON %q: %v", line, err)
				}
				if l.SQL != tc.want || l.User != tc.want || l.Roles[0] != tc.want || l.Rule != tc.want || l.Columns[0].Clauses[0] != tc.want {
					t.Fatalf("decoded %q, want %q", l.SQL, tc.want)
				}
				if l.Seq != 1 || l.Prev != Genesis || l.Kind != KindStatement || !l.Time.Equal(r.Time) ||
					l.DurationUS != 3 || l.Rows != 3 || l.SQLState != "42501" || l.Outcome != OutcomeRefused {
					t.Fatalf("decoded %+v", l)
				}
				if (l.HMAC != "") != (key != nil) {
					t.Fatalf("hmac %q with key %v", l.HMAC, key != nil)
				}
				if !reflect.DeepEqual(l.Columns[1], r.Columns[1]) {
					t.Fatalf("column %+v, want %+v", l.Columns[1], r.Columns[1])
				}
			}
		})
	}
}

// TestEncodeFormat pins the exact serialisation: field order, time format,
// nil lists as [], and the chain and hmac members, which docs/audit.md
// describes.
func TestEncodeFormat(t *testing.T) {
	c := newChain(nil)
	r := &Record{Time: time.Date(2026, 1, 2, 3, 4, 5, 6789000, time.FixedZone("x", 3600)), Outcome: OutcomeOK}
	got := string(c.appendStatement(nil, r))
	want := `{"kind":"statement","session":"","user":"","roles":[],` +
		`"client":"","database":"","application":"","fingerprint":"","sql":"","columns":[],` +
		`"seq":1,"time":"2026-01-02T02:04:05.006789Z","rows":0,"duration_us":0,` +
		`"outcome":"ok","prev":"` + Genesis + `"}` + "\n"
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	gap := string(c.appendGap(nil, r.Time, 7, "queue full"))
	wantGap := `{"seq":2,"time":"2026-01-02T02:04:05.006789Z","kind":"gap","lost":7,"reason":"queue full","prev":"` +
		lineHash(strings.TrimSuffix(want, "\n")) + `"}` + "\n"
	if gap != wantGap {
		t.Fatalf("got  %s\nwant %s", gap, wantGap)
	}
	k := newChain(testKey)
	keyed := string(k.appendTorn(nil, r.Time, 12))
	if !regexp.MustCompile(`^\{"seq":1,"time":"[^"]+","kind":"torn","torn_bytes":12,"prev":"0{64}","hmac":"[0-9a-f]{64}"\}\n$`).MatchString(keyed) {
		t.Fatalf("keyed torn marker %s", keyed)
	}
	if ok, present := newChain(testKey).verify([]byte(strings.TrimSuffix(keyed, "\n"))); !ok || !present {
		t.Fatal("hmac of the torn marker does not verify")
	}
}

// TestPrefixStates checks the hashes that resume from a saved prefix
// state against SHA-256 and crypto/hmac over whole lines: sessions and
// shapes of many lengths (prefixes ending on and around block
// boundaries), interleaved, with and without a key, and past maxMids.
func TestPrefixStates(t *testing.T) {
	for _, key := range [][]byte{nil, testKey, bytes.Repeat([]byte("k"), 100)} {
		c := newChain(key)
		var sessions []*Session
		var shapes []*Shape
		for i := range 40 {
			sessions = append(sessions, NewSession(strings.Repeat("s", i), "u", []string{"r"}, "c", "d", strings.Repeat("a", 3*i)))
			shapes = append(shapes, NewShape("f", strings.Repeat("x", 5*i), []Column{{Table: "t", Column: "c", Treatment: TreatmentMasked}}))
		}
		mac := hmac.New(sha256.New, key)
		prev := Genesis
		var buf []byte
		for n := range 3000 {
			if n == 2000 {
				for len(c.mids) < maxMids { // fill the cache so that it is dropped
					c.mids[midKey{&Session{}, &Shape{}}] = &midstate{}
				}
			}
			st := Statement{Time: time.Unix(int64(n), 0), Session: sessions[n%len(sessions)], Shape: shapes[(n*7+n/40)%len(shapes)],
				Rows: int64(n), Outcome: OutcomeOK}
			buf = c.appendStmt(buf[:0], &st)
			line := bytes.TrimSuffix(buf, []byte("\n"))
			var l Line
			if err := json.Unmarshal(line, &l); err != nil {
				t.Fatalf("line %d: %v: %s", n, err, line)
			}
			if l.Prev != prev || l.Seq != uint64(n+1) {
				t.Fatalf("line %d: prev %s seq %d, want %s %d", n, l.Prev, l.Seq, prev, n+1)
			}
			prev = lineHash(string(line))
			if key != nil {
				i := bytes.LastIndex(line, []byte(hmacField))
				mac.Reset()
				mac.Write(line[:i])
				mac.Write([]byte("}"))
				if want := hex.EncodeToString(mac.Sum(nil)); l.HMAC != want {
					t.Fatalf("line %d: hmac %s, want %s", n, l.HMAC, want)
				}
			}
		}
		if string(c.hash[:]) != prev {
			t.Fatalf("chain head %s, want %s", c.hash, prev)
		}
		if len(c.mids) == 0 || len(c.mids) > maxMids {
			t.Fatalf("%d prefix states", len(c.mids))
		}
	}
}

// TestEncodeAllocs proves the writer goroutine's per-record work (encode,
// hash, HMAC) allocates nothing.
func TestEncodeAllocs(t *testing.T) {
	for _, key := range [][]byte{nil, testKey} {
		c := newChain(key)
		st := statementOf(testRecord(1))
		buf := make([]byte, 0, 8192)
		allocs := testing.AllocsPerRun(1000, func() {
			buf = c.appendStmt(buf[:0], &st)
		})
		if allocs != 0 {
			t.Errorf("key %v: %v allocations per record, want 0", key != nil, allocs)
		}
	}
}

// TestRoundTrip writes 10,000 records from several goroutines and checks
// that every one is in the log once, in a dense, verifiable chain.
func TestRoundTrip(t *testing.T) {
	const goroutines, perG = 8, 1250
	for _, tc := range []struct {
		name   string
		key    []byte
		onFull OnFull
		queue  int
	}{
		{"block", nil, OnFullBlock, 0},
		{"block with key", testKey, OnFullBlock, 64},
		{"drop with a small queue", nil, OnFullDrop, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			obs := &countingObserver{}
			w := newTestWriter(t, Config{Path: path, Key: tc.key, OnFull: tc.onFull, QueueSize: tc.queue, Observer: obs})
			var wg sync.WaitGroup
			for g := range goroutines {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range perG {
						r := testRecord(g*perG + i)
						r.Fingerprint = fmt.Sprintf("g%d-%d", g, i)
						w.Write(r)
					}
				}()
			}
			wg.Wait()
			if err := w.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			res, err := Verify(context.Background(), []string{path}, VerifyOptions{Key: tc.key})
			if err != nil {
				t.Fatal(err)
			}
			st := w.Stats()
			total := int64(goroutines * perG)
			if res.Statements+res.Lost != total {
				t.Fatalf("%d statements + %d lost, want %d", res.Statements, res.Lost, total)
			}
			if tc.onFull == OnFullBlock && res.Statements != total {
				t.Fatalf("block policy lost records: %d of %d written", res.Statements, total)
			}
			if uint64(res.Lost) != st.Dropped || uint64(res.Statements) != st.Written ||
				obs.written.Load() != res.Statements || obs.dropped.Load() != res.Lost {
				t.Fatalf("stats %+v, observer written %d dropped %d; log has %d statements, %d lost",
					st, obs.written.Load(), obs.dropped.Load(), res.Statements, res.Lost)
			}
			if !res.FromGenesis || res.FirstSeq != 1 || res.LastSeq != uint64(res.Records) {
				t.Fatalf("sequence not dense: %+v", res)
			}
			if res.HMACChecked != (tc.key != nil) {
				t.Fatalf("HMACChecked %v", res.HMACChecked)
			}
			seq, hash := w.Head()
			if seq != res.Head.Seq || hash != res.Head.Hash {
				t.Fatalf("Head() = %d:%s, verify says %s", seq, hash, res.Head)
			}
			seen := map[string]int{}
			for _, line := range readLines(t, path) {
				var l Line
				if err := json.Unmarshal([]byte(line), &l); err != nil {
					t.Fatal(err)
				}
				if l.Kind == KindStatement {
					seen[l.Fingerprint]++
				}
			}
			for fp, n := range seen {
				if n != 1 {
					t.Fatalf("record %s written %d times", fp, n)
				}
			}
			if int64(len(seen)) != res.Statements {
				t.Fatalf("%d distinct records, %d statements", len(seen), res.Statements)
			}
		})
	}
}

// TestRotation checks that size-based rotation keeps the files under
// MaxSize, numbers them, deletes beyond Keep, and that the chain runs on
// across files.
func TestRotation(t *testing.T) {
	const maxSize, n = 4096, 400
	for _, tc := range []struct {
		name        string
		keep        int
		wantFiles   int // 0: more than 3
		fromGenesis bool
	}{
		{"keep all", 1000, 0, true},
		{"keep 2", 2, 3, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			obs := &countingObserver{}
			w := newTestWriter(t, Config{Path: path, Key: testKey, MaxSize: maxSize, Keep: tc.keep, OnFull: OnFullBlock, Observer: obs})
			for i := 1; i <= n; i++ {
				w.Write(testRecord(i))
				if i%50 == 0 {
					if err := w.Flush(context.Background()); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := w.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			files, err := Files(path)
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantFiles != 0 && len(files) != tc.wantFiles || tc.wantFiles == 0 && len(files) <= 3 {
				t.Fatalf("%d files: %v", len(files), files)
			}
			if st := w.Stats(); st.Rotations == 0 || int64(st.Rotations) != obs.rotated.Load() {
				t.Fatalf("rotations: stats %d, observer %d", st.Rotations, obs.rotated.Load())
			}
			for _, f := range files {
				fi, err := os.Stat(f)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Size() > maxSize {
					t.Fatalf("%s is %d bytes, over MaxSize %d", f, fi.Size(), maxSize)
				}
			}
			res, err := Verify(context.Background(), files, VerifyOptions{Key: testKey})
			if err != nil {
				t.Fatal(err)
			}
			if res.LastSeq != n || res.FromGenesis != tc.fromGenesis || len(res.Files) != len(files) {
				t.Fatalf("result %+v", res)
			}
			if tc.fromGenesis && res.Statements != n {
				t.Fatalf("%d statements, want %d", res.Statements, n)
			}
			// Each rotated file's first line chains to the previous
			// file's last line.
			for i := 1; i < len(files); i++ {
				before, after := readLines(t, files[i-1]), readLines(t, files[i])
				var l Line
				if err := json.Unmarshal([]byte(after[0]), &l); err != nil {
					t.Fatal(err)
				}
				if l.Prev != lineHash(before[len(before)-1]) {
					t.Fatalf("%s does not chain to %s", files[i], files[i-1])
				}
			}
		})
	}
}

// TestRestart checks that a new Writer on an existing log continues its
// chain and sequence, also when the current file is empty after a
// rotation.
func TestRestart(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	writeLog(t, path, testKey, 100)
	w := newTestWriter(t, Config{Path: path, Key: testKey})
	if seq, _ := w.Head(); seq != 100 {
		t.Fatalf("restarted writer's head is %d, want 100", seq)
	}
	for i := 101; i <= 150; i++ {
		w.Write(testRecord(i))
	}
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	// A rotation that crashed before the new file got a line: the log
	// is now only audit.log.1.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	w = newTestWriter(t, Config{Path: path, Key: testKey})
	for i := 151; i <= 200; i++ {
		w.Write(testRecord(i))
	}
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	files, err := Files(path)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Verify(context.Background(), files, VerifyOptions{Key: testKey})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 || res.Statements != 200 || res.LastSeq != 200 || !res.FromGenesis || len(res.Markers) != 0 {
		t.Fatalf("files %v, result %+v", files, res)
	}
}

// TestTornLastLine simulates a crash mid-write: Verify ignores (and
// reports) the incomplete line; a restarted Writer truncates it and
// writes a torn marker; Verify then passes and shows the marker.
func TestTornLastLine(t *testing.T) {
	for _, tc := range []struct {
		name   string
		before int // complete records before the torn line
	}{
		{"after 50 records", 50},
		{"only a torn line", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			if tc.before > 0 {
				writeLog(t, path, testKey, tc.before)
			}
			torn := `{"seq":51,"time":"2026-11-30T12:00:00.0`
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString(torn)
			f.Close()

			res, err := Verify(context.Background(), []string{path}, VerifyOptions{Key: testKey})
			if err != nil {
				t.Fatal(err)
			}
			if res.IncompleteTail != len(torn) || res.Statements != int64(tc.before) {
				t.Fatalf("before restart: %+v", res)
			}

			logs := &logBuffer{}
			w := newTestWriter(t, Config{Path: path, Key: testKey, Logger: logs.logger()})
			for i := 1; i <= 10; i++ {
				w.Write(testRecord(tc.before + i))
			}
			if err := w.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(logs.String(), "torn last line") {
				t.Fatalf("no log line about the torn line: %s", logs.String())
			}
			res, err = Verify(context.Background(), []string{path}, VerifyOptions{Key: testKey})
			if err != nil {
				t.Fatal(err)
			}
			want := Marker{File: path, Line: tc.before + 1, Seq: uint64(tc.before + 1), Kind: KindTorn, TornBytes: int64(len(torn))}
			if len(res.Markers) != 1 {
				t.Fatalf("markers %+v", res.Markers)
			}
			got := res.Markers[0]
			got.Time = time.Time{}
			if got != want || res.IncompleteTail != 0 || res.Statements != int64(tc.before+10) || !res.FromGenesis {
				t.Fatalf("marker %+v, want %+v; result %+v", got, want, res)
			}
		})
	}
}

// TestNewRejects checks Config validation, the key file mode rule, and a
// log whose last line is not a record.
func TestNewRejects(t *testing.T) {
	dir := t.TempDir()
	key := func(name string, mode os.FileMode, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	goodKey := strings.Repeat("k", 32) + "\n"
	garbage := filepath.Join(dir, "garbage.log")
	if err := os.WriteFile(garbage, []byte("not json\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no path", Config{}, "missing Path"},
		{"key and key file", Config{Path: filepath.Join(dir, "a.log"), Key: testKey, KeyFile: "x"}, "exclusive"},
		{"negative size", Config{Path: filepath.Join(dir, "a.log"), MaxSize: -1}, "negative"},
		{"bad policy", Config{Path: filepath.Join(dir, "a.log"), OnFull: 7}, "unknown OnFull"},
		{"short key", Config{Path: filepath.Join(dir, "a.log"), Key: []byte("short")}, "at least 32"},
		{"key file readable by group", Config{Path: filepath.Join(dir, "a.log"), KeyFile: key("k1", 0o640, goodKey)}, "mode 0640"},
		{"key file readable by all", Config{Path: filepath.Join(dir, "a.log"), KeyFile: key("k2", 0o644, goodKey)}, "chmod 600"},
		{"key file too short", Config{Path: filepath.Join(dir, "a.log"), KeyFile: key("k3", 0o600, "short\n")}, "at least 32"},
		{"key file missing", Config{Path: filepath.Join(dir, "a.log"), KeyFile: filepath.Join(dir, "nope")}, "no such file"},
		{"last line not a record", Config{Path: garbage}, "not an audit record"},
		{"directory missing", Config{Path: filepath.Join(dir, "no", "a.log")}, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := New(tc.cfg)
			if err == nil {
				w.Close(context.Background())
				t.Fatal("New accepted the config")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want it to mention %q", err, tc.want)
			}
		})
	}
	for _, mode := range []os.FileMode{0o600, 0o400} {
		k, err := LoadKey(key(fmt.Sprintf("ok%o", mode), mode, goodKey))
		if err != nil || string(k) != strings.TrimSpace(goodKey) {
			t.Fatalf("mode %o: key %q, %v", mode, k, err)
		}
	}
	if _, err := LoadKey(key("k4", 0o604, goodKey)); !errors.Is(err, ErrKeyFileMode) {
		t.Fatalf("mode 0604: %v, want ErrKeyFileMode", err)
	}
}

// TestCloseAndFlush checks Flush, Head after it, writes after Close, and
// a second Close.
func TestCloseAndFlush(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	w := newTestWriter(t, Config{Path: path, FlushInterval: time.Hour})
	if seq, hash := w.Head(); seq != 0 || hash != Genesis {
		t.Fatalf("new log head %d:%s", seq, hash)
	}
	w.Write(testRecord(1))
	w.Write(&Record{Outcome: OutcomeOK}) // zero Time: set by Write
	if err := w.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, path)
	if len(lines) != 2 {
		t.Fatalf("after Flush the file has %d lines, want 2", len(lines))
	}
	if seq, hash := w.Head(); seq != 2 || hash != lineHash(lines[1]) {
		t.Fatalf("head %d:%s after two lines", seq, hash)
	}
	var l Line
	if err := json.Unmarshal([]byte(lines[1]), &l); err != nil || time.Since(l.Time) > time.Minute {
		t.Fatalf("zero Time not set to now: %v %v", l.Time, err)
	}
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	w.Write(testRecord(3))
	if st := w.Stats(); st.Dropped != 1 || st.Written != 2 {
		t.Fatalf("stats after a write after Close: %+v", st)
	}
	if err := w.Close(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	if err := w.Flush(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Flush after Close: %v", err)
	}
}

// TestOnFullSet checks the pflag.Value form of OnFull.
func TestOnFullSet(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want OnFull
		ok   bool
	}{{"drop", OnFullDrop, true}, {"block", OnFullBlock, true}, {"Block", 0, false}, {"", 0, false}} {
		var p OnFull
		err := p.Set(tc.in)
		if (err == nil) != tc.ok || tc.ok && (p != tc.want || p.String() != tc.in) {
			t.Errorf("Set(%q) = %v, %v", tc.in, p, err)
		}
	}
}

// TestShardedQueue writes from many sessions through WriteStatement, so
// that the queue's shards are all used (a queue of 8192 has eight): every
// statement is in the log once, each session's statements keep their
// order, and the chain verifies. A third of the sessions are loop
// sessions, which share shard 0 (NewLoopSession).
func TestShardedQueue(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	w := newTestWriter(t, Config{Path: path, OnFull: OnFullBlock, FlushInterval: 20 * time.Millisecond})
	if len(w.shards) != 8 {
		t.Fatalf("%d shards, want 8", len(w.shards))
	}
	const sessions, perS = 24, 500
	base := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	var wg sync.WaitGroup
	for g := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sess := NewSession(fmt.Sprint(g), "u", []string{"r"}, "10.0.0.1", "db", "app")
			if g%3 == 0 {
				sess = NewLoopSession(fmt.Sprint(g), "u", []string{"r"}, "10.0.0.1", "db", "app")
			}
			for i := range perS {
				st := Statement{Time: base.Add(time.Duration(i) * time.Millisecond), Session: sess,
					Shape: NewShape(fmt.Sprintf("%d-%d", g, i), "SELECT ?", nil), Outcome: OutcomeOK}
				w.WriteStatement(&st)
			}
		}()
	}
	wg.Wait()
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	res, err := Verify(context.Background(), []string{path}, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Statements != sessions*perS {
		t.Fatalf("%d statements, want %d", res.Statements, sessions*perS)
	}
	next := map[string]int{}
	for _, line := range readLines(t, path) {
		var l Line
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("%s-%d", l.Session, next[l.Session])
		if l.Fingerprint != want {
			t.Fatalf("line %d: %s, want %s (a session's order changed)", l.Seq, l.Fingerprint, want)
		}
		next[l.Session]++
	}
}

// BenchmarkWrite measures Write throughput end to end: records per second
// through the queue, encoder, hash chain, HMAC and file, and allocations
// per record (the benchmark shares one read-only record, so allocs/op
// counts the writer's own).
func BenchmarkWrite(b *testing.B) {
	for _, key := range [][]byte{nil, testKey} {
		name := "sha256"
		if key != nil {
			name = "sha256+hmac"
		}
		b.Run(name, func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "audit.log")
			w := newTestWriter(b, Config{Path: path, Key: key, OnFull: OnFullBlock})
			r := testRecord(1)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					w.Write(r)
				}
			})
			if err := w.Close(context.Background()); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
			if st := w.Stats(); st.Written != uint64(b.N) {
				b.Fatalf("written %d of %d", st.Written, b.N)
			}
		})
	}
}

// BenchmarkWriteCall measures what a session pays: one Write call that
// queues the record (OnFullDrop, a queue large enough), and one
// WriteStatement call with the session and shape encoded beforehand.
func BenchmarkWriteCall(b *testing.B) {
	path := filepath.Join(b.TempDir(), "audit.log")
	w := newTestWriter(b, Config{Path: path, QueueSize: 1 << 20, FlushInterval: 100 * time.Millisecond})
	r := testRecord(1)
	b.Run("Write", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			w.Write(r)
		}
	})
	st := statementOf(r)
	b.Run("WriteStatement", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			w.WriteStatement(&st)
		}
	})
	w.Close(context.Background())
}

// BenchmarkWriteStatement measures the writer end to end the way serve
// runs it (FlushInterval 100 ms, sessions and shapes encoded once): the
// time per statement covers the callers and the writer goroutine.
func BenchmarkWriteStatement(b *testing.B) {
	path := filepath.Join(b.TempDir(), "audit.log")
	w := newTestWriter(b, Config{Path: path, FlushInterval: 100 * time.Millisecond, OnFull: OnFullBlock})
	r := testRecord(1)
	st := statementOf(r)
	st.Shape = NewShape(r.Fingerprint, r.SQL, r.Columns) // as serve makes it: once per statement shape
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		s := st
		for pb.Next() {
			w.WriteStatement(&s)
		}
	})
	if err := w.Close(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if st := w.Stats(); st.Written != uint64(b.N) {
		b.Fatalf("written %d of %d", st.Written, b.N)
	}
}

// TestCurrentFileDeleted deletes the log under a running writer: the next
// rotation must not shift the rotated files over it but start a new file,
// and Verify must then show the deleted records as missing.
func TestCurrentFileDeleted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	logs := &logBuffer{}
	w := newTestWriter(t, Config{Path: path, MaxSize: 4096, Keep: 100, OnFull: OnFullBlock, Logger: logs.logger()})
	ctx := context.Background()
	for i := 1; i <= 30; i++ {
		w.Write(testRecord(i))
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	before, err := Files(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	for i := 31; i <= 120; i++ {
		w.Write(testRecord(i))
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "moved or deleted") {
		t.Fatalf("no log line about the deleted file:\n%s", logs.String())
	}
	files, err := Files(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) <= len(before) {
		t.Fatalf("files before %v, after %v", before, files)
	}
	_, err = Verify(ctx, files, VerifyOptions{})
	var be *BreakError
	if !errors.As(err, &be) || !strings.Contains(be.Reason, "missing between") {
		t.Fatalf("Verify: %v, want the deleted records reported missing", err)
	}
}

// TestCurrentFileDeletedNoRotation deletes the log under a writer that
// never rotates: within fileCheckEvery the writer notices, logs, and goes
// on in a new file chained to the deleted one.
func TestCurrentFileDeletedNoRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	logs := &logBuffer{}
	obs := &countingObserver{}
	w := newTestWriter(t, Config{Path: path, OnFull: OnFullBlock, Logger: logs.logger(), Observer: obs})
	ctx := context.Background()
	for i := 1; i <= 10; i++ {
		w.Write(testRecord(i))
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	_, deletedHead := w.Head()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	time.Sleep(fileCheckEvery + 100*time.Millisecond)
	for i := 11; i <= 20; i++ {
		w.Write(testRecord(i))
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	obs.mu.Lock()
	reopened := obs.kinds["reopen"]
	obs.mu.Unlock()
	if !strings.Contains(logs.String(), "moved or deleted") || reopened != 1 {
		t.Fatalf("reopen errors %d; log:\n%s", reopened, logs.String())
	}
	res, err := Verify(ctx, []string{path}, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, path)
	var first Line
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	if res.FromGenesis || res.FirstSeq != 11 || res.LastSeq != 20 || first.Prev != deletedHead {
		t.Fatalf("result %+v, first prev %s, deleted head %s", res, first.Prev, deletedHead)
	}
}

// TestShardLimits: the queue's shards hold QueueSize between them at most,
// half of it in shard 0 (the loop's sessions and Write).
func TestShardLimits(t *testing.T) {
	for _, n := range []int{100, 1023, 1024, 8192, 32768, 131072} {
		shards := queueShards(n)
		sum := 0
		for i := range shards {
			sum += shardLimit(i, n, shards)
		}
		if sum > n || sum < n-shards {
			t.Errorf("queue of %d: shards hold %d", n, sum)
		}
		if shards > 1 && shardLimit(0, n, shards) != n/2 {
			t.Errorf("queue of %d: shard 0 holds %d, want %d", n, shardLimit(0, n, shards), n/2)
		}
	}
}
