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
	}
	r.MustRegister(m.connections, m.active, m.ended, m.refused, m.upstream, m.upstreamErrors,
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
