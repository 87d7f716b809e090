package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/pgveil/pgveil/admin"
	"github.com/pgveil/pgveil/audit"
	"github.com/pgveil/pgveil/proxy"
	"github.com/pgveil/pgveil/vaultkms"
)

// serveFlags are the settings of pgveil serve.
type serveFlags struct {
	listen          string
	upstream        string
	tlsCert, tlsKey string
	tlsRequired     bool
	maxMessageSize  int
	shutdownTimeout time.Duration
	connectTimeout  time.Duration
	startupTimeout  time.Duration
	logFormat       string
	logLevel        string
	policy          string
	catalogRefresh  time.Duration
	procs           int
	ioUring         string
	adminListen     string
	config          string
	maxClientConn   int
	idleTimeout     time.Duration
	adminUsers      []string
	adminDatabase   string
	adminAuthDB     string
	watchInterval   time.Duration
	usageStore      string
	usageFlush      time.Duration
	auditLog        string
	auditKeyFile    string
	auditMaxSize    int64
	auditOnFull     audit.OnFull
	auditFlush      time.Duration

	keys         keyFlags
	decryptBatch int
	certs        *certStore // set by proxyConfig when TLS is configured
}

func (f *serveFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.listen, "listen", "127.0.0.1:6432", "address to accept PostgreSQL clients on")
	fs.StringVar(&f.upstream, "upstream", "", "PostgreSQL server URL: postgres://[user:password@]host:port/db?sslmode=prefer&sslrootcert=ca.pem (required)")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "PEM certificate offered to clients that ask for TLS")
	fs.StringVar(&f.tlsKey, "tls-key", "", "PEM private key for --tls-cert")
	fs.BoolVar(&f.tlsRequired, "tls-required", false, "refuse clients that do not use TLS (needs --tls-cert)")
	fs.IntVar(&f.maxMessageSize, "max-message-size", proxy.DefaultMaxMessageSize, "largest protocol message accepted, in bytes")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGTERM/SIGINT, how long running sessions may finish before they are ended with 57P01")
	fs.DurationVar(&f.connectTimeout, "connect-timeout", 10*time.Second, "timeout for connecting to the upstream server")
	fs.DurationVar(&f.startupTimeout, "startup-timeout", 60*time.Second, "timeout for a client's handshake and authentication")
	fs.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&f.policy, "policy", "", "policy file (YAML): which roles see which classified columns masked or raw; without it every session is relayed unchanged")
	fs.DurationVar(&f.catalogRefresh, "catalog-refresh", time.Minute, "how often the schema catalog is re-read (DDL seen through the proxy also triggers a refresh)")
	fs.StringVar(&f.adminListen, "admin-listen", "127.0.0.1:9187", "address of the HTTP endpoints /healthz, /readyz and /metrics (Prometheus); empty disables them")
	fs.StringVar(&f.config, "config", "", "YAML file with any of these settings under their flag names (flags and PGVEIL_* variables override it)")
	fs.IntVar(&f.maxClientConn, "max-client-conn", 0, "most client sessions relayed at once; more get SQLSTATE 53300 (0: no limit; admin console sessions do not count)")
	fs.DurationVar(&f.idleTimeout, "idle-timeout", 0, "end a session whose client sent nothing for this long while no query runs, with 57P05 (25P03 inside a transaction); 0 disables")
	fs.StringSliceVar(&f.adminUsers, "admin-users", nil, "login names allowed into the admin console (psql -d pgveil); the upstream still authenticates them")
	fs.StringVar(&f.adminDatabase, "admin-database", "pgveil", "database name that reaches the admin console instead of the upstream; empty disables the console")
	fs.StringVar(&f.adminAuthDB, "admin-auth-database", "", "upstream database that admin console logins authenticate against (default: the database of --upstream, else postgres)")
	fs.DurationVar(&f.watchInterval, "reload-interval", 2*time.Second, "how often the --policy and --tls-cert/--tls-key files are checked for changes and reloaded (0: only on SIGHUP and the console's RELOAD)")
	fs.StringVar(&f.usageStore, "usage-store", "", "count per-column usage of every statement into sqlite:FILE or postgres://... (needs --policy); empty disables the ledger")
	fs.DurationVar(&f.usageFlush, "usage-flush", 10*time.Second, "how often usage counts are written to --usage-store (a crash loses at most this much)")
	fs.StringVar(&f.auditLog, "audit-log", "", "append one hash-chained JSON line per statement to this file (needs --policy); empty disables it")
	fs.StringVar(&f.auditKeyFile, "audit-key-file", "", "HMAC key file (mode 0600) that signs every audit line")
	fs.Int64Var(&f.auditMaxSize, "audit-max-size", 100<<20, "rotate the audit log after this many bytes (0: never); the chain continues across files")
	fs.DurationVar(&f.auditFlush, "audit-flush", 100*time.Millisecond, "how long audit lines may wait in memory to be written together (fewer writes under load; a crash loses at most this much; 0 writes as soon as the queue is empty)")
	fs.Var(&f.auditOnFull, "audit-on-full", "when the audit queue or disk is full: drop (count, log and mark the gap in the chain; sessions never stall) or block (sessions wait)")
	f.keys.register(fs)
	fs.IntVar(&f.decryptBatch, "decrypt-batch", 1000, "result rows decrypted together: one key-service call per encrypted column per batch (1 = one call per value, for comparison)")
	fs.StringVar(&f.ioUring, "io-uring", "auto", "relay idle sessions that pass unchanged over plain sockets on one io_uring event loop instead of a goroutine per direction (less of the proxy's own CPU per query, throughput level with PgBouncer: bench/README.md; the loop takes one scheduler core more than --procs): auto (when the kernel allows it), on (fail to start otherwise) or off")
	fs.IntVar(&f.procs, "procs", 1, "CPU cores the relay may use at once (GOMAXPROCS); 0 uses Go's default, one per available core. One core gives the lowest latency and CPU per query on small machines (see bench/README.md)")
}

// newLogger builds the process logger from --log-format and --log-level.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("invalid --log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, usagef("invalid --log-format %q: want text or json", format)
	}
}

// proxyConfig maps the flags onto proxy.Config.
func (f *serveFlags) proxyConfig(log *slog.Logger) (proxy.Config, error) {
	var cfg proxy.Config
	if f.upstream == "" {
		return cfg, usagef("missing --upstream")
	}
	up, err := proxy.ParseUpstream(f.upstream)
	if err != nil {
		return cfg, usagef("invalid --upstream: %v", err)
	}
	cfg.Upstream = up
	switch f.ioUring {
	case "on":
		cfg.IOUring = true
	case "auto":
		if err := proxy.IOUringAvailable(); err != nil {
			log.Info("io_uring relay unavailable; relaying with goroutines", "err", err)
		} else {
			cfg.IOUring = true
		}
	case "off":
	default:
		return cfg, usagef("invalid --io-uring %q: want auto, on or off", f.ioUring)
	}
	if (f.tlsCert == "") != (f.tlsKey == "") {
		return cfg, usagef("--tls-cert and --tls-key go together")
	}
	if f.tlsCert != "" {
		certs, err := newCertStore(f.tlsCert, f.tlsKey)
		if err != nil {
			return cfg, usagef("cannot load --tls-cert/--tls-key: %v", err)
		}
		f.certs = certs
		cfg.TLS = certs.tlsConfig()
	}
	if f.tlsRequired && cfg.TLS == nil {
		return cfg, usagef("--tls-required needs --tls-cert and --tls-key")
	}
	cfg.TLSRequired = f.tlsRequired
	if f.maxMessageSize < 1<<16 {
		return cfg, usagef("--max-message-size must be at least 65536")
	}
	cfg.MaxMessageSize = f.maxMessageSize
	if f.shutdownTimeout < 0 || f.connectTimeout <= 0 || f.startupTimeout <= 0 {
		return cfg, usagef("timeouts must be positive")
	}
	cfg.ConnectTimeout = f.connectTimeout
	cfg.StartupTimeout = f.startupTimeout
	if f.maxClientConn < 0 {
		return cfg, usagef("--max-client-conn must be 0 (no limit) or more")
	}
	if f.idleTimeout < 0 || f.watchInterval < 0 {
		return cfg, usagef("--idle-timeout and --reload-interval must not be negative")
	}
	cfg.MaxClientConn = f.maxClientConn
	cfg.IdleTimeout = f.idleTimeout
	cfg.AdminDatabase = f.adminDatabase
	cfg.AdminUsers = f.adminUsers
	cfg.AdminAuthDatabase = f.adminAuthDB
	if cfg.AdminAuthDatabase == "" {
		cfg.AdminAuthDatabase = "postgres"
		if u, err := url.Parse(f.upstream); err == nil && strings.TrimPrefix(u.Path, "/") != "" {
			cfg.AdminAuthDatabase = strings.TrimPrefix(u.Path, "/")
		}
	}
	cfg.Logger = log
	return cfg, nil
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f serveFlags
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	f.register(fs)
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	log, err := newLogger(stderr, f.logFormat, f.logLevel)
	if err != nil {
		return err
	}
	if f.procs < 0 {
		return usagef("--procs must be 0 or more")
	}
	if f.procs > 0 {
		// Before the io_uring loop starts (proxyConfig, proxy.New),
		// which adds a core of its own.
		runtime.GOMAXPROCS(f.procs)
	}
	cfg, err := f.proxyConfig(log)
	if err != nil {
		return err
	}
	ctx, cancelMasking := context.WithCancel(ctx)
	defer cancelMasking()
	var src *policySource
	if f.policy != "" {
		if src, err = startMasking(ctx, f.policy, f.upstream, f.catalogRefresh, log); err != nil {
			return err
		}
		cfg.Masking = src
	}
	metrics := admin.NewMetrics()
	cfg.Observer = metrics
	var keySvc vaultkms.Service
	if f.keys.configured() {
		if f.policy == "" {
			return usagef("a key service (--keyring, --vault-addr) needs --policy: the policy says which columns are encrypted")
		}
		svc, err := f.keys.open(ctx, vaultObserver(metrics))
		if err != nil {
			return err
		}
		defer svc.Close()
		keySvc = svc
		kctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		for _, p := range checkKeys(kctx, src.policy.Load(), svc) {
			log.Warn("key service problem", "problem", p)
		}
		cancel()
		cfg.Keys = keyAdapter{svc}
		if f.decryptBatch < 1 {
			return usagef("--decrypt-batch must be at least 1")
		}
		cfg.DecryptBatch = f.decryptBatch
		log.Info("key service", "kind", fmt.Sprintf("%T", svc))
	} else if src != nil && src.policy.Load().HasEncrypted() {
		log.Warn("the policy has encrypted columns but no key service is configured (--keyring or --vault-addr): statements that write them are refused and their values are not decrypted")
	}
	// The console's SHUTDOWN ends serving as SIGTERM does.
	serveCtx, shutdown := context.WithCancel(ctx)
	defer shutdown()
	sink, closeTracking, err := startTracking(ctx, &f, metrics, log)
	if err != nil {
		return err
	}
	// The ledger and the audit log are flushed after the last session.
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		closeTracking(cctx)
	}()
	if sink != nil {
		cfg.Statements = sink
	}
	hooks := &consoleHooks{shutdown: shutdown, started: time.Now(), sink: sink}
	cfg.Console = hooks
	srv, err := proxy.New(cfg)
	if err != nil {
		return usagef("%v", err)
	}
	metrics.WatchTotals(func() admin.Totals {
		st := srv.Stats()
		return admin.Totals{ClientBytes: st.ClientBytes, ServerBytes: st.ServerBytes, PlanCacheHits: st.PlanCacheHits, PlanCacheMisses: st.PlanCacheMisses, PlanTemplateHits: st.PlanTemplateHits,
			IOUringUp: st.RingUp, IOUringSessions: st.RingSessions}
	})
	rl := newReloader(f.policy, src, f.certs, srv, metrics, log)
	if kr, ok := keySvc.(*vaultkms.Keyring); ok {
		rl.keyring, rl.keyringFile = kr, f.keys.keyring
		if st, err := stampFile(f.keys.keyring); err == nil {
			rl.stamps[f.keys.keyring] = st
		}
	}
	hooks.r = rl
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	stopWatch := make(chan struct{})
	defer close(stopWatch)
	go func() {
		for {
			select {
			case <-hup:
				_, _ = rl.reload("signal")
			case <-stopWatch:
				return
			}
		}
	}()
	if f.watchInterval > 0 && len(rl.files()) > 0 {
		go rl.watch(stopWatch, f.watchInterval)
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return usagef("cannot listen on --listen %s: %v", f.listen, err)
	}
	if f.adminListen != "" {
		aln, err := net.Listen("tcp", f.adminListen)
		if err != nil {
			ln.Close()
			return usagef("cannot listen on --admin-listen %s: %v", f.adminListen, err)
		}
		as, err := admin.New(admin.Config{Ready: srv.Ready, Gatherer: metrics.Registry})
		if err != nil {
			return err
		}
		go func() {
			if err := as.Serve(aln); err != nil {
				log.Warn("admin endpoints stopped", "err", err)
			}
		}()
		defer as.Shutdown(context.Background())
		log.Info("admin endpoints listening", "addr", aln.Addr().String())
	}
	return serveUntilSignal(serveCtx, srv, ln, f.shutdownTimeout, log)
}

// serveUntilSignal serves until ctx ends (SIGTERM/SIGINT), then shuts down
// gracefully; a second signal ends the remaining sessions at once.
func serveUntilSignal(ctx context.Context, srv *proxy.Server, ln net.Listener, timeout time.Duration, log *slog.Logger) error {
	relay := "goroutines"
	if srv.IOUring() {
		relay = "io_uring"
	}
	log.Info("pgveil listening", "addr", ln.Addr().String(), "version", versionString(), "relay", relay, "gomaxprocs", runtime.GOMAXPROCS(0))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down", "sessions", srv.Sessions(), "timeout", timeout)
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	again := make(chan os.Signal, 1)
	signal.Notify(again, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(again)
	go func() {
		select {
		case <-again:
			log.Info("second signal: ending all sessions now")
			cancel()
		case <-sctx.Done():
		}
	}()
	err := srv.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, proxy.ErrServerClosed) {
		log.Warn("listener", "err", serr)
	}
	if err != nil {
		log.Info("shutdown timeout reached; remaining sessions ended")
	}
	log.Info("stopped")
	return nil
}

// errorf is fmt.Errorf, named for symmetry with usagef.
var errorf = fmt.Errorf
