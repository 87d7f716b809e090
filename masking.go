package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/pgveil/pgveil/catalog"
	"github.com/pgveil/pgveil/rules"
)

// policySource is the proxy's view of the policy file and the live catalog
// (proxy.Masking).
type policySource struct {
	policy atomic.Pointer[rules.Policy]
	cat    *catalog.Catalog
}

func (p *policySource) Current() (*rules.Policy, *catalog.Snapshot) {
	return p.policy.Load(), p.cat.Current()
}

func (p *policySource) Invalidate() { p.cat.Invalidate() }

// catalogConnString derives the catalog connection from --upstream: the
// proxy's own account on the upstream database, with the same TLS settings.
func catalogConnString(upstream string) (string, error) {
	u, err := url.Parse(upstream)
	if err != nil {
		return "", err
	}
	if u.User == nil || u.User.Username() == "" {
		return "", fmt.Errorf("--policy needs the proxy's own account in --upstream (postgres://pgveil:secret@host/db) to read the catalog")
	}
	if strings.TrimPrefix(u.Path, "/") == "" {
		return "", fmt.Errorf("--policy needs the database name in --upstream (postgres://user@host/db)")
	}
	q := u.Query()
	if q.Get("application_name") == "" {
		q.Set("application_name", "pgveil-catalog")
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// startMasking loads the policy, starts the catalog refresher, and returns
// the source for proxy.Config.Masking. The first catalog load is tried at
// once; if it fails, masked sessions are refused with 57P03 until a retry
// succeeds.
func startMasking(ctx context.Context, policyFile, upstream string, refresh time.Duration, log *slog.Logger) (*policySource, error) {
	pol, err := rules.Load(policyFile)
	if err != nil {
		return nil, usagef("invalid --policy: %v", err)
	}
	conn, err := catalogConnString(upstream)
	if err != nil {
		return nil, usagef("%v", err)
	}
	cat, err := catalog.New(catalog.Config{ConnString: conn, RefreshInterval: refresh})
	if err != nil {
		return nil, usagef("catalog: %v", err)
	}
	src := &policySource{cat: cat}
	src.policy.Store(pol)
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	snap, err := cat.Refresh(lctx)
	cancel()
	if err != nil {
		log.Warn("catalog load failed; masked sessions wait for a retry", "err", err)
	} else {
		log.Info("catalog loaded", "database", snap.Database, "relations", len(snap.Relations()), "version", snap.Version)
		reportMissingColumns(pol, snap, log)
	}
	go cat.Run(ctx, func(err error) { log.Warn("catalog refresh failed", "err", err) })
	log.Info("policy loaded", "file", policyFile, "hash", pol.Hash, "columns", len(pol.Columns), "roles", len(pol.Roles))
	return src, nil
}

// policyProblems lists the policy's columns that the catalog lacks, and
// masks that do not apply to their column's type.
func policyProblems(pol *rules.Policy, snap *catalog.Snapshot) []string {
	var out []string
	for k, r := range pol.Columns {
		rel := snap.Relation(catalog.Name{Schema: k.Schema, Name: k.Table})
		if rel == nil {
			out = append(out, fmt.Sprintf("%s.%s.%s: no such relation in database %s", k.Schema, k.Table, k.Column, snap.Database))
			continue
		}
		col := rel.Column(k.Column)
		if col == nil {
			out = append(out, fmt.Sprintf("%s.%s.%s: no such column", k.Schema, k.Table, k.Column))
			continue
		}
		_, err := r.Class.Mask.SQL(`"x"`, col.Type)
		if errors.Is(err, rules.ErrMaskType) && col.BaseType != "" && col.BaseType != col.Type {
			// Domains are masked as their base type (rewrite.buildProjection).
			_, err = r.Class.Mask.SQL(`"x"`, col.BaseType)
		}
		if err != nil && r.Class.Mask.Kind != rules.MaskDeny {
			out = append(out, fmt.Sprintf("%s.%s.%s: class %s: %v", k.Schema, k.Table, k.Column, r.Class.Name, err))
		}
	}
	return out
}

func reportMissingColumns(pol *rules.Policy, snap *catalog.Snapshot, log *slog.Logger) {
	for _, p := range policyProblems(pol, snap) {
		log.Warn("policy problem", "problem", p)
	}
}
