package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgveil/pgveil/vaultkms"
)

func TestRunKeyring(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.json")
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := runKeyring(context.Background(), args, &out, &errb)
		return code, out.String(), errb.String()
	}

	cases := []struct {
		name    string
		args    []string
		code    int
		out     string
		errLine string
	}{
		{"no subcommand", nil, exitUsage, "", "missing subcommand"},
		{"unknown subcommand", []string{"destroy"}, exitUsage, "", "unknown subcommand"},
		{"init without path", []string{"init"}, exitUsage, "", "exactly one PATH"},
		{"init two paths", []string{"init", "a", "b"}, exitUsage, "", "exactly one PATH"},
		{"init bad flag", []string{"init", path, "--nope"}, exitUsage, "", "unknown flag"},
		{"init bad key name", []string{"init", path, "--key", "a/b"}, exitUsage, "", "invalid key name"},
		{"init", []string{"init", path, "--key", "payments-card", "--key", "cust-email"}, exitOK, "added 2 key(s): payments-card, cust-email", ""},
		{"init again adds only new keys", []string{"init", path, "--key", "payments-card", "--key", "other"}, exitOK, "added 1 key(s): other", ""},
		{"rotate missing args", []string{"rotate", path}, exitUsage, "", "PATH and KEY"},
		{"rotate unknown key", []string{"rotate", path, "nope"}, exitError, "", "no key"},
		{"rotate", []string{"rotate", path, "payments-card"}, exitOK, "version 2", ""},
		{"rotate again", []string{"rotate", path, "payments-card"}, exitOK, "version 3", ""},
		{"help", []string{"--help"}, exitOK, "pgveil keyring init", ""},
	}
	for _, tc := range cases {
		code, out, errOut := run(tc.args...)
		if code != tc.code || !strings.Contains(out, tc.out) || !strings.Contains(errOut, tc.errLine) {
			t.Errorf("%s: code %d stdout %q stderr %q; want code %d, stdout ~%q, stderr ~%q", tc.name, code, out, errOut, tc.code, tc.out, tc.errLine)
		}
		if tc.code == exitUsage && strings.Count(errOut, "\n") != 1 {
			t.Errorf("%s: usage error is not one line: %q", tc.name, errOut)
		}
	}

	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("keyring mode %04o, want 0600", st.Mode().Perm())
	}
	k, err := vaultkms.NewKeyring(vaultkms.KeyringConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	info, err := k.KeyInfo(context.Background(), "payments-card")
	if err != nil || info.LatestVersion != 3 {
		t.Fatalf("KeyInfo = %+v, %v; want version 3", info, err)
	}
	// A keyring that others can read is refused by rotate, with a clear message.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := run("rotate", path, "payments-card")
	if code != exitError || !strings.Contains(errOut, "chmod 600") {
		t.Errorf("rotate on a 0644 keyring: code %d stderr %q", code, errOut)
	}
}
