package catalog

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// Defaults for the zero values of Config's durations.
const (
	DefaultRefreshInterval = 60 * time.Second
	DefaultConnectTimeout  = 10 * time.Second
	DefaultLoadTimeout     = 30 * time.Second
	DefaultInvalidateDelay = 200 * time.Millisecond
)

// firstRetryDelay is how long Run waits after a failed refresh before the
// first retry; it doubles up to the refresh interval.
const firstRetryDelay = time.Second

// closeTimeout bounds closing the catalog connection after a load.
const closeTimeout = 5 * time.Second

// applicationName is the application_name the catalog connection reports
// unless ConnString sets one.
const applicationName = "pgveil catalog"

// Config configures a Catalog.
type Config struct {
	// ConnString is the libpq-style URL or keyword/value string of the
	// database to read the catalog from, as the proxy's own account
	// (any role will do: everything Load reads is readable by PUBLIC).
	// Required. Its connect_timeout, if any, applies per host in addition
	// to ConnectTimeout.
	ConnString string
	// RefreshInterval is how often Run reloads the catalog. Zero means
	// DefaultRefreshInterval (60s).
	RefreshInterval time.Duration
	// ConnectTimeout bounds connecting for one refresh. Zero means
	// DefaultConnectTimeout (10s).
	ConnectTimeout time.Duration
	// LoadTimeout bounds one whole refresh Run starts, connecting
	// included. Zero means DefaultLoadTimeout (30s).
	LoadTimeout time.Duration
	// InvalidateDelay is how long Run waits after an Invalidate before it
	// refreshes; further Invalidate calls during the wait are folded into
	// the same refresh. Zero means DefaultInvalidateDelay (200ms).
	InvalidateDelay time.Duration
}

// Catalog holds the current Snapshot of a database and refreshes it.
// Its methods are safe for concurrent use.
type Catalog struct {
	cfg     Config
	connCfg *pgx.ConnConfig
	current atomic.Pointer[Snapshot]
	invalid chan struct{} // capacity 1: a pending Invalidate
	// refreshing is a semaphore (capacity 1) held by the running refresh;
	// it also guards version.
	refreshing chan struct{}
	version    uint64
	runCount   atomic.Int32
}

// New validates cfg, fills in its defaults and returns a Catalog with no
// snapshot yet: call Refresh or Run to load one.
func New(cfg Config) (*Catalog, error) {
	if cfg.ConnString == "" {
		return nil, errors.New("catalog: missing connection string")
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"refresh interval", &cfg.RefreshInterval, DefaultRefreshInterval},
		{"connect timeout", &cfg.ConnectTimeout, DefaultConnectTimeout},
		{"load timeout", &cfg.LoadTimeout, DefaultLoadTimeout},
		{"invalidate delay", &cfg.InvalidateDelay, DefaultInvalidateDelay},
	} {
		if *d.v < 0 {
			return nil, fmt.Errorf("catalog: negative %s %v", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	connCfg, err := pgx.ParseConfig(cfg.ConnString)
	if err != nil {
		return nil, fmt.Errorf("catalog: connection string: %w", err)
	}
	if _, ok := connCfg.RuntimeParams["application_name"]; !ok {
		connCfg.RuntimeParams["application_name"] = applicationName
	}
	return &Catalog{cfg: cfg, connCfg: connCfg, invalid: make(chan struct{}, 1),
		refreshing: make(chan struct{}, 1)}, nil
}

// Current returns the latest snapshot, or nil before the first successful
// load. It never blocks.
func (c *Catalog) Current() *Snapshot {
	return c.current.Load()
}

// Refresh connects to the database, loads a snapshot, makes it current
// and returns it. On error the previous snapshot stays current. Refreshes
// run one at a time, so versions increase in the order snapshots become
// current.
func (c *Catalog) Refresh(ctx context.Context) (*Snapshot, error) {
	select {
	case c.refreshing <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("catalog: wait for the running refresh: %w", ctx.Err())
	}
	defer func() { <-c.refreshing }()

	connectCtx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout)
	conn, err := pgx.ConnectConfig(connectCtx, c.connCfg.Copy())
	cancel()
	if err != nil {
		return nil, fmt.Errorf("catalog: connect: %w", err)
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()

	s, err := Load(ctx, conn)
	if err != nil {
		return nil, err
	}
	c.version++
	s.Version = c.version
	c.current.Store(s)
	return s, nil
}

// Invalidate asks Run to refresh soon, for example after the proxy saw DDL
// or a role change commit. Run waits InvalidateDelay first, so a burst of
// calls causes a single refresh; a call made while a refresh runs causes
// one more afterwards. Invalidate never blocks, and has effect only while
// (or once) Run runs.
func (c *Catalog) Invalidate() {
	select {
	case c.invalid <- struct{}{}:
	default:
	}
}

// Run keeps the snapshot fresh until ctx ends: it refreshes at once if
// there is no snapshot yet, then every RefreshInterval, and InvalidateDelay
// after Invalidate. After a failed refresh it retries sooner, after 1s,
// then 2s, 4s and so on up to RefreshInterval. Each refresh is bounded by
// LoadTimeout. onError, if not nil, receives every refresh error, from
// Run's goroutine. Run returns when ctx ends; it must not run twice at
// once on the same Catalog.
func (c *Catalog) Run(ctx context.Context, onError func(error)) {
	if c.runCount.Add(1) != 1 {
		c.runCount.Add(-1)
		if onError != nil {
			onError(errors.New("catalog: Run is already running"))
		}
		return
	}
	defer c.runCount.Add(-1)

	first := c.cfg.RefreshInterval
	if c.Current() == nil {
		first = 0
	}
	periodic := time.NewTimer(first)
	defer periodic.Stop()
	debounce := time.NewTimer(0)
	debounce.Stop()
	defer debounce.Stop()
	debouncing := false
	retry := min(firstRetryDelay, c.cfg.RefreshInterval)

	for {
		select {
		case <-ctx.Done():
			return
		case <-c.invalid:
			if !debouncing {
				debouncing = true
				debounce.Reset(c.cfg.InvalidateDelay)
			}
			continue
		case <-debounce.C:
		case <-periodic.C:
		}
		debouncing = false
		debounce.Stop()

		loadCtx, cancel := context.WithTimeout(ctx, c.cfg.LoadTimeout)
		_, err := c.Refresh(loadCtx)
		cancel()
		next := c.cfg.RefreshInterval
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if onError != nil {
				onError(err)
			}
			next = retry
			retry = min(2*retry, c.cfg.RefreshInterval)
		} else {
			retry = min(firstRetryDelay, c.cfg.RefreshInterval)
		}
		periodic.Reset(next)
	}
}
