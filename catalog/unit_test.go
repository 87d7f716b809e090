package catalog

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseSearchPath(t *testing.T) {
	long := strings.Repeat("a", 70)
	for _, tc := range []struct {
		in   string
		want []string
		err  bool
	}{
		{in: "", want: nil},
		{in: "   ", want: nil},
		{in: `"$user", public`, want: []string{"$user", "public"}},
		{in: `$user,public`, want: []string{"$user", "public"}},
		{in: "Public,  S1\t,s2 ", want: []string{"public", "s1", "s2"}},
		{in: `"Mixed Case", "with ""quote""", x`, want: []string{"Mixed Case", `with "quote"`, "x"}},
		{in: `"a,b"`, want: []string{"a,b"}},
		{in: `""`, want: []string{""}},
		{in: `pg_temp, pg_catalog`, want: []string{"pg_temp", "pg_catalog"}},
		{in: `ÄBC`, want: []string{"Äbc"}}, // only ASCII folds in UTF-8
		{in: long, want: []string{long[:63]}},
		{in: `"` + strings.Repeat("é", 40) + `"`, want: []string{strings.Repeat("é", 31)}},
		{in: `a,`, err: true},
		{in: `,a`, err: true},
		{in: `a,,b`, err: true},
		{in: `a b`, err: true},
		{in: `"a"b`, err: true},
		{in: `"unterminated`, err: true},
		{in: `"a""`, err: true},
	} {
		got, err := ParseSearchPath(tc.in)
		if tc.err {
			if err == nil {
				t.Errorf("ParseSearchPath(%q) = %q, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseSearchPath(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestNameString(t *testing.T) {
	for n, want := range map[Name]string{
		{"public", "customers"}:           "public.customers",
		{"", "t"}:                         "t",
		{"Mixed", "t1"}:                   `"Mixed".t1`,
		{"a b", `x"y`}:                    `"a b"."x""y"`,
		{"s", "1abc"}:                     `s."1abc"`,
		{"s", "$x"}:                       `s."$x"`,
		{"s", "a$1_"}:                     "s.a$1_",
		{"pg_temp_3", "tmp"}:              "pg_temp_3.tmp",
		{"s", ""}:                         `s.""`,
		{"s", "ünïcode"}:                  `s."ünïcode"`,
		{"information_schema", "columns"}: "information_schema.columns",
	} {
		if got := n.String(); got != want {
			t.Errorf("%#v.String() = %s, want %s", n, got, want)
		}
	}
}

// TestBuildRolesCycle feeds build a membership cycle, which PostgreSQL
// refuses to create but a snapshot must survive: a → b → c → a, plus d
// (NOINHERIT) → a.
func TestBuildRolesCycle(t *testing.T) {
	raw := &rawData{
		serverVersion: 150000,
		roles: []rawRole{
			{oid: 1, name: "a", inherit: true},
			{oid: 2, name: "b", inherit: true},
			{oid: 3, name: "c", inherit: true},
			{oid: 4, name: "d"},
		},
		members: []rawMember{
			{role: 2, member: 1, inherit: true},
			{role: 3, member: 2, inherit: true},
			{role: 1, member: 3, inherit: true},
			{role: 1, member: 4, inherit: false},
		},
		namespaces: []rawNamespace{{oid: 10, name: "sa", owner: 1, usage: []uint32{3}}},
	}
	s := build(raw)
	for user, want := range map[string][]string{
		"a": {"a", "b", "c"},
		"b": {"a", "b", "c"},
		"c": {"a", "b", "c"},
		"d": {"a", "b", "c", "d"},
	} {
		if got := s.RolesOf(user); !reflect.DeepEqual(got, want) {
			t.Errorf("RolesOf(%s) = %q, want %q", user, got, want)
		}
	}
	if got, want := s.Role("a").MemberOf, []string{"b", "c"}; !reflect.DeepEqual(got, want) {
		t.Errorf("a.MemberOf = %q, want %q", got, want)
	}
	// USAGE granted to c reaches a and b through inheriting grants, but
	// not d, whose grant does not inherit.
	for user, want := range map[string]bool{"a": true, "b": true, "c": true, "d": false, "unknown": false, "": true} {
		if got := s.hasUsage("sa", user); got != want {
			t.Errorf("hasUsage(sa, %q) = %v, want %v", user, got, want)
		}
	}
}

// TestPathStaleTemp checks Path with a temporary schema the snapshot does
// not know yet, named explicitly or through pg_temp, and with an empty
// element.
func TestPathStaleTemp(t *testing.T) {
	s := build(&rawData{
		serverVersion: 150000,
		roles:         []rawRole{{oid: 1, name: "u", inherit: true}},
		namespaces: []rawNamespace{
			{oid: 11, name: "pg_catalog", usage: []uint32{0}},
			{oid: 12, name: "s1", usage: []uint32{0}},
		},
	})
	for _, tc := range []struct {
		sp   SearchPath
		want []string
	}{
		{SearchPath{Schemas: []string{"s1", "pg_temp_9"}, User: "u", TempSchema: "pg_temp_9"},
			[]string{"pg_catalog", "s1", "pg_temp_9"}},
		{SearchPath{Schemas: []string{"s1", "pg_temp"}, User: "u", TempSchema: "pg_temp_9"},
			[]string{"pg_catalog", "s1", "pg_temp_9"}},
		{SearchPath{Schemas: []string{"s1"}, User: "u", TempSchema: "pg_temp_9"},
			[]string{"pg_temp_9", "pg_catalog", "s1"}},
		{SearchPath{Schemas: []string{"", "s1", "pg_temp_9"}, User: "u"},
			[]string{"pg_catalog", "s1"}},
		{SearchPath{Schemas: []string{"$user", "s1"}}, []string{"pg_catalog", "s1"}},
	} {
		if got := s.Path(tc.sp); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Path(%+v) = %q, want %q", tc.sp, got, tc.want)
		}
	}
}
