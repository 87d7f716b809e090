package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// volatile matches the parts of psql output that differ between any two
// sessions: backend process ids and large-object OIDs.
var volatile = regexp.MustCompile(`(PID|lo_import|lo_unlink) \d+`)

// psqlScenario runs testdata/psql_scenario.sql against tg and returns its
// combined output with volatile numbers replaced.
func psqlScenario(ctx context.Context, t *testing.T, tg target) string {
	t.Helper()
	dir := t.TempDir()
	lofile := filepath.Join(dir, "lo.bin")
	if err := os.WriteFile(lofile, []byte(strings.Repeat("large object ", 10000)), 0o644); err != nil {
		t.Fatal(err)
	}
	bigfile, bigvalue := filepath.Join(dir, "big.txt"), filepath.Join(dir, "bigvalue.txt")
	script, err := filepath.Abs("testdata/psql_scenario.sql")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, psqlPath(), "-X", "-f", script,
		"-v", "lofile="+lofile, "-v", "bigfile="+bigfile, "-v", "bigvalue="+bigvalue)
	cmd.Env = append(cleanEnv(), tg.env("scram_user", scramPassword, "app", "require")...)
	cmd.Env = append(cmd.Env, "PSQL_BIGFILE="+bigfile, "PSQL_BIGVALUE="+bigvalue)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: psql: %v\n%s", tg.name, err, out.String())
	}
	lines := strings.Split(out.String(), "\n")
	for i, l := range lines {
		lines[i] = volatile.ReplaceAllString(l, "$1 N")
	}
	return strings.Join(lines, "\n")
}

func TestPsqlDifferential(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	want := psqlScenario(ctx, t, direct())
	got := psqlScenario(ctx, t, via(w.viaTLS))
	for _, frag := range []string{
		"ERROR:  division by zero", `ERROR:  syntax error at or near "SELEC"`, "after multi-statement",
		"NOTICE:  a notice with detail", "WARNING:  a warning", "COPY 2", "extra data after last expected column",
		"3002\tcsv \"quoted\"", `Asynchronous notification "psql_chan" with payload "hello" received`,
		`with payload "world"`, "lo_length", "130000", "t\n",
		// sha256 of the 1,000,000 "g|md5" lines and of the 64 MiB value.
		"  -\n",
	} {
		if !strings.Contains(want, frag) {
			t.Fatalf("direct psql output lacks %q:\n%s", frag, want)
		}
	}
	if got != want {
		t.Fatalf("psql output differs through the proxy\n--- direct\n%s\n--- proxy\n%s", want, got)
	}
}

// TestPsqlCancel interrupts a running query with SIGINT: psql sends a
// CancelRequest, which must reach this session's backend via the proxy.
func TestPsqlCancel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, psqlPath(), "-X", "-c", "select pg_sleep(60)")
	cmd.Env = append(cleanEnv(), via(w.viaTLS).env("scram_user", scramPassword, "app", "require")...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until the query runs, then interrupt psql.
	deadline := time.Now().Add(20 * time.Second)
	for {
		n, err := w.pg.Psql(ctx, "select count(*) from pg_stat_activity where query = 'select pg_sleep(60)' and state = 'active'")
		if err != nil {
			t.Fatal(err)
		}
		if n == "1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("query never started")
		}
		time.Sleep(50 * time.Millisecond)
	}
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if !strings.Contains(out.String(), "canceling statement due to user request") {
		t.Fatalf("psql output: %q", out.String())
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("cancel took %v", el)
	}
}
