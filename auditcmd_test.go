package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgveil/pgveil/audit"
)

// auditLog writes n records to a log at dir/audit.log through the real
// writer, rotating at maxSize (0: never), and returns the path and the
// writer's final head.
func auditLog(t *testing.T, dir string, keyFile string, n int, maxSize int64) (string, audit.Anchor) {
	t.Helper()
	path := filepath.Join(dir, "audit.log")
	w, err := audit.New(audit.Config{Path: path, KeyFile: keyFile, MaxSize: maxSize, Keep: 100, OnFull: audit.OnFullBlock})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		w.Write(&audit.Record{
			Time:    time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Second),
			Session: "s1", User: "analyst", Roles: []string{"analyst"}, Client: "127.0.0.1:5000", Database: "app",
			Fingerprint: fmt.Sprintf("fp%d", i), SQL: "SELECT email FROM public.customers WHERE id = $1",
			Columns: []audit.Column{{Table: "public.customers", Column: "email", Treatment: audit.TreatmentMasked, Clauses: []string{"select"}}},
			Rows:    1, Duration: time.Millisecond, Outcome: audit.OutcomeOK,
		})
	}
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	seq, hash := w.Head()
	return path, audit.Anchor{Seq: seq, Hash: hash}
}

func auditKeyFile(t *testing.T, dir string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, fmt.Sprintf("audit-%o.key", mode))
	if err := os.WriteFile(p, []byte(strings.Repeat("s", 44)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func runAuditArgs(args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := runAudit(context.Background(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// TestAuditVerifyCommand runs "pgveil audit verify" on real logs: intact
// (rotated, keyed, anchored), tampered, cut, and bad usage.
func TestAuditVerifyCommand(t *testing.T) {
	dir := t.TempDir()
	key := auditKeyFile(t, dir, 0o600)
	badKey := auditKeyFile(t, dir, 0o644)
	rotated, head := auditLog(t, filepath.Join(dir), key, 300, 8192)
	if _, err := os.Stat(rotated + ".2"); err != nil {
		t.Fatalf("the log did not rotate: %v", err)
	}

	tamperedDir := t.TempDir()
	tampered, _ := auditLog(t, tamperedDir, "", 30, 0)
	lines := strings.SplitAfter(auditReadFile(t, tampered), "\n")
	lines[16] = strings.Replace(lines[16], `"rows":1`, `"rows":0`, 1)
	auditWriteFile(t, tampered, strings.Join(lines, ""))

	cutDir := t.TempDir()
	cut, cutHead := auditLog(t, cutDir, "", 30, 0)
	lines = strings.SplitAfter(auditReadFile(t, cut), "\n")
	auditWriteFile(t, cut, strings.Join(lines[:27], ""))

	for _, tc := range []struct {
		name       string
		args       []string
		env        map[string]string
		code       int
		stdout     []string // substrings of stdout
		stderr     string   // the first line of stderr starts with it
		stdoutLine int      // number of stdout lines, when not 0
	}{
		{name: "intact rotated log with key and anchor",
			args: []string{"verify", "--key-file", key, "--expect-head", head.String(), rotated}, code: 0,
			stdout: []string{rotated + ": intact: ", " files, 300 records (seq 1-300 from genesis)",
				"2026-11-30T12:00:01.000000Z to 2026-11-30T12:05:00.000000Z", "HMAC verified", "expected head found",
				"head " + head.String()}, stdoutLine: 1},
		{name: "key file from the environment", args: []string{"verify", rotated}, env: map[string]string{"PGVEIL_KEY_FILE": key},
			code: 0, stdout: []string{"HMAC verified"}},
		{name: "without key", args: []string{"verify", rotated}, code: 0, stdout: []string{"HMAC not checked (no --key-file)"}},
		{name: "only the current file", args: []string{"verify", "--no-rotated", rotated}, code: 0,
			stdout: []string{": intact: 1 file, ", "the lines before"}},
		{name: "files given explicitly", args: []string{"verify", rotated + ".1", rotated}, code: 0,
			stdout: []string{": intact: 2 files, "}},
		{name: "edited line", args: []string{"verify", tampered}, code: 1,
			stderr: tampered + ":17: line 17 edited (prev hash of line 18 does not match)"},
		{name: "cut tail without anchor", args: []string{"verify", cut}, code: 0, stdout: []string{"27 records"}},
		{name: "cut tail with anchor", args: []string{"verify", "--expect-head", cutHead.String(), cut}, code: 1,
			stderr: cut + ":27: log truncated: it ends at sequence 27, but the expected head is sequence 30"},
		{name: "key given, log written without", args: []string{"verify", "--key-file", key, tampered}, code: 1,
			stderr: tampered + ":1: line 1 has no hmac"},
		{name: "no subcommand", args: nil, code: 2, stderr: "Usage:"},
		{name: "unknown subcommand", args: []string{"list"}, code: 2, stderr: `pgveil: unknown audit command "list"`},
		{name: "no path", args: []string{"verify"}, code: 2, stderr: "pgveil: missing audit log path"},
		{name: "unknown flag", args: []string{"verify", "--bogus", rotated}, code: 2, stderr: "pgveil: unknown flag: --bogus"},
		{name: "missing file", args: []string{"verify", filepath.Join(dir, "nope.log")}, code: 2, stderr: "pgveil: stat "},
		{name: "bad anchor", args: []string{"verify", "--expect-head", "12", rotated}, code: 2, stderr: "pgveil: --expect-head: "},
		{name: "key file readable by others", args: []string{"verify", "--key-file", badKey, rotated}, code: 2,
			stderr: "pgveil: --key-file: audit key file " + badKey + " has mode 0644"},
		{name: "help", args: []string{"verify", "--help"}, code: 0, stdout: []string{"--key-file", "--expect-head", "Exit status"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			code, stdout, stderr := runAuditArgs(tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, stdout, stderr)
			}
			for _, s := range tc.stdout {
				if !strings.Contains(stdout, s) {
					t.Errorf("stdout does not contain %q:\n%s", s, stdout)
				}
			}
			if tc.stdoutLine > 0 && strings.Count(stdout, "\n") != tc.stdoutLine {
				t.Errorf("stdout has %d lines, want %d:\n%s", strings.Count(stdout, "\n"), tc.stdoutLine, stdout)
			}
			if !strings.HasPrefix(stderr, tc.stderr) {
				t.Errorf("stderr %q, want it to start with %q", stderr, tc.stderr)
			}
			if tc.stderr == "" && stderr != "" {
				t.Errorf("unexpected stderr %q", stderr)
			}
		})
	}
}

// TestAuditVerifyShowsMarkers checks that an intact log with a torn
// marker (a crash mid-write, then a restart) verifies and shows it.
func TestAuditVerifyShowsMarkers(t *testing.T) {
	dir := t.TempDir()
	path, _ := auditLog(t, dir, "", 10, 0)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"seq":11,"ti`)
	f.Close()
	code, stdout, stderr := runAuditArgs("verify", path)
	if code != 0 || !strings.Contains(stdout, "incomplete last line ignored (13 bytes") {
		t.Fatalf("before restart: exit %d\n%s%s", code, stdout, stderr)
	}
	path, _ = auditLog(t, dir, "", 5, 0)
	code, stdout, stderr = runAuditArgs("verify", path)
	if code != 0 || !strings.Contains(stdout, "16 records (seq 1-16 from genesis)") || !strings.Contains(stdout, "1 torn marker,") ||
		!strings.Contains(stdout, path+":11: torn marker: an incomplete line of 13 bytes") {
		t.Fatalf("after restart: exit %d\n%s%s", code, stdout, stderr)
	}
}

func auditReadFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func auditWriteFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}
