package rewrite

import (
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

func TestCopyFormatOf(t *testing.T) {
	for _, tc := range []struct {
		sql  string
		want *CopyFormat
	}{
		{"COPY t FROM STDIN", &CopyFormat{Delimiter: '\t', Null: `\N`}},
		{"COPY t TO STDOUT WITH (FORMAT csv, HEADER, DELIMITER ';', NULL 'NA')", &CopyFormat{CSV: true, Delimiter: ';', Quote: '"', Escape: '"', Null: "NA", Header: true}},
		{"COPY t FROM STDIN CSV HEADER", &CopyFormat{CSV: true, Delimiter: ',', Quote: '"', Escape: '"', Header: true}},
		{"COPY t FROM STDIN WITH (FORMAT csv, QUOTE '''', HEADER false)", &CopyFormat{CSV: true, Delimiter: ',', Quote: '\'', Escape: '\''}},
		{"COPY t FROM STDIN WITH (FORMAT csv, ESCAPE '\\')", &CopyFormat{CSV: true, Delimiter: ',', Quote: '"', Escape: '\\'}},
		{"COPY t FROM STDIN (FORMAT binary)", &CopyFormat{Binary: true, Delimiter: '\t', Null: `\N`}},
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
