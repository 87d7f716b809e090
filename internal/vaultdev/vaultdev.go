// Package vaultdev owns a throwaway HashiCorp Vault dev server for tests
// and the demo: it finds the binary that scripts/build-vault.sh built
// (Vault v1.14.1, MPL-2.0), runs `vault server -dev` on a free loopback
// port, waits for /v1/sys/health, enables the transit engine, and can
// take the server down and bring it back on the same port.
//
// Two kinds of outage are offered. Pause/Resume (SIGSTOP/SIGCONT) make
// Vault unreachable-but-connected, like a hung or very slow server: TCP
// connections are accepted by the kernel but never answered, and all data
// survives. Kill/Restart make it down for real: connections are refused,
// and since a dev server keeps everything in memory, Restart starts an
// empty Vault, re-enables transit and runs Config.Setup again (which
// should recreate the keys a test needs).
package vaultdev

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Version is the Vault release scripts/build-vault.sh builds: the last
// open-source (MPL-2.0) release line is 1.14.x.
const Version = "v1.14.1"

// startTimeout bounds how long Start waits for /v1/sys/health; a dev
// server is healthy within about half a second on a 2-core machine.
const startTimeout = 60 * time.Second

// logTailBytes is how much of the server log a start error includes.
const logTailBytes = 4096

// Config describes the server Start runs. The zero value is usable.
type Config struct {
	// Bin is the vault binary; "" means Binary().
	Bin string
	// RootToken is the dev root token; "" means a random one.
	RootToken string
	// TransitMount is where transit is enabled; "" means "transit".
	TransitMount string
	// Port is the API port on 127.0.0.1; the cluster listener takes
	// Port+1. 0 picks a port whose successor is also free.
	Port int
	// Dir holds the server log and its HOME; "" means a temporary
	// directory that Stop removes.
	Dir string
	// Setup, if not nil, runs after every start (Start and Restart), e.g.
	// to create transit keys.
	Setup func(ctx context.Context, s *Server) error
	// TLS runs the server with -dev-tls: HTTPS with a generated CA,
	// written to CAFile().
	TLS bool
}

// Server is a running Vault dev server. Its methods are safe for
// concurrent use.
type Server struct {
	cfg     Config
	bin     string
	port    int
	token   string
	dir     string
	ownDir  bool
	logPath string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	client *http.Client
}

// Binary returns the vault binary: $PGVEIL_VAULT_BIN, else the path
// scripts/build-vault.sh writes (${PGVEIL_CACHE:-$HOME/.cache/pgveil}/
// vault-v1.14.1/vault).
func Binary() (string, error) {
	if p := os.Getenv("PGVEIL_VAULT_BIN"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("PGVEIL_VAULT_BIN: %w", err)
		}
		return p, nil
	}
	cache := os.Getenv("PGVEIL_CACHE")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("vault binary: %w", err)
		}
		cache = filepath.Join(home, ".cache", "pgveil")
	}
	p := filepath.Join(cache, "vault-"+Version, "vault")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("no vault binary at %s (run scripts/build-vault.sh or set PGVEIL_VAULT_BIN): %w", p, err)
	}
	return p, nil
}

// RequireBinary returns the vault binary or ends the test: it skips when
// the binary is missing, and fails instead when PGVEIL_REQUIRE_ALL=1.
func RequireBinary(t testing.TB) string {
	t.Helper()
	p, err := Binary()
	if err != nil {
		if os.Getenv("PGVEIL_REQUIRE_ALL") == "1" {
			t.Fatalf("vault is required (PGVEIL_REQUIRE_ALL=1): %v", err)
		}
		t.Skipf("skipping: %v", err)
	}
	return p
}

// StartT starts a server for a test (skipping or failing like
// RequireBinary when there is no binary) and stops it at cleanup.
func StartT(t testing.TB, cfg Config) *Server {
	t.Helper()
	if cfg.Bin == "" {
		cfg.Bin = RequireBinary(t)
	}
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*startTimeout)
	defer cancel()
	s, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start vault: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stop vault: %v", err)
		}
	})
	return s
}

// Start runs a dev server and returns when it is healthy, transit is
// enabled and Setup has run.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	s := &Server{cfg: cfg, bin: cfg.Bin, token: cfg.RootToken, dir: cfg.Dir, port: cfg.Port}
	if s.bin == "" {
		b, err := Binary()
		if err != nil {
			return nil, err
		}
		s.bin = b
	}
	if s.token == "" {
		b := make([]byte, 16)
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		s.token = "root-" + hex.EncodeToString(b)
	}
	if s.cfg.TransitMount == "" {
		s.cfg.TransitMount = "transit"
	}
	if s.dir == "" {
		d, err := os.MkdirTemp("", "pgveil-vault-")
		if err != nil {
			return nil, err
		}
		s.dir, s.ownDir = d, true
	} else if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, err
	}
	s.logPath = filepath.Join(s.dir, "vault.log")
	pick := s.port == 0
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if pick {
			if s.port, err = freePortPair(); err != nil {
				break
			}
		}
		if err = s.start(ctx); err == nil || !pick {
			break
		}
	}
	if err != nil {
		s.cleanupDir()
		return nil, err
	}
	return s, nil
}

// freePortPair returns a port p such that p and p+1 are free on
// 127.0.0.1 (Vault's API and cluster listeners).
func freePortPair() (int, error) {
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+1))
		l.Close()
		if err == nil {
			l2.Close()
			return p, nil
		}
	}
	return 0, errors.New("no free pair of ports")
}

func (s *Server) start(ctx context.Context) error {
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	args := []string{"server", "-dev",
		"-dev-root-token-id=" + s.token,
		"-dev-listen-address=127.0.0.1:" + strconv.Itoa(s.port),
		"-dev-no-store-token"}
	if s.cfg.TLS {
		certDir := filepath.Join(s.dir, "tls")
		os.RemoveAll(certDir) // a restart makes a new CA
		if err := os.MkdirAll(certDir, 0o700); err != nil {
			logf.Close()
			return err
		}
		args = append(args, "-dev-tls", "-dev-tls-cert-dir="+certDir)
	}
	s.mu.Lock()
	s.client = nil
	s.mu.Unlock()
	cmd := exec.Command(s.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = s.dir
	// HOME is the scratch directory so nothing lands in the user's home;
	// VAULT_* variables of the caller must not configure the server.
	env := []string{"HOME=" + s.dir, "PATH=" + os.Getenv("PATH")}
	cmd.Env = env
	// The server dies with the test process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start vault: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(exited)
	}()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()

	if err := s.waitHealthy(ctx, exited); err != nil {
		s.Kill()
		return fmt.Errorf("vault dev server on port %d: %w\n%s", s.port, err, s.logTail())
	}
	if _, err := s.Do(ctx, http.MethodPost, "sys/mounts/"+s.cfg.TransitMount, map[string]any{"type": "transit"}); err != nil {
		s.Kill()
		return fmt.Errorf("enable transit: %w", err)
	}
	if s.cfg.Setup != nil {
		if err := s.cfg.Setup(ctx, s); err != nil {
			s.Kill()
			return fmt.Errorf("vault setup: %w", err)
		}
	}
	return nil
}

func (s *Server) waitHealthy(ctx context.Context, exited chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.Addr()+"/v1/sys/health", nil)
		if client, err := s.httpClient(); err != nil {
			// The CA file is not written yet.
		} else if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			return errors.New("exited before becoming healthy")
		case <-ctx.Done():
			return fmt.Errorf("not healthy: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(s.logPath)
	if len(b) > logTailBytes {
		b = b[len(b)-logTailBytes:]
	}
	return string(b)
}

// Addr returns the server's address, "http://127.0.0.1:PORT" (https
// with Config.TLS).
func (s *Server) Addr() string {
	if s.cfg.TLS {
		return "https://127.0.0.1:" + strconv.Itoa(s.port)
	}
	return "http://127.0.0.1:" + strconv.Itoa(s.port)
}

// CAFile returns the PEM file of the CA that signed the server's
// certificate with Config.TLS ("" without). Restart makes a new CA.
func (s *Server) CAFile() string {
	if !s.cfg.TLS {
		return ""
	}
	return filepath.Join(s.dir, "tls", "vault-ca.pem")
}

// httpClient returns a client for the server, trusting its CA with TLS.
func (s *Server) httpClient() (*http.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client != nil {
		return s.client, nil
	}
	c := &http.Client{Timeout: 30 * time.Second}
	if s.cfg.TLS {
		pem, err := os.ReadFile(s.CAFile())
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("no certificate in the dev CA file")
		}
		c.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	}
	s.client = c
	return c, nil
}

// Port returns the API port (the cluster listener uses Port()+1).
func (s *Server) Port() int { return s.port }

// Token returns the root token.
func (s *Server) Token() string { return s.token }

// TransitMount returns the transit mount path.
func (s *Server) TransitMount() string { return s.cfg.TransitMount }

// Pause stops the server process with SIGSTOP: it keeps its port and its
// data but answers nothing (clients time out). It returns once every
// thread of the process is stopped. Resume continues it.
func (s *Server) Pause() error {
	if err := s.signal(syscall.SIGSTOP); err != nil {
		return err
	}
	s.mu.Lock()
	pid := s.cmd.Process.Pid
	s.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for !allStopped(pid) {
		if time.Now().After(deadline) {
			return errors.New("vault did not stop after SIGSTOP")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// allStopped reports whether every thread of pid is in state T (stopped),
// from /proc/PID/task/*/stat.
func allStopped(pid int) bool {
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, task := range tasks {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + task.Name() + "/stat")
		if err != nil {
			return false
		}
		// The state follows the command name, which is in parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
			return false
		}
	}
	return true
}

// Resume continues a paused server with SIGCONT.
func (s *Server) Resume() error { return s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return errors.New("vault is not running")
	}
	return s.cmd.Process.Signal(sig)
}

// Kill kills the server (connections are then refused) and waits for it
// to exit. Its data is lost. Kill on a stopped server does nothing.
func (s *Server) Kill() error {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(syscall.SIGCONT) // a paused process must run to die cleanly
	if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-exited:
		return nil
	case <-time.After(30 * time.Second):
		return errors.New("vault did not exit after SIGKILL")
	}
}

// Restart kills the server if it runs and starts a new one on the same
// port with the same root token, re-enabling transit and running
// Config.Setup. A dev server keeps no data across a restart.
func (s *Server) Restart(ctx context.Context) error {
	if err := s.Kill(); err != nil {
		return err
	}
	var err error
	// The port may linger briefly after the kill; retry for a while.
	for attempt := 0; attempt < 20; attempt++ {
		if err = s.start(ctx); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(250 * time.Millisecond):
		}
	}
	return err
}

// Stop kills the server and removes its temporary directory.
func (s *Server) Stop() error {
	err := s.Kill()
	s.cleanupDir()
	return err
}

func (s *Server) cleanupDir() {
	if s.ownDir {
		os.RemoveAll(s.dir)
	}
}

// Do sends one API request with the root token: method, a path without
// "/v1/", and a JSON body (nil for none). It returns the response's "data"
// (nil when empty) and an error for any status >= 400.
func (s *Server) Do(ctx context.Context, method, path string, body any) (map[string]any, error) {
	resp, err := s.DoToken(ctx, s.token, method, path, body)
	if err != nil {
		return nil, err
	}
	d, _ := resp["data"].(map[string]any)
	return d, nil
}

// DoToken is Do with another token; it returns the whole response
// document (with "data", "auth", ...).
func (s *Server) DoToken(ctx context.Context, token, method, path string, body any) (map[string]any, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.Addr()+"/v1/"+strings.TrimPrefix(path, "/"), rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Vault-Token", token)
	client, err := s.httpClient()
	if err != nil {
		return nil, fmt.Errorf("vault %s %s: %w", method, path, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("vault %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("vault %s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 400 {
		return nil, fmt.Errorf("vault %s %s: HTTP %d: %s", method, path, resp.StatusCode, bytes.TrimSpace(raw))
	}
	out := map[string]any{}
	if len(bytes.TrimSpace(raw)) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			return nil, fmt.Errorf("vault %s %s: malformed response: %w", method, path, err)
		}
	}
	return out, nil
}
