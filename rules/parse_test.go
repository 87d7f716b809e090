package rules

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// designPolicy is the example of DESIGN.md §3.
const designPolicy = `version: 1
classes:                       # a kind of data and how it is masked
  email:       { mask: email }               # a***@example.com
  national_id: { mask: "partial(last=4)" }   # *******6789
  birth_date:  { mask: "truncate(year)" }    # 1980-01-01
  salary:      { mask: "round(-4)" }         # 90000
  card:        { mask: "partial(last=4)" }
  secret:      { mask: deny }                # masked sessions may not reference it at all
columns:                       # schema.table.column → class (or a map with more)
  public.customers.email: email
  public.customers.ssn: national_id
  public.customers.birth_date: birth_date
  public.customers.salary: salary
  public.payments.card_number:
    class: card
    encrypted: { key: payments-card }        # stored as ciphertext; see vaultkms
roles:                         # database roles (login user or any role it is a member of)
  analyst: {}                                # sees every class masked
  support: { raw: [email] }
  billing: { decrypt: [card] }
  dpo:     { raw: all, decrypt: all }
row_filters:                   # optional, purpose limitation / withdrawn consent
  - { table: public.customers, roles: [marketing], where: "NOT opted_out" }
unknown_roles: mask            # or: reject
`

func mustParse(t *testing.T, src string) *Policy {
	t.Helper()
	p, err := Parse("policy.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseDesignExample(t *testing.T) {
	p := mustParse(t, designPolicy)
	if p.Version != 1 || p.Source != "policy.yaml" || len(p.Hash) != 16 || p.UnknownRoles != "mask" {
		t.Errorf("header: version %d, source %q, hash %q, unknown_roles %q", p.Version, p.Source, p.Hash, p.UnknownRoles)
	}
	if len(p.Classes) != 6 {
		t.Errorf("%d classes, want 6", len(p.Classes))
	}
	for name, want := range map[string]string{
		"email": "email", "national_id": "partial(first=0,last=4,fill='*')", "birth_date": "truncate(year)",
		"salary": "round(-4)", "card": "partial(first=0,last=4,fill='*')", "secret": "deny",
	} {
		if c := p.Classes[name]; c == nil || c.Name != name || c.Mask.String() != want {
			t.Errorf("class %s = %+v, want mask %s", name, c, want)
		}
	}
	card := p.Column(ColumnKey{"public", "payments", "card_number"})
	if card == nil || card.Class != p.Classes["card"] || !reflect.DeepEqual(card.Encrypted, &Encryption{Key: "payments-card", Mode: "transit"}) {
		t.Errorf("card_number = %+v", card)
	}
	if email := p.Column(ColumnKey{"public", "customers", "email"}); email == nil || email.Class.Name != "email" || email.Encrypted != nil || email.Key.Column != "email" {
		t.Errorf("customers.email = %+v", email)
	}
	if p.Column(ColumnKey{"public", "customers", "name"}) != nil {
		t.Error("unclassified column has a rule")
	}
	if len(p.Columns) != 5 {
		t.Errorf("%d columns, want 5", len(p.Columns))
	}
	wantRoles := map[string]*RoleGrant{
		"analyst": {Name: "analyst", Raw: map[string]bool{}, Decrypt: map[string]bool{}},
		"support": {Name: "support", Raw: map[string]bool{"email": true}, Decrypt: map[string]bool{}},
		"billing": {Name: "billing", Raw: map[string]bool{}, Decrypt: map[string]bool{"card": true}},
		"dpo":     {Name: "dpo", Raw: map[string]bool{}, RawAll: true, Decrypt: map[string]bool{}, DecryptAll: true},
	}
	if !reflect.DeepEqual(p.Roles, wantRoles) {
		t.Errorf("roles = %+v", p.Roles)
	}
	wantFilters := []RowFilter{{Schema: "public", Table: "customers", Roles: []string{"marketing"}, Where: "NOT opted_out"}}
	if !reflect.DeepEqual(p.RowFilters, wantFilters) {
		t.Errorf("row_filters = %+v", p.RowFilters)
	}
}

func TestParseForms(t *testing.T) {
	p := mustParse(t, `
version: 1
classes:
  c: &m { mask: "constant('n/a')" }
  d: *m
  nul: { mask: null }
columns:
  '"My Schema"."a.b"."Col"""': c
  public.t.x: { class: d, encrypted: { key: k, mode: envelope, searchable: true } }
  ünï.t.y: nul
roles:
  reader:
  "Mixed Case": { raw: [c, d], decrypt: [] }
unknown_roles: reject
`)
	if r := p.Column(ColumnKey{"My Schema", "a.b", `Col"`}); r == nil || r.Class.Name != "c" {
		t.Errorf("quoted column key: %+v", p.Columns)
	}
	if p.Classes["d"].Mask.Value != "n/a" {
		t.Errorf("alias: %+v", p.Classes["d"])
	}
	if p.Classes["nul"].Mask.Kind != MaskNull {
		t.Errorf("mask: null = %+v", p.Classes["nul"].Mask)
	}
	if r := p.Column(ColumnKey{"public", "t", "x"}); r == nil || *r.Encrypted != (Encryption{Key: "k", Mode: "envelope", Searchable: true}) {
		t.Errorf("encrypted: %+v", r)
	}
	if p.Column(ColumnKey{"ünï", "t", "y"}) == nil {
		t.Error("non-ASCII identifier")
	}
	if g := p.Roles["reader"]; g == nil || g.RawAll || len(g.Raw) != 0 {
		t.Errorf("empty role: %+v", g)
	}
	if g := p.Roles["Mixed Case"]; g == nil || !g.Raw["c"] || !g.Raw["d"] {
		t.Errorf("role: %+v", g)
	}
	if p.UnknownRoles != "reject" {
		t.Errorf("unknown_roles = %q", p.UnknownRoles)
	}
	if q := mustParse(t, "version: 1\n"); q.UnknownRoles != "mask" || len(q.Classes) != 0 || q.Hash == p.Hash {
		t.Errorf("minimal policy: %+v", q)
	}
}

func TestParseErrors(t *testing.T) {
	const head = "version: 1\nclasses:\n  email: { mask: email }\n"
	for _, tc := range []struct{ name, src, want string }{
		{"empty", "", `policy.yaml: empty policy (want at least "version: 1")`},
		{"comment only", "# nothing\n", `policy.yaml: empty policy (want at least "version: 1")`},
		{"syntax", "version: 1\nclasses: [\n", "policy.yaml:2: did not find expected node content"},
		{"tab", "version: 1\nclasses:\n\temail: {}\n", "policy.yaml:3: found character that cannot start any token"},
		{"two documents", "version: 1\n---\nversion: 1\n", "policy.yaml:2: a policy file holds one YAML document"},
		{"not a mapping", "- version: 1\n", "policy.yaml:1: want a mapping"},
		{"no version", "classes: {}\n", "policy.yaml:1: version: missing (want version: 1)"},
		{"version 2", "version: 2\n", "policy.yaml:1: version: unsupported version 2 (this pgveil reads version 1)"},
		{"version string", `version: "1"` + "\n", "policy.yaml:1: version: want the number 1"},
		{"unknown top key", "version: 1\ncolumn: {}\n", "policy.yaml:2: column: unknown key (want version, classes, columns, roles, row_filters, unknown_roles)"},
		{"duplicate top key", "version: 1\nversion: 1\n", "policy.yaml:2: version: given twice (first at line 1)"},
		{"unknown_roles", "version: 1\nunknown_roles: deny\n", `policy.yaml:2: unknown_roles: want mask or reject, got "deny"`},
		{"unknown_roles list", "version: 1\nunknown_roles: [mask]\n", `policy.yaml:2: unknown_roles: want a string`},

		{"class not a mapping", "version: 1\nclasses:\n  email: email\n", "policy.yaml:3: classes.email: want a mapping such as { mask: email }"},
		{"class without mask", "version: 1\nclasses:\n  email: {}\n", "policy.yaml:3: classes.email.mask: missing"},
		{"class unknown key", "version: 1\nclasses:\n  email: { mask: email, masc: null }\n", "policy.yaml:3: classes.email.masc: unknown key (want mask)"},
		{"class bad mask", "version: 1\nclasses:\n  email:\n    mask: emial\n", `policy.yaml:4: classes.email.mask: unknown mask "emial" (want null, constant('v'), partial(first=N,last=M,fill='*'), email, truncate(year|month|day), round(N) or deny)`},
		{"class bad partial", "version: 1\nclasses:\n  ssn: { mask: 'partial(lats=4)' }\n", `policy.yaml:3: classes.ssn.mask: mask "partial(lats=4)": unknown argument "lats" (want first, last or fill)`},
		{"class named all", "version: 1\nclasses:\n  all: { mask: email }\n", `policy.yaml:3: classes.all: "all" is reserved (raw: all, decrypt: all)`},
		{"class bad name", "version: 1\nclasses:\n  e mail: { mask: email }\n", "policy.yaml:3: classes.e mail: a class name is letters, digits, '_' and '-', starting with a letter or '_'"},
		{"duplicate class", head + "  email: { mask: null }\n", "policy.yaml:4: classes.email: given twice (first at line 3)"},

		{"column unknown class", head + "columns:\n  public.customers.email: emial\n", `policy.yaml:5: columns.public.customers.email: unknown class "emial"`},
		{"column two parts", head + "columns:\n  customers.email: email\n", "policy.yaml:5: columns.customers.email: want schema.table.column, got 2 part(s) (quote a name that contains dots)"},
		{"column four parts", head + "columns:\n  a.b.c.d: email\n", "policy.yaml:5: columns.a.b.c.d: want schema.table.column, got 4 part(s) (quote a name that contains dots)"},
		{"column capitals", head + "columns:\n  public.Customers.email: email\n", `policy.yaml:5: columns.public.Customers.email: "Customers" has capitals, which PostgreSQL folds to lower case unless quoted: write customers, or "Customers" for a case-sensitive name`},
		{"column empty part", head + "columns:\n  public..email: email\n", "policy.yaml:5: columns.public..email: empty name"},
		{"column bad char", head + "columns:\n  public.cus-tomers.email: email\n", `policy.yaml:5: columns.public.cus-tomers.email: "cus-tomers" is not a plain identifier (quote it)`},
		{"column unterminated quote", head + "columns:\n  '\"public.t.c': email\n", `policy.yaml:5: columns."public.t.c: unterminated quoted identifier in "\"public.t.c"`},
		{"column junk after quote", head + "columns:\n  '\"public\"x.t.c': email\n", `policy.yaml:5: columns."public"x.t.c: want schema.table.column: unexpected 'x' after a quoted identifier`},
		{"column too long", head + "columns:\n  public.t." + strings.Repeat("c", 64) + ": email\n", `policy.yaml:5: columns.public.t.` + strings.Repeat("c", 64) + `: identifier "` + strings.Repeat("c", 64) + `" is longer than 63 bytes`},
		{"column twice", head + "columns:\n  public.t.c: email\n  '\"public\".t.c': email\n", "policy.yaml:6: columns.\"public\".t.c: column already classified at line 5"},
		{"column map without class", head + "columns:\n  public.t.c: { encrypted: { key: k } }\n", "policy.yaml:5: columns.public.t.c.class: missing"},
		{"column map unknown class", head + "columns:\n  public.t.c:\n    class: emial\n", `policy.yaml:6: columns.public.t.c.class: unknown class "emial"`},
		{"column map unknown key", head + "columns:\n  public.t.c: { class: email, encrypt: { key: k } }\n", "policy.yaml:5: columns.public.t.c.encrypt: unknown key (want class, encrypted)"},
		{"encryption without key", head + "columns:\n  public.t.c: { class: email, encrypted: {} }\n", "policy.yaml:5: columns.public.t.c.encrypted.key: missing"},
		{"encryption empty key", head + "columns:\n  public.t.c: { class: email, encrypted: { key: '' } }\n", "policy.yaml:5: columns.public.t.c.encrypted.key: want a key name"},
		{"encryption mode", head + "columns:\n  public.t.c: { class: email, encrypted: { key: k, mode: aes } }\n", `policy.yaml:5: columns.public.t.c.encrypted.mode: want transit or envelope, got "aes"`},
		{"encryption searchable", head + "columns:\n  public.t.c: { class: email, encrypted: { key: k, searchable: yes } }\n", "policy.yaml:5: columns.public.t.c.encrypted.searchable: want true or false"},
		{"encryption unknown key", head + "columns:\n  public.t.c: { class: email, encrypted: { key: k, algo: x } }\n", "policy.yaml:5: columns.public.t.c.encrypted.algo: unknown key (want key, mode, searchable)"},
		{"encryption scalar", head + "columns:\n  public.t.c: { class: email, encrypted: true }\n", "policy.yaml:5: columns.public.t.c.encrypted: want a mapping such as { key: payments-card }"},

		{"role unknown class", head + "roles:\n  support: { raw: [emial] }\n", `policy.yaml:5: roles.support.raw: unknown class "emial"`},
		{"role unknown class block", head + "roles:\n  support:\n    decrypt:\n      - email\n      - card\n", `policy.yaml:8: roles.support.decrypt: unknown class "card"`},
		{"role scalar class", head + "roles:\n  support: { raw: email }\n", "policy.yaml:5: roles.support.raw: want all or a list of classes, e.g. [email]"},
		{"role all in list", head + "roles:\n  support: { raw: [all] }\n", `policy.yaml:5: roles.support.raw: write "all" alone (raw: all), not in a list`},
		{"role unknown key", head + "roles:\n  support: { read: [email] }\n", "policy.yaml:5: roles.support.read: unknown key (want raw, decrypt)"},
		{"role not a mapping", head + "roles:\n  support: [email]\n", "policy.yaml:5: roles.support: want a mapping"},
		{"role too long", head + "roles:\n  " + strings.Repeat("r", 64) + ": {}\n", "policy.yaml:5: roles." + strings.Repeat("r", 64) + ": role names are at most 63 bytes"},
		{"roles list", head + "roles: [analyst]\n", "policy.yaml:4: roles: want a mapping"},

		{"row_filters mapping", "version: 1\nrow_filters: { table: public.t }\n", "policy.yaml:2: row_filters: want a list of { table, roles, where }"},
		{"row filter missing", "version: 1\nrow_filters:\n  - { table: public.t }\n", "policy.yaml:3: row_filters[0].roles: missing\npolicy.yaml:3: row_filters[0].where: missing"},
		{"row filter table", "version: 1\nrow_filters:\n  - { table: t, roles: [r], where: x }\n", "policy.yaml:3: row_filters[0].table: want schema.table, got 1 part(s) (quote a name that contains dots)"},
		{"row filter roles", "version: 1\nrow_filters:\n  - table: public.t\n    roles: []\n    where: x\n", "policy.yaml:4: row_filters[0].roles: want a non-empty list of roles"},
		{"row filter where", "version: 1\nrow_filters:\n  - { table: public.t, roles: [r], where: ' ' }\n", "policy.yaml:3: row_filters[0].where: empty condition"},
		{"row filter unknown key", "version: 1\nrow_filters:\n  - { table: public.t, roles: [r], where: x, when: y }\n", "policy.yaml:3: row_filters[0].when: unknown key (want table, roles, where)"},
		{"row filter second", "version: 1\nrow_filters:\n  - { table: public.t, roles: [r], where: x }\n  - x\n", "policy.yaml:4: row_filters[1]: want a mapping { table, roles, where }"},

		{"several", "version: 3\nclasses:\n  email: { mask: emial }\ncolumns:\n  public.t.c: nope\nroles:\n  support: { raw: [email, nope] }\n",
			"policy.yaml:1: version: unsupported version 3 (this pgveil reads version 1)\n" +
				`policy.yaml:3: classes.email.mask: unknown mask "emial" (want null, constant('v'), partial(first=N,last=M,fill='*'), email, truncate(year|month|day), round(N) or deny)` + "\n" +
				`policy.yaml:5: columns.public.t.c: unknown class "nope"` + "\n" +
				`policy.yaml:7: roles.support.raw: unknown class "nope"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse("policy.yaml", []byte(tc.src))
			if err == nil {
				t.Fatalf("no error; policy %+v", p)
			}
			if p != nil {
				t.Error("a policy returned with an error")
			}
			if err.Error() != tc.want {
				t.Errorf("\n got: %v\nwant: %s", err, tc.want)
			}
			var pe *PolicyError
			if !errors.As(err, &pe) || pe.File != "policy.yaml" {
				t.Errorf("error is not a *PolicyError: %#v", err)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pol.yaml")
	if err := os.WriteFile(path, []byte(designPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if p.Source != path || len(p.Columns) != 5 {
		t.Errorf("Load: source %q, %d columns", p.Source, len(p.Columns))
	}
	if err := os.WriteFile(path, []byte("version: 1\nroles:\n  x: { raw: [nope] }\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil || err.Error() != path+`:3: roles.x.raw: unknown class "nope"` {
		t.Errorf("Load error: %v", err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of a missing file: %v", err)
	}
}
