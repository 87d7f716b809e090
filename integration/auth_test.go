package integration

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgveil/pgveil/internal/testcert"
)

type authCase struct {
	user, password string
}

var authCases = []authCase{
	{"trust_user", ""},
	{"password_user", cleartextPasswrd},
	{"md5_user", md5Password},
	{"scram_user", scramPassword},
}

// TestAuthMatrix connects with pgx through both proxies for every
// authentication method and client TLS mode, and checks the session is
// the user's own, over the TLS the client asked for.
func TestAuthMatrix(t *testing.T) {
	for _, px := range []struct {
		name string
		p    *proxyInstance
	}{{"upstream-tls", w.viaTLS}, {"upstream-plain", w.viaPlain}} {
		for _, ac := range authCases {
			for _, sslmode := range []string{"disable", "require", "verify-full"} {
				t.Run(fmt.Sprintf("%s/%s/%s", px.name, ac.user, sslmode), func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					defer cancel()
					conn, err := pgx.Connect(ctx, via(px.p).dsn(ac.user, ac.password, "postgres", sslmode, "channel_binding=disable"))
					if err != nil {
						t.Fatal(err)
					}
					defer conn.Close(ctx)
					var user string
					if err := conn.QueryRow(ctx, "select current_user").Scan(&user); err != nil {
						t.Fatal(err)
					}
					if user != ac.user {
						t.Fatalf("current_user = %q, want %q", user, ac.user)
					}
					// The server sees TLS exactly when the proxy's upstream uses it.
					var ssl bool
					if err := conn.QueryRow(ctx, "select ssl from pg_stat_ssl where pid = pg_backend_pid()").Scan(&ssl); err != nil {
						t.Fatal(err)
					}
					if ssl != (px.p == w.viaTLS) {
						t.Fatalf("upstream ssl = %v", ssl)
					}
					if _, isTLS := conn.PgConn().Conn().(*tls.Conn); isTLS != (sslmode != "disable") {
						t.Fatalf("client TLS = %v with sslmode=%s", isTLS, sslmode)
					}
				})
			}
		}
	}
}

// TestAuthFailuresAreTheServers checks that a wrong password reaches the
// client as the server's own error.
func TestAuthFailuresAreTheServers(t *testing.T) {
	for _, ac := range authCases[1:] {
		t.Run(ac.user, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := pgx.Connect(ctx, via(w.viaTLS).dsn(ac.user, "wrong", "postgres", "require", "channel_binding=disable"))
			var pe *pgconn.PgError
			if !errors.As(err, &pe) {
				t.Fatalf("got %v, want a server error", err)
			}
			if pe.Code != "28P01" || !strings.Contains(pe.Message, "password authentication failed for user \""+ac.user+"\"") {
				t.Fatalf("got %s %q", pe.Code, pe.Message)
			}
		})
	}
}

// TestChannelBinding covers SCRAM channel binding, which cannot cross a
// proxy: it is never offered, a client that requires it is refused with a
// clear message, and a client that merely prefers it works whenever the
// upstream connection is not TLS.
func TestChannelBinding(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t.Run("require is refused (pgx)", func(t *testing.T) {
		_, err := pgx.Connect(ctx, via(w.viaPlain).dsn("scram_user", scramPassword, "postgres", "require", "channel_binding=require"))
		if err == nil || !strings.Contains(err.Error(), "channel binding") {
			t.Fatalf("got %v, want a channel binding error", err)
		}
	})
	t.Run("require is refused (libpq)", func(t *testing.T) {
		_, stderr, err := runCmd(ctx, nil, psqlPath(), "-X", "-c", "select 1",
			via(w.viaPlain).dsn("scram_user", scramPassword, "postgres", "require", "channel_binding=require"))
		if err == nil || !strings.Contains(stderr, "channel binding") {
			t.Fatalf("got %v %q, want a channel binding error", err, stderr)
		}
	})
	t.Run("prefer over a plain upstream works", func(t *testing.T) {
		out, stderr, err := runCmd(ctx, nil, psqlPath(), "-X", "-A", "-t", "-c", "select current_user",
			via(w.viaPlain).dsn("scram_user", scramPassword, "postgres", "require", "channel_binding=prefer"))
		if err != nil || strings.TrimSpace(out) != "scram_user" {
			t.Fatalf("got %v %q %q", err, out, stderr)
		}
	})
	t.Run("prefer with TLS on both sides gets a clear error", func(t *testing.T) {
		_, stderr, err := runCmd(ctx, nil, psqlPath(), "-X", "-c", "select 1",
			via(w.viaTLS).dsn("scram_user", scramPassword, "postgres", "require", "channel_binding=prefer"))
		if err == nil || !strings.Contains(stderr, "channel_binding=disable") {
			t.Fatalf("got %v %q, want advice to disable channel binding", err, stderr)
		}
	})
	t.Run("psql every method with TLS both sides", func(t *testing.T) {
		for _, ac := range authCases {
			out, stderr, err := runCmd(ctx, nil, psqlPath(), "-X", "-A", "-t", "-c", "select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()",
				via(w.viaTLS).dsn(ac.user, ac.password, "postgres", "verify-full", "channel_binding=disable"))
			if err != nil || strings.TrimSpace(out) != ac.user+"|t" {
				t.Fatalf("%s: got %v %q %q", ac.user, err, out, stderr)
			}
		}
	})
}

// TestStartupParametersForwarded checks that options, application_name and
// the database reach the server.
func TestStartupParametersForwarded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, via(w.viaTLS).dsn("scram_user", scramPassword, "app", "require",
		"channel_binding=disable", "application_name=it-app", "options='-c work_mem=7MB'"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var db, app, wm string
	if err := conn.QueryRow(ctx, "select current_database(), current_setting('application_name'), current_setting('work_mem')").Scan(&db, &app, &wm); err != nil {
		t.Fatal(err)
	}
	if db != "app" || app != "it-app" || wm != "7MB" {
		t.Fatalf("got %q %q %q", db, app, wm)
	}
	if got := conn.PgConn().ParameterStatus("application_name"); got != "it-app" {
		t.Fatalf("ParameterStatus application_name = %q", got)
	}
}

// TestUpstreamSSLModes connects through a proxy for each upstream sslmode
// and checks whether the server sees TLS; verification failures reach the
// client as 08006.
func TestUpstreamSSLModes(t *testing.T) {
	otherCA, err := testcert.NewCA("some other CA")
	if err != nil {
		t.Fatal(err)
	}
	wrongCA := filepath.Join(t.TempDir(), "wrong-ca.pem")
	if err := os.WriteFile(wrongCA, otherCA.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("postgres://localhost:%d/postgres?sslmode=", w.pg.Port)
	for _, tc := range []struct {
		query   string
		wantTLS bool
		fails   bool
	}{
		{"disable", false, false},
		{"allow", false, false},
		{"prefer", true, false},
		{"require", true, false},
		{"require&sslrootcert=" + w.caFile, true, false},
		{"verify-ca&sslrootcert=" + w.caFile, true, false},
		{"verify-full&sslrootcert=" + w.caFile, true, false},
		{"verify-ca&sslrootcert=" + wrongCA, false, true},
		{"verify-full&sslrootcert=" + wrongCA, false, true},
	} {
		t.Run(tc.query, func(t *testing.T) {
			p, err := startProxy(base+tc.query, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer p.close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			conn, err := pgx.Connect(ctx, via(p).dsn("trust_user", "", "postgres", "disable"))
			if tc.fails {
				if c := serverCode(err); c != "08006" {
					t.Fatalf("got %v, want 08006", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			var ssl bool
			if err := conn.QueryRow(ctx, "select ssl from pg_stat_ssl where pid = pg_backend_pid()").Scan(&ssl); err != nil {
				t.Fatal(err)
			}
			if ssl != tc.wantTLS {
				t.Fatalf("server-side TLS = %v, want %v", ssl, tc.wantTLS)
			}
		})
	}
}
