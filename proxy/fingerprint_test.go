package proxy

import "testing"

func TestFingerprint(t *testing.T) {
	if got := fingerprint(""); got != "" {
		t.Errorf("empty text: %q", got)
	}
	// FNV-1a 64 of "a" is af63dc4c8601ec8c.
	if got := fingerprint("a"); got != "af63dc4c8601ec8c" {
		t.Errorf("fingerprint(a) = %q", got)
	}
	if fingerprint("SELECT ?") == fingerprint("SELECT ?;") {
		t.Error("different texts share a fingerprint")
	}
}
