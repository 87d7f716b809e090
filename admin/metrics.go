package admin

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the proxy's Prometheus metrics; they implement the proxy's
// Observer interface.
type Metrics struct {
	Registry *prometheus.Registry

	connections    prometheus.Counter
	active         prometheus.Gauge
	ended          *prometheus.CounterVec
	refused        *prometheus.CounterVec
	upstream       prometheus.Histogram
	upstreamErrors prometheus.Counter
	queries        *prometheus.CounterVec
	queryLatency   prometheus.Histogram
	rejected       *prometheus.CounterVec
	rewrites       prometheus.Counter
	reloads        *prometheus.CounterVec
	policyInfo     *prometheus.GaugeVec
	lastReload     prometheus.Gauge
	columnUse      *prometheus.CounterVec
	usageFlushes   *prometheus.CounterVec
	usagePending   prometheus.Gauge
	usageDropped   prometheus.Counter
	audit          *prometheus.CounterVec
	auditErrors    *prometheus.CounterVec

	keyOps     *prometheus.CounterVec
	keyLatency *prometheus.HistogramVec
	keyValues  *prometheus.CounterVec

	// Resolved children of the vectors on hot paths (one label lookup
	// per event is measurable at tens of thousands of queries a second).
	queriesOK, queriesError, queriesRefused prometheus.Counter
	auditWritten                            prometheus.Counter
}

// Totals are running totals the proxy keeps itself; Metrics reads them
// at scrape time (see WatchTotals).
type Totals struct {
	ClientBytes, ServerBytes                         int64
	PlanCacheHits, PlanCacheMisses, PlanTemplateHits uint64
	// IOUringUp: the io_uring relay is in use; IOUringSessions: the
	// sessions it carries now.
	IOUringUp       bool
	IOUringSessions int
}

// NewMetrics registers pgveil's metrics (and the Go and process
// collectors) in a new registry.
func NewMetrics() *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{
		Registry: r,
		connections: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgveil_client_connections_total", Help: "Client sessions that reached the proxy's startup phase.",
		}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgveil_sessions_active", Help: "Sessions currently relayed.",
		}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgveil_sessions_ended_total", Help: "Sessions that ended, by outcome (ok, client_gone, upstream_gone, shutdown, protocol_violation, refused, error).",
		}, []string{"outcome"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgveil_statements_refused_total", Help: "Statements of masked sessions refused, by rule.",
		}, []string{"rule"}),
		upstream: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "pgveil_upstream_connect_seconds", Help: "Time to connect to the upstream server, TLS included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		upstreamErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgveil_upstream_connect_errors_total", Help: "Failed connections to the upstream server.",
		}),
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgveil_queries_total", Help: "Answered sync points (a simple Query message, an extended-protocol Sync or a function call), by outcome (ok, error, refused).",
		}, []string{"outcome"}),
		queryLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "pgveil_query_seconds", Help: "Round trip through the proxy from a client's sync point to the server's ReadyForQuery (pipelined sync points count once, as one round trip).",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 18),
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgveil_client_connections_rejected_total", Help: "Clients turned away before their session started, by reason (max_client_conn).",
		}, []string{"reason"}),
		rewrites: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgveil_rewrites_total", Help: "Statement texts of masked sessions sent to the server rewritten.",
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgveil_reloads_total", Help: "Reloads of the policy and TLS files, by what asked (signal, file, console) and result (ok, error).",
		}, []string{"trigger", "result"}),
		policyInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgveil_policy_info", Help: "The policy in force: 1 for its file hash (version), none without a policy.",
		}, []string{"hash"}),
		lastReload: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgveil_policy_loaded_timestamp_seconds", Help: "When the policy in force was loaded (Unix time).",
		}),
		columnUse: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgveil_column_statements_total", Help: "Statements that touched a column, by table, column and treatment (raw, masked, decrypted, refused); updated at each usage flush.",
		}, []string{"table", "column", "treatment"}),
		usageFlushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgveil_usage_flushes_total", Help: "Flushes of the usage ledger to its store, by result (ok, error).",
		}, []string{"result"}),
		usagePending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgveil_usage_pending_keys", Help: "Usage counter keys kept for the next flush after the store failed.",
		}),
		usageDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgveil_usage_dropped_statements_total", Help: "Statement counts dropped because too many keys waited for a failing store.",
		}),
		audit: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgveil_audit_records_total", Help: "Audit log events: written, dropped (queue or disk full), rotated.",
		}, []string{"event"}),
		auditErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgveil_audit_errors_total", Help: "Failed audit log writes by kind (enospc, eio, io, rotate, ...).",
		}, []string{"kind"}),
	}
	m.keyOps = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgveil_key_service_calls_total", Help: "Key service operations (encrypt, decrypt, rewrap, keyinfo) and Vault requests (vault transit/decrypt, ...), by outcome (ok, unavailable, denied, not_found, invalid, ...).",
	}, []string{"op", "outcome"})
	m.keyLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "pgveil_key_service_seconds", Help: "Duration of key service operations and Vault requests.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
	}, []string{"op"})
	m.keyValues = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgveil_key_service_values_total", Help: "Values encrypted, decrypted or rewrapped, by operation.",
	}, []string{"op"})
	r.MustRegister(m.keyOps, m.keyLatency, m.keyValues)
	m.queriesOK, m.queriesError, m.queriesRefused = m.queries.WithLabelValues("ok"), m.queries.WithLabelValues("error"), m.queries.WithLabelValues("refused")
	m.auditWritten = m.audit.WithLabelValues("written")
	r.MustRegister(m.connections, m.active, m.ended, m.refused, m.upstream, m.upstreamErrors,
		m.queries, m.queryLatency, m.rejected, m.rewrites, m.reloads, m.policyInfo, m.lastReload,
		m.columnUse, m.usageFlushes, m.usagePending, m.usageDropped, m.audit, m.auditErrors,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// SessionStarted counts a session that reached the relay.
func (m *Metrics) SessionStarted() {
	m.connections.Inc()
	m.active.Inc()
}

// SessionEnded counts a session's end by outcome.
func (m *Metrics) SessionEnded(outcome string, d time.Duration) {
	m.active.Dec()
	m.ended.WithLabelValues(outcome).Inc()
}

// Refused counts a refused statement by rule.
func (m *Metrics) Refused(rule string) { m.refused.WithLabelValues(rule).Inc() }

// UpstreamConnected records one upstream connection attempt.
func (m *Metrics) UpstreamConnected(d time.Duration, err error) {
	if err != nil {
		m.upstreamErrors.Inc()
		return
	}
	m.upstream.Observe(d.Seconds())
}

// QueryDone counts an answered sync point and records its round trip.
func (m *Metrics) QueryDone(outcome string, d time.Duration) {
	switch outcome {
	case "ok":
		m.queriesOK.Inc()
	case "error":
		m.queriesError.Inc()
	case "refused":
		m.queriesRefused.Inc()
	default:
		m.queries.WithLabelValues(outcome).Inc()
	}
	if d >= 0 {
		m.queryLatency.Observe(d.Seconds())
	}
}

// Rejected counts a client turned away before its session started.
func (m *Metrics) Rejected(reason string) { m.rejected.WithLabelValues(reason).Inc() }

// Rewritten counts a rewritten statement text.
func (m *Metrics) Rewritten() { m.rewrites.Inc() }

// Reloaded records a reload attempt; on success hash is the new policy's.
func (m *Metrics) Reloaded(trigger string, hash string, err error) {
	if err != nil {
		m.reloads.WithLabelValues(trigger, "error").Inc()
		return
	}
	m.reloads.WithLabelValues(trigger, "ok").Inc()
	m.PolicyLoaded(hash)
}

// PolicyLoaded records the policy in force.
func (m *Metrics) PolicyLoaded(hash string) {
	m.policyInfo.Reset()
	m.policyInfo.WithLabelValues(hash).Set(1)
	m.lastReload.SetToCurrentTime()
}

// WatchTotals exports the proxy's running totals, read at scrape time:
// bytes from clients and servers, and plan cache hits and misses.
func (m *Metrics) WatchTotals(f func() Totals) {
	m.Registry.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "pgveil_client_bytes_total", Help: "Bytes read from clients."},
			func() float64 { return float64(f().ClientBytes) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "pgveil_server_bytes_total", Help: "Bytes read from upstream servers."},
			func() float64 { return float64(f().ServerBytes) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "pgveil_plan_cache_hits_total", Help: "Rewrite plan cache hits."},
			func() float64 { return float64(f().PlanCacheHits) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "pgveil_plan_cache_misses_total", Help: "Rewrite plan cache misses (statements analysed)."},
			func() float64 { return float64(f().PlanCacheMisses) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "pgveil_plan_cache_template_hits_total", Help: "Plan cache hits answered by a statement template (a new text whose shape was known; included in pgveil_plan_cache_hits_total)."},
			func() float64 { return float64(f().PlanTemplateHits) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "pgveil_io_uring_up", Help: "1 while the io_uring relay is in use; 0 when it is off (--io-uring off), unavailable (kernel, seccomp) or failed (see the log)."},
			func() float64 {
				if f().IOUringUp {
					return 1
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "pgveil_io_uring_sessions", Help: "Sessions the io_uring relay carries now (idle sessions that pass unchanged over plain sockets)."},
			func() float64 { return float64(f().IOUringSessions) }),
	)
}

// ColumnUse adds n statements that touched table.column with a treatment.
func (m *Metrics) ColumnUse(table, column, treatment string, n int64) {
	m.columnUse.WithLabelValues(table, column, treatment).Add(float64(n))
}

// UsageFlushed records a flush of the usage ledger.
func (m *Metrics) UsageFlushed(ok bool, pendingKeys int, dropped int64) {
	if ok {
		m.usageFlushes.WithLabelValues("ok").Inc()
	} else {
		m.usageFlushes.WithLabelValues("error").Inc()
	}
	m.usagePending.Set(float64(pendingKeys))
	m.usageDropped.Add(float64(dropped))
}

// Audit counts audit log events (written, dropped, rotated).
func (m *Metrics) Audit(event string, n int) {
	if event == "written" {
		m.auditWritten.Add(float64(n))
		return
	}
	m.audit.WithLabelValues(event).Add(float64(n))
}

// AuditError counts a failed audit write by kind.
func (m *Metrics) AuditError(kind string) { m.auditErrors.WithLabelValues(kind).Inc() }

// KeyService records one key-service operation or Vault request.
func (m *Metrics) KeyService(op string, remote bool, outcome string, values int, d time.Duration) {
	m.keyOps.WithLabelValues(op, outcome).Inc()
	m.keyLatency.WithLabelValues(op).Observe(d.Seconds())
	if !remote && values > 0 {
		m.keyValues.WithLabelValues(op).Add(float64(values))
	}
}
