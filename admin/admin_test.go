package admin

import (
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestEndpoints(t *testing.T) {
	m := NewMetrics()
	ready := errors.New("catalog not loaded")
	s, err := New(Config{Ready: func(context.Context) error { return ready }, Gatherer: m.Registry})
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		s.http.Handler.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		b, _ := io.ReadAll(rec.Result().Body)
		return rec.Code, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("/healthz %d", code)
	}
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "catalog not loaded") {
		t.Fatalf("/readyz %d %q", code, body)
	}
	ready = nil
	if code, _ := get("/readyz"); code != 200 {
		t.Fatalf("/readyz %d after ready", code)
	}
	m.SessionStarted()
	m.Refused("function")
	m.UpstreamConnected(time.Millisecond, nil)
	m.SessionEnded("ok", time.Second)
	_, body := get("/metrics")
	for _, want := range []string{
		"pgveil_client_connections_total 1", "pgveil_sessions_active 0",
		`pgveil_sessions_ended_total{outcome="ok"} 1`, `pgveil_statements_refused_total{rule="function"} 1`,
		"pgveil_upstream_connect_seconds_count 1", "go_goroutines",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
