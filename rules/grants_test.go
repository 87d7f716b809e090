package rules

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestGrants(t *testing.T) {
	p := mustParse(t, designPolicy)
	for _, tc := range []struct {
		name    string
		roles   []string
		want    map[string]Treatment // classes not listed are masked
		allRaw  bool
		filters int
	}{
		{name: "analyst", roles: []string{"alice", "analyst"}},
		{name: "unknown role masks", roles: []string{"bob"}},
		{name: "no roles", roles: nil},
		{name: "support", roles: []string{"sue", "support"}, want: map[string]Treatment{"email": TreatRaw}},
		{name: "billing", roles: []string{"billing"}, want: map[string]Treatment{"card": TreatDecrypt}},
		{name: "most permissive wins", roles: []string{"support", "billing", "analyst"},
			want: map[string]Treatment{"email": TreatRaw, "card": TreatDecrypt}},
		{name: "dpo", roles: []string{"dpo"}, allRaw: true,
			want: map[string]Treatment{"email": TreatDecrypt, "national_id": TreatDecrypt, "birth_date": TreatDecrypt, "salary": TreatDecrypt, "card": TreatDecrypt, "secret": TreatDecrypt}},
		{name: "marketing has a row filter", roles: []string{"mia", "marketing"}, filters: 1},
		{name: "dpo in marketing still filtered", roles: []string{"dpo", "marketing"}, filters: 1,
			want: map[string]Treatment{"email": TreatDecrypt, "national_id": TreatDecrypt, "birth_date": TreatDecrypt, "salary": TreatDecrypt, "card": TreatDecrypt, "secret": TreatDecrypt}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := p.Grants(tc.roles)
			if err != nil {
				t.Fatal(err)
			}
			for class := range p.Classes {
				if got := g.Treatment(class); got != tc.want[class] {
					t.Errorf("Treatment(%s) = %v, want %v", class, got, tc.want[class])
				}
			}
			if g.Treatment("no-such-class") != TreatMask {
				t.Error("an unknown class is not masked")
			}
			if g.AllRaw() != tc.allRaw {
				t.Errorf("AllRaw() = %v", g.AllRaw())
			}
			if len(g.RowFilters()) != tc.filters {
				t.Errorf("RowFilters() = %+v", g.RowFilters())
			}
		})
	}
}

func TestGrantsKey(t *testing.T) {
	p := mustParse(t, designPolicy)
	key := func(roles ...string) string {
		g, err := p.Grants(roles)
		if err != nil {
			t.Fatal(err)
		}
		return g.Key()
	}
	want := p.Hash + ";birth_date=m,card=d,email=r,national_id=m,salary=m,secret=m;"
	if got := key("support", "billing"); got != want {
		t.Errorf("Key() = %q, want %q", got, want)
	}
	for _, same := range [][2][]string{
		{{"alice", "analyst"}, {"bob"}},
		{{"support", "billing"}, {"billing", "support", "analyst"}},
		{{"dpo"}, {"dpo", "support"}},
	} {
		if a, b := key(same[0]...), key(same[1]...); a != b {
			t.Errorf("%v and %v have equal grants but keys\n%s\n%s", same[0], same[1], a, b)
		}
	}
	for _, differ := range [][2][]string{
		{{"analyst"}, {"support"}},
		{{"analyst"}, {"marketing"}},
		{{"dpo"}, {"dpo", "marketing"}},
	} {
		if a, b := key(differ[0]...), key(differ[1]...); a == b {
			t.Errorf("%v and %v share key %s", differ[0], differ[1], a)
		}
	}
	if !strings.HasSuffix(key("marketing"), ";0") {
		t.Errorf("row filter missing from key %s", key("marketing"))
	}
	other := mustParse(t, designPolicy+"# changed\n")
	g, err := other.Grants([]string{"analyst"})
	if err != nil {
		t.Fatal(err)
	}
	if g.Key() == key("analyst") {
		t.Error("grants of different policies share a key")
	}
}

func TestGrantsUnknownRoleReject(t *testing.T) {
	p := mustParse(t, strings.Replace(designPolicy, "unknown_roles: mask", "unknown_roles: reject", 1))
	for _, tc := range []struct {
		roles []string
		want  string
	}{
		{[]string{"bob"}, `unknown role: role "bob" is not in the policy and unknown_roles is reject`},
		{[]string{"bob", "staff"}, `unknown role: none of the roles "bob", "staff" is in the policy and unknown_roles is reject`},
		{nil, "unknown role: the session has no role and unknown_roles is reject"},
		{[]string{"marketing"}, `unknown role: role "marketing" is not in the policy and unknown_roles is reject`},
	} {
		g, err := p.Grants(tc.roles)
		if !errors.Is(err, ErrUnknownRole) || err.Error() != tc.want || g != nil {
			t.Errorf("Grants(%q) = %v, %v; want %s", tc.roles, g, err, tc.want)
		}
	}
	if _, err := p.Grants([]string{"bob", "analyst"}); err != nil {
		t.Errorf("a member of a known role is rejected: %v", err)
	}
}

func TestColumnTreatment(t *testing.T) {
	p := mustParse(t, strings.Replace(designPolicy, "billing: { decrypt: [card] }", "billing: { decrypt: [card, email] }", 1))
	g, err := p.Grants([]string{"billing"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		col  ColumnKey
		want Treatment
	}{
		{ColumnKey{"public", "payments", "card_number"}, TreatDecrypt},
		{ColumnKey{"public", "customers", "email"}, TreatRaw}, // decrypt of a plain column
		{ColumnKey{"public", "customers", "ssn"}, TreatMask},
		{ColumnKey{"public", "customers", "name"}, TreatRaw}, // unclassified
	} {
		if got := g.ColumnTreatment(p.Column(tc.col)); got != tc.want {
			t.Errorf("ColumnTreatment(%v) = %v, want %v", tc.col, got, tc.want)
		}
	}
}

func TestRowFilters(t *testing.T) {
	p := mustParse(t, `version: 1
row_filters:
  - { table: public.a, roles: [x, y], where: "p" }
  - { table: public.b, roles: [z], where: "q" }
  - { table: public.c, roles: [y], where: "r" }
`)
	g, err := p.Grants([]string{"u", "y"})
	if err != nil {
		t.Fatal(err)
	}
	want := []RowFilter{p.RowFilters[0], p.RowFilters[2]}
	if !reflect.DeepEqual(g.RowFilters(), want) {
		t.Errorf("RowFilters() = %+v, want %+v", g.RowFilters(), want)
	}
	if g.AllRaw() {
		t.Error("a session with row filters skips rewriting")
	}
	if g.Key() != p.Hash+";;0,2" {
		t.Errorf("Key() = %q", g.Key())
	}
	// Without classes or filters everything is raw.
	g, err = p.Grants([]string{"u"})
	if err != nil {
		t.Fatal(err)
	}
	if !g.AllRaw() || len(g.RowFilters()) != 0 {
		t.Errorf("plain session: AllRaw %v, filters %v", g.AllRaw(), g.RowFilters())
	}
}
