package audit

import (
	"math/rand/v2"
	"testing"
	"time"
)

// TestAppendTime: the hand-written formatter gives exactly what the
// layout gives.
func TestAppendTime(t *testing.T) {
	times := []time.Time{
		time.Date(2026, 11, 30, 13, 29, 20, 123456789, time.UTC),
		time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(2024, 2, 29, 1, 2, 3, 4000, time.FixedZone("x", -7*3600)),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 10000 {
		times = append(times, time.Unix(r.Int64N(253402300799), r.Int64N(1e9)))
	}
	for _, tm := range times {
		want := tm.UTC().AppendFormat(nil, timeLayout)
		if got := appendTime(nil, tm); string(got) != string(want) {
			t.Fatalf("%v: %s, want %s", tm, got, want)
		}
	}
}
