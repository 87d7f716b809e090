package integration

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// externalClient is a scenario program in clients/ run by a real driver.
type externalClient struct {
	name    string
	command func(t *testing.T) []string
	// expect are transcript fragments every run must contain.
	expect []string
}

// clientExpect are fragments common to every external scenario.
var clientExpect = []string{
	"types: ", "prepared: ", "tx: ", "errors: ", "22012", "42601", "23505", "25P02",
	"copy: ", "notify: ", "payload-1", "cancel: ", "57014", "cancel ok",
	"bigresult: ", "1000000", "500000500000", "bigvalue: ", "67108864", "done: ok",
}

var externalClients = []externalClient{
	{"psycopg", func(t *testing.T) []string {
		needFile(t, "/usr/bin/python3")
		return []string{"/usr/bin/python3", abs(t, "clients/psycopg/scenario.py")}
	}, clientExpect},
	{"node-postgres", func(t *testing.T) []string {
		node := needCommand(t, "node")
		needFile(t, abs(t, "clients/node/node_modules/pg/package.json"))
		return []string{node, abs(t, "clients/node/scenario.js")}
	}, clientExpect},
	{"jdbc", func(t *testing.T) []string {
		java := needCommand(t, "java")
		jar := needFile(t, "/usr/share/java/postgresql.jar")
		return []string{java, "-cp", jar, abs(t, "clients/jdbc/Scenario.java")}
	}, clientExpect},
}

func abs(t *testing.T, rel string) string {
	t.Helper()
	p, err := filepath.Abs(rel)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestExternalClientsDifferential runs each driver's scenario direct and
// through the proxy (TLS from the client, verify-full TLS upstream) and
// requires identical transcripts.
func TestExternalClientsDifferential(t *testing.T) {
	for _, c := range externalClients {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			argv := c.command(t)
			if c.name == "psycopg" {
				if _, _, err := runCmd(context.Background(), nil, argv[0], "-c", "import psycopg"); err != nil {
					if *requireExternal {
						t.Fatal("python3-psycopg is required but not installed")
					}
					t.Skip("python3-psycopg not installed")
				}
			}
			differential(t, func(ctx context.Context, tg target) (string, error) {
				ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
				defer cancel()
				out, stderr, err := runCmd(ctx, tg.env("scram_user", scramPassword, "app", "require"), argv[0], argv[1:]...)
				if err != nil {
					return "", &scenarioError{err, stderr, out}
				}
				return out, nil
			}, c.expect...)
		})
	}
}

type scenarioError struct {
	err            error
	stderr, stdout string
}

func (e *scenarioError) Error() string {
	return e.err.Error() + "\nstderr:\n" + tail(e.stderr) + "\nstdout:\n" + tail(e.stdout)
}

func tail(s string) string {
	lines := strings.Split(s, "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}
