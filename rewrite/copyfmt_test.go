package rewrite

import (
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

func TestCopyFormatOf(t *testing.T) {
	for _, tc := range []struct {
		sql  string
		want *CopyFormat
	}{
		{"COPY t FROM STDIN", &CopyFormat{From: true, Delimiter: '\t', Null: `\N`}},
		{"COPY t TO STDOUT WITH (FORMAT csv, HEADER, DELIMITER ';', NULL 'NA')", &CopyFormat{CSV: true, Delimiter: ';', Quote: '"', Escape: '"', Null: "NA", Header: true}},
		{"COPY t FROM STDIN CSV HEADER", &CopyFormat{From: true, CSV: true, Delimiter: ',', Quote: '"', Escape: '"', Header: true}},
		{"COPY t FROM STDIN WITH (FORMAT csv, QUOTE '''', HEADER false)", &CopyFormat{From: true, CSV: true, Delimiter: ',', Quote: '\'', Escape: '\''}},
		{"COPY t FROM STDIN WITH (FORMAT csv, ESCAPE '\\')", &CopyFormat{From: true, CSV: true, Delimiter: ',', Quote: '"', Escape: '\\'}},
		{"COPY t FROM STDIN (FORMAT binary)", &CopyFormat{From: true, Binary: true, Delimiter: '\t', Null: `\N`}},
		{"COPY (SELECT 1) TO STDOUT DELIMITER '|'", &CopyFormat{Delimiter: '|', Null: `\N`}},
		{"COPY t FROM '/tmp/x'", nil},
		{"SELECT 1", nil},
	} {
		tree, err := pg_query.Parse(tc.sql)
		if err != nil {
			t.Fatal(err)
		}
		got := copyFormatOf(tree.Stmts[0].Stmt)
		switch {
		case got == nil && tc.want == nil:
		case got == nil || tc.want == nil || *got != *tc.want:
			t.Errorf("%s: %+v, want %+v", tc.sql, got, tc.want)
		}
	}
}

// TestOneCopyFromPerText: a text with two COPY ... FROM STDIN is refused
// (rule copy): the proxy follows one per sync point to know which Sync
// messages the server ignores during it; one with a COPY TO beside it
// passes.
func TestOneCopyFromPerText(t *testing.T) {
	s := trackedSession(t, "dpo")
	_, err := Rewrite("COPY cards (id, holder) FROM STDIN; COPY cards (id, holder) FROM STDIN", s)
	if re, ok := err.(*Refusal); !ok || re.Rule != "copy" || !strings.Contains(re.Message, "only one COPY ... FROM STDIN") {
		t.Fatalf("two COPY FROM STDIN in one text: %v", err)
	}
	if _, err := Rewrite("COPY cards (id, holder) FROM STDIN; COPY (SELECT 1) TO STDOUT", s); err != nil {
		t.Fatalf("a COPY FROM STDIN and a COPY TO STDOUT: %v", err)
	}
}
