// Package pgcluster owns a throwaway PostgreSQL cluster for the demo, tests
// and benchmarks: it runs initdb into a scratch directory, writes the
// server configuration, starts and stops the server with pg_ctl, and runs
// psql against it as the superuser.
//
// PostgreSQL refuses to run as root. When the process runs as root (as CI
// does), pgcluster chowns everything it creates to the "postgres" OS user
// and runs initdb, pg_ctl, postgres and psql with that user's credentials
// via exec.Cmd's SysProcAttr; otherwise it runs them as the current user.
//
// A Cluster is safe for concurrent use: Psql may run alongside anything,
// and the lifecycle methods (Stop, Kill, StopServer, StartAgain) are
// serialized.
package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Superuser is the name of the cluster's bootstrap superuser (initdb -U).
const Superuser = "postgres"

// Host is the loopback address the server listens on.
const Host = "127.0.0.1"

// startAttempts is how often Start tries a freshly picked port when the
// previous one was taken between picking it and the server binding it.
const startAttempts = 3

// pgCtlTimeout is the seconds pg_ctl waits for start or stop (pg_ctl -t).
const pgCtlTimeout = 60

// stopTimeout bounds a whole pg_ctl stop invocation, which has no context.
const stopTimeout = 2 * time.Minute

// logTailBytes is how much of the server log a start error includes.
const logTailBytes = 4096

// waitDelay is how long a finished command may keep its output pipes open.
const waitDelay = 5 * time.Second

// Config describes the cluster Start creates. The zero value is a usable
// cluster on a free port in a temporary directory, trusting every local
// connection.
type Config struct {
	// BinDir is the directory holding initdb, pg_ctl, postgres and psql.
	// "" uses the directory of pg_ctl on PATH (after resolving symlinks) if
	// it holds all four programs, else the highest-versioned
	// /usr/lib/postgresql/*/bin.
	BinDir string
	// Dir is the parent directory of the cluster's data directory, socket
	// directory and server log. If Dir is "", Start creates a temporary
	// directory with os.MkdirTemp and Stop removes it; a Dir given here is
	// created if missing and never removed, and must not already hold a
	// cluster. When running as root, Start grants search (execute)
	// permission to others on Dir and its ancestors where needed, so the
	// postgres OS user can reach it (e.g. for t.TempDir()).
	Dir string
	// Port is the TCP port on 127.0.0.1; 0 picks a free one. Picking means
	// listening on 127.0.0.1:0 and closing the listener, so another process
	// could take the port before the server binds it; Start then retries
	// with a new port a few times.
	Port int
	// HBA is the complete pg_hba.conf, one line per entry. nil means
	// "local all all trust", "host all all 127.0.0.1/32 trust" and
	// "host all all ::1/128 trust".
	HBA []string
	// Settings are extra postgresql.conf settings, overriding pgcluster's
	// defaults (listen_addresses '127.0.0.1', fsync off, max_connections
	// 200). Values are raw, unquoted values, e.g. "8MB", "on" or
	// "server.crt": pgcluster always writes them as single-quoted strings
	// with quotes and backslashes escaped, which postgresql.conf accepts for
	// parameters of every type. "port" and "unix_socket_directories" are
	// managed by pgcluster and rejected here.
	Settings map[string]string
	// Files are written into the data directory after initdb and before
	// the server starts (e.g. "server.key"), with mode 0600 and owned by
	// the server's OS user. Names are local paths relative to the data
	// directory; missing subdirectories are created with mode 0700.
	Files map[string][]byte
	// Logf, if non-nil, receives progress messages (e.g. t.Logf).
	Logf func(format string, args ...any)
}

// Cluster is a running (or stopped) throwaway PostgreSQL cluster.
type Cluster struct {
	// Dir is the cluster's parent directory (Config.Dir or a temporary
	// directory).
	Dir string
	// DataDir is the data directory, Dir/data.
	DataDir string
	// SocketDir is the unix socket directory, Dir/sock, or a separate short
	// temporary directory when Dir is too long for a socket path.
	SocketDir string
	// Host is always "127.0.0.1".
	Host string
	// Port is the server's TCP port; the unix socket uses the same number.
	Port int
	// Superuser is always "postgres".
	Superuser string
	// BinDir is the directory of the PostgreSQL programs.
	BinDir string

	owner osUser
	logf  func(format string, args ...any)
	// removeDirs are directories Stop removes: Dir if Start created it, and
	// a separate SocketDir.
	removeDirs []string

	mu      sync.Mutex
	stopped bool
}

// Start creates a new cluster with initdb (trust authentication, superuser
// "postgres", --no-sync, UTF8, C locale), writes its configuration, HBA
// rules and files, and starts it with pg_ctl start -w. The server listens
// on 127.0.0.1 and on a unix socket in SocketDir. If Start fails it cleans
// up after itself. The caller must call Stop.
func Start(ctx context.Context, cfg Config) (_ *Cluster, err error) {
	binDir, err := FindBinDir(cfg.BinDir)
	if err != nil {
		return nil, err
	}
	owner, err := serverUser()
	if err != nil {
		return nil, err
	}
	settings, err := mergeSettings(cfg.Settings)
	if err != nil {
		return nil, err
	}
	for name := range cfg.Files {
		if !filepath.IsLocal(name) {
			return nil, fmt.Errorf("pgcluster: file %q: not a local path in the data directory", name)
		}
	}
	c := &Cluster{
		Host:      Host,
		Superuser: Superuser,
		BinDir:    binDir,
		owner:     owner,
		logf:      cfg.Logf,
	}
	defer func() {
		if err != nil {
			c.abort()
		}
	}()
	if err := c.makeDirs(cfg.Dir); err != nil {
		return nil, err
	}
	settings["unix_socket_directories"] = c.SocketDir

	c.printf("initdb %s (%s)", c.DataDir, c.BinDir)
	if _, err := c.run(ctx, "", "initdb",
		"-D", c.DataDir, "-U", Superuser, "--auth=trust", "--no-sync",
		"-E", "UTF8", "--locale=C"); err != nil {
		return nil, err
	}
	if err := c.writeHBA(cfg.HBA); err != nil {
		return nil, err
	}
	if err := c.writeFiles(cfg.Files); err != nil {
		return nil, err
	}
	if err := c.includeSettings(); err != nil {
		return nil, err
	}

	attempts := 1
	if cfg.Port == 0 {
		attempts = startAttempts
	}
	for i := 1; ; i++ {
		c.Port = cfg.Port
		if c.Port == 0 {
			if c.Port, err = freePort(); err != nil {
				return nil, err
			}
		}
		settings["port"] = strconv.Itoa(c.Port)
		if err := c.writeSettings(settings); err != nil {
			return nil, err
		}
		var log string
		log, err = c.startServer(ctx)
		if err == nil {
			break
		}
		if i >= attempts || !strings.Contains(log, "could not bind") {
			return nil, err
		}
		c.printf("port %d was taken, retrying with another", c.Port)
	}
	c.printf("started PostgreSQL on %s:%d, data in %s", c.Host, c.Port, c.DataDir)
	return c, nil
}

// Stop stops the server (pg_ctl stop -m fast, falling back to immediate)
// and removes Dir if Start created it. Stop is idempotent; after Stop the
// cluster cannot be started again.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return nil
	}
	if err := c.stopServer("fast"); err != nil {
		c.printf("fast stop failed, trying immediate: %v", err)
		if err := c.stopServer("immediate"); err != nil {
			return err
		}
	}
	c.stopped = true
	var errs []error
	for _, dir := range c.removeDirs {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("pgcluster: remove %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// Kill stops the server with pg_ctl stop -m immediate, which skips the
// shutdown checkpoint like a crash does, so the next start runs crash
// recovery. The data directory is kept for StartAgain.
func (c *Cluster) Kill() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return errors.New("pgcluster: kill: cluster was stopped")
	}
	return c.stopServer("immediate")
}

// StopServer stops the server cleanly with pg_ctl stop -m fast, keeping the
// data directory for StartAgain.
func (c *Cluster) StopServer() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return errors.New("pgcluster: stop server: cluster was stopped")
	}
	return c.stopServer("fast")
}

// StartAgain starts the server again with pg_ctl start -w after Kill or
// StopServer, on the same port. It does nothing if the server is running.
func (c *Cluster) StartAgain(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return errors.New("pgcluster: start again: cluster was stopped")
	}
	if c.running() {
		return nil
	}
	if _, err := c.startServer(ctx); err != nil {
		return err
	}
	c.printf("restarted PostgreSQL on %s:%d", c.Host, c.Port)
	return nil
}

// Psql runs sql with psql -X -q -A -t -v ON_ERROR_STOP=1 as the superuser
// over the unix socket, connected to the "postgres" database. The script is
// read from standard input, so it may hold several statements and psql
// meta-commands. Psql returns standard output without its trailing
// newlines; on failure the error includes standard error.
func (c *Cluster) Psql(ctx context.Context, sql string) (string, error) {
	return c.PsqlDB(ctx, "postgres", sql)
}

// PsqlDB is Psql connected to database instead of "postgres".
func (c *Cluster) PsqlDB(ctx context.Context, database, sql string) (string, error) {
	out, err := c.run(ctx, sql, "psql",
		"-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
		"-h", c.SocketDir, "-p", strconv.Itoa(c.Port),
		"-U", Superuser, "-d", database, "-f", "-")
	return strings.TrimRight(out, "\n"), err
}

// URL returns a connection URL for user on database over TCP without TLS:
// postgres://user:password@127.0.0.1:port/database?sslmode=disable. An
// empty password is left out, and so is an empty user or database.
func (c *Cluster) URL(user, password, database string) string {
	u := url.URL{
		Scheme:   "postgres",
		Host:     net.JoinHostPort(c.Host, strconv.Itoa(c.Port)),
		RawQuery: "sslmode=disable",
	}
	switch {
	case password != "":
		u.User = url.UserPassword(user, password)
	case user != "":
		u.User = url.User(user)
	}
	if database != "" {
		u.Path = "/" + database
	}
	return u.String()
}

// Bin returns the full path of the PostgreSQL program name in BinDir.
func (c *Cluster) Bin(name string) string {
	return filepath.Join(c.BinDir, name)
}

// LogFile returns the path of the server log, Dir/postgres.log, which
// pg_ctl appends to on every start.
func (c *Cluster) LogFile() string {
	return filepath.Join(c.Dir, "postgres.log")
}

// startServer runs pg_ctl start -w and returns the server log written
// during the attempt, which the error also includes on failure.
func (c *Cluster) startServer(ctx context.Context) (string, error) {
	var offset int64
	if fi, err := os.Stat(c.LogFile()); err == nil {
		offset = fi.Size()
	}
	_, err := c.run(ctx, "", "pg_ctl", "start", "-w", "-t", strconv.Itoa(pgCtlTimeout),
		"-D", c.DataDir, "-l", c.LogFile())
	if err == nil {
		return "", nil
	}
	log := c.logSince(offset)
	if c.running() {
		// pg_ctl gave up (e.g. ctx ended) but the server came up anyway.
		_ = c.stopServer("immediate")
	}
	return log, fmt.Errorf("%w\nserver log %s:\n%s", err, c.LogFile(), log)
}

// stopServer runs pg_ctl stop -m mode if the server is running.
func (c *Cluster) stopServer(mode string) error {
	if !c.running() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	_, err := c.run(ctx, "", "pg_ctl", "stop", "-w", "-t", strconv.Itoa(pgCtlTimeout),
		"-m", mode, "-D", c.DataDir)
	if err == nil {
		c.printf("stopped PostgreSQL on port %d (%s)", c.Port, mode)
	}
	return err
}

// running reports whether pg_ctl status finds a running server.
func (c *Cluster) running() bool {
	if c.DataDir == "" {
		return false
	}
	if _, err := os.Stat(filepath.Join(c.DataDir, "postmaster.pid")); err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	_, err := c.run(ctx, "", "pg_ctl", "status", "-D", c.DataDir)
	return err == nil
}

// abort undoes a failed Start.
func (c *Cluster) abort() {
	_ = c.stopServer("immediate")
	for _, dir := range c.removeDirs {
		_ = os.RemoveAll(dir)
	}
}

// logSince returns at most logTailBytes of the server log after offset.
func (c *Cluster) logSince(offset int64) string {
	data, err := os.ReadFile(c.LogFile())
	if err != nil {
		return fmt.Sprintf("(cannot read server log: %v)", err)
	}
	if offset > int64(len(data)) {
		offset = 0
	}
	data = data[offset:]
	if len(data) > logTailBytes {
		data = data[len(data)-logTailBytes:]
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:]
		}
	}
	return strings.TrimRight(string(data), "\n")
}

// run runs the PostgreSQL program name as the server's OS user with stdin
// as standard input, and returns its standard output. The error names the
// command and includes its standard error (or, if that is empty, its
// standard output).
func (c *Cluster) run(ctx context.Context, stdin, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.Bin(name), args...)
	cmd.Dir = c.Dir
	cmd.Env = c.owner.env()
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.WaitDelay = waitDelay
	if c.owner.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.owner.cred}
	}
	err := cmd.Run()
	if errors.Is(err, exec.ErrWaitDelay) {
		err = nil
	}
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		if msg != "" {
			msg = ": " + msg
		}
		what := name
		if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
			what += " " + args[0]
		}
		return stdout.String(), fmt.Errorf("%s: %w%s", what, err, msg)
	}
	return stdout.String(), nil
}

// printf logs a progress message through Config.Logf, if set.
func (c *Cluster) printf(format string, args ...any) {
	if c.logf != nil {
		c.logf("pgcluster: "+format, args...)
	}
}
