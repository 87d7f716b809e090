package main

import (
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgveil/pgveil/admin"
	"github.com/pgveil/pgveil/proxy"
	"github.com/pgveil/pgveil/rules"
)

// certStore holds the client-facing TLS certificate so that a reload can
// replace it without restarting: new handshakes get the new certificate,
// established sessions keep theirs.
type certStore struct {
	certFile, keyFile string
	cert              atomic.Pointer[tls.Certificate]
}

func newCertStore(certFile, keyFile string) (*certStore, error) {
	c := &certStore{certFile: certFile, keyFile: keyFile}
	if err := c.load(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *certStore) load() error {
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return err
	}
	c.cert.Store(&cert)
	return nil
}

// tlsConfig returns a server configuration that always uses the current
// certificate.
func (c *certStore) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return c.cert.Load(), nil
		},
	}
}

// reloader re-reads the policy and TLS files on SIGHUP, when they change
// on disk, and on the console's RELOAD. Each file is validated before it
// replaces the one in force; a bad file leaves the old settings in place
// and says why in the log, the metrics and the caller's error.
type reloader struct {
	policyFile string
	src        *policySource // nil without --policy
	certs      *certStore    // nil without --tls-cert
	// keyring, with keyringFile, is the local key service, re-read so
	// that a rotation (pgveil keyring rotate) takes effect.
	keyring     interface{ Reload() error }
	keyringFile string
	srv         *proxy.Server
	metrics     *admin.Metrics
	log         *slog.Logger

	mu       sync.Mutex // serialises reloads
	stamps   map[string]fileStamp
	loadedAt time.Time
	ok, bad  atomic.Int64
	lastErr  atomic.Pointer[string]
}

// fileStamp identifies a file's content cheaply for change detection.
type fileStamp struct {
	size int64
	mod  time.Time
	sum  [32]byte
}

func stampFile(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	f, err := os.Open(path)
	if err != nil {
		return fileStamp{}, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fileStamp{}, err
	}
	st := fileStamp{size: fi.Size(), mod: fi.ModTime()}
	copy(st.sum[:], h.Sum(nil))
	return st, nil
}

func newReloader(policyFile string, src *policySource, certs *certStore, srv *proxy.Server, m *admin.Metrics, log *slog.Logger) *reloader {
	r := &reloader{policyFile: policyFile, src: src, certs: certs, srv: srv, metrics: m, log: log, stamps: map[string]fileStamp{}, loadedAt: time.Now()}
	for _, f := range r.files() {
		if st, err := stampFile(f); err == nil {
			r.stamps[f] = st
		}
	}
	if src != nil {
		m.PolicyLoaded(src.policy.Load().Hash)
	}
	return r
}

// files lists the files a reload re-reads.
func (r *reloader) files() []string {
	var out []string
	if r.src != nil {
		out = append(out, r.policyFile)
	}
	if r.certs != nil {
		out = append(out, r.certs.certFile, r.certs.keyFile)
	}
	if r.keyring != nil {
		out = append(out, r.keyringFile)
	}
	return out
}

// reload re-reads every file; trigger (signal, file, console) labels the
// log line and the metric. It returns a summary, or why the reload failed
// (whatever was valid is applied; the rest stays as it was).
func (r *reloader) reload(trigger string) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var parts []string
	var errs []error
	if r.certs != nil {
		if err := r.certs.load(); err != nil {
			errs = append(errs, fmt.Errorf("TLS certificate: %w", err))
		} else {
			parts = append(parts, "TLS certificate re-read")
		}
	}
	if r.keyring != nil {
		if err := r.keyring.Reload(); err != nil {
			errs = append(errs, fmt.Errorf("keyring: %w", err))
		} else {
			parts = append(parts, "keyring re-read")
		}
	}
	hash := ""
	if r.src != nil {
		old := r.src.policy.Load()
		pol, err := rules.Load(r.policyFile)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("policy: %w", err))
			hash = old.Hash
		case pol.Hash == old.Hash:
			parts = append(parts, "policy "+pol.Hash+" unchanged")
			hash = pol.Hash
		default:
			r.src.policy.Store(pol)
			r.loadedAt = time.Now()
			hash = pol.Hash
			if snap := r.src.cat.Current(); snap != nil {
				reportMissingColumns(pol, snap, r.log)
			}
			ended := r.srv.Revalidate()
			parts = append(parts, fmt.Sprintf("policy %s replaced by %s", old.Hash, pol.Hash))
			if ended > 0 {
				parts = append(parts, fmt.Sprintf("%d unmasked sessions ended", ended))
			}
		}
	}
	for _, f := range r.files() {
		if st, err := stampFile(f); err == nil {
			r.stamps[f] = st
		}
	}
	err := errors.Join(errs...)
	r.metrics.Reloaded(trigger, hash, err)
	if err != nil {
		r.bad.Add(1)
		msg := err.Error()
		r.lastErr.Store(&msg)
		r.log.Error("reload failed; the previous settings stay", "trigger", trigger, "err", err)
		return "", err
	}
	r.ok.Add(1)
	summary := strings.Join(parts, "; ")
	if summary == "" {
		summary = "nothing to reload"
	}
	r.log.Info("reloaded", "trigger", trigger, "result", summary)
	return summary, nil
}

// changed reports whether any watched file differs from what the last
// reload read.
func (r *reloader) changed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range r.files() {
		st, err := stampFile(f)
		if err != nil {
			// A file being replaced may be missing for a moment; a file
			// that stays missing fails the reload the next change causes.
			continue
		}
		if old, ok := r.stamps[f]; !ok || old.sum != st.sum {
			return true
		}
	}
	return false
}

// watch polls the files every interval and reloads when one changed.
// Polling (rather than inotify) also sees Kubernetes ConfigMap updates,
// which swap a symlink to a new directory.
func (r *reloader) watch(stop <-chan struct{}, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if r.changed() {
				_, _ = r.reload("file")
			}
		}
	}
}

// consoleHooks implements proxy.Console for main's wiring.
type consoleHooks struct {
	r        *reloader
	shutdown func()
	started  time.Time
	sink     *statementSink // nil without --usage-store and --audit-log
}

func (c *consoleHooks) Reload() (string, error) { return c.r.reload("console") }

func (c *consoleHooks) Shutdown() { c.shutdown() }

func (c *consoleHooks) Usage() ([]string, [][]string, error) {
	if c.sink == nil || c.sink.ledger == nil {
		return nil, nil, errors.New("no usage ledger is configured (--usage-store)")
	}
	snap := c.sink.ledger.Snapshot()
	cols := []string{"table", "column", "treatment", "statements", "reads", "output", "filter", "join", "group_order", "aggregate_arg", "write_target", "ok", "failed", "rows", "last_read", "unwritten"}
	var rows [][]string
	for _, ct := range snap.Columns {
		n := ct.Written
		n.Add(&ct.Unwritten)
		last := ""
		if !n.LastRead.IsZero() {
			last = n.LastRead.UTC().Format(time.RFC3339)
		}
		f := func(v int64) string { return strconv.FormatInt(v, 10) }
		rows = append(rows, []string{ct.Schema + "." + ct.Table, ct.Column, ct.Treatment.String(), f(n.Statements), f(n.Reads),
			f(n.Output), f(n.Filter), f(n.Join), f(n.GroupOrder), f(n.AggregateArg), f(n.WriteTarget), f(n.OK), f(n.Failed), f(n.Rows),
			last, f(ct.Unwritten.Statements)})
	}
	return cols, rows, nil
}

func (c *consoleHooks) Stats() [][]string {
	rows := [][]string{
		{"version", versionString()},
		{"uptime", time.Since(c.started).Round(time.Second).String()},
		{"reloads_ok", strconv.FormatInt(c.r.ok.Load(), 10)},
		{"reloads_failed", strconv.FormatInt(c.r.bad.Load(), 10)},
	}
	if e := c.r.lastErr.Load(); e != nil {
		rows = append(rows, []string{"last_reload_error", *e})
	}
	if c.r.src != nil {
		rows = append(rows, []string{"policy_hash", c.r.src.policy.Load().Hash})
	}
	return rows
}

func (c *consoleHooks) Policy() [][]string {
	if c.r.src == nil {
		return [][]string{{"file", "", "no --policy: every session is relayed unchanged"}}
	}
	p := c.r.src.policy.Load()
	c.r.mu.Lock()
	loaded := c.r.loadedAt
	c.r.mu.Unlock()
	rows := [][]string{
		{"file", c.r.policyFile, "hash " + p.Hash + ", loaded " + loaded.UTC().Format(time.RFC3339)},
		{"unknown_roles", "", p.UnknownRoles},
	}
	names := make([]string, 0, len(p.Classes))
	for n := range p.Classes {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		rows = append(rows, []string{"class", n, "mask " + p.Classes[n].Mask.String()})
	}
	keys := make([]rules.ColumnKey, 0, len(p.Columns))
	for k := range p.Columns {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b rules.ColumnKey) int {
		return strings.Compare(a.Schema+"."+a.Table+"."+a.Column, b.Schema+"."+b.Table+"."+b.Column)
	})
	for _, k := range keys {
		cr := p.Columns[k]
		v := "class " + cr.Class.Name
		if e := cr.Encrypted; e != nil {
			v += fmt.Sprintf(", encrypted (key %s, %s, searchable %t)", e.Key, e.Mode, e.Searchable)
		}
		rows = append(rows, []string{"column", k.Schema + "." + k.Table + "." + k.Column, v})
	}
	roles := make([]string, 0, len(p.Roles))
	for n := range p.Roles {
		roles = append(roles, n)
	}
	sort.Strings(roles)
	for _, n := range roles {
		g := p.Roles[n]
		rows = append(rows, []string{"role", n, "raw: " + classList(g.RawAll, g.Raw) + "; decrypt: " + classList(g.DecryptAll, g.Decrypt)})
	}
	for _, f := range p.RowFilters {
		rows = append(rows, []string{"row_filter", f.Schema + "." + f.Table, "roles " + strings.Join(f.Roles, ",") + ": " + f.Where})
	}
	return rows
}

func classList(all bool, m map[string]bool) string {
	if all {
		return "all"
	}
	if len(m) == 0 {
		return "-"
	}
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}
