package rules

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// ErrUnknownRole is wrapped by Policy.Grants when none of a session's roles
// appears in a policy whose unknown_roles is reject.
var ErrUnknownRole = errors.New("unknown role")

// Grants is a session's effective view of a policy: the treatment of each
// class and the row filters that apply, resolved from the session's roles.
// It is immutable and safe for concurrent use.
type Grants struct {
	treat   map[string]Treatment
	filters []RowFilter
	allRaw  bool
	key     string
}

// Grants resolves a session's full role set (the login user and every
// role it is a member of) to its grants. A class's treatment is the most
// permissive among the matching roles: decrypt > raw > mask; classes no
// matching role names are masked. If no role appears in the policy and
// unknown_roles is reject, Grants returns an error wrapping
// ErrUnknownRole; with mask (the default) such a session sees every class
// masked. Row filters apply when any of their roles is among roles,
// whether or not those roles appear under roles:.
func (p *Policy) Grants(roles []string) (*Grants, error) {
	g := &Grants{treat: make(map[string]Treatment, len(p.Classes))}
	matched := false
	for _, r := range roles {
		rg := p.Roles[r]
		if rg == nil {
			continue
		}
		matched = true
		for name := range p.Classes {
			t := TreatMask
			switch {
			case rg.DecryptAll || rg.Decrypt[name]:
				t = TreatDecrypt
			case rg.RawAll || rg.Raw[name]:
				t = TreatRaw
			}
			g.treat[name] = max(g.treat[name], t)
		}
	}
	if !matched && p.UnknownRoles == "reject" {
		switch len(roles) {
		case 0:
			return nil, fmt.Errorf("%w: the session has no role and unknown_roles is reject", ErrUnknownRole)
		case 1:
			return nil, fmt.Errorf("%w: role %q is not in the policy and unknown_roles is reject", ErrUnknownRole, roles[0])
		}
		quoted := make([]string, len(roles))
		for i, r := range roles {
			quoted[i] = strconv.Quote(r)
		}
		return nil, fmt.Errorf("%w: none of the roles %s is in the policy and unknown_roles is reject", ErrUnknownRole, strings.Join(quoted, ", "))
	}
	var applied []int
	for i, f := range p.RowFilters {
		if slices.ContainsFunc(f.Roles, func(r string) bool { return slices.Contains(roles, r) }) {
			g.filters = append(g.filters, f)
			applied = append(applied, i)
		}
	}

	names := make([]string, 0, len(p.Classes))
	for name := range p.Classes {
		names = append(names, name)
	}
	slices.Sort(names)
	var b strings.Builder
	b.WriteString(p.Hash)
	b.WriteString(";")
	g.allRaw = len(g.filters) == 0
	for i, name := range names {
		if i > 0 {
			b.WriteString(",")
		}
		t := g.treat[name]
		b.WriteString(name + "=" + t.code())
		if t == TreatMask {
			g.allRaw = false
		}
	}
	b.WriteString(";")
	for i, n := range applied {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(strconv.Itoa(n))
	}
	g.key = b.String()
	return g, nil
}

// code is the treatment's letter in grant keys.
func (t Treatment) code() string {
	switch t {
	case TreatRaw:
		return "r"
	case TreatDecrypt:
		return "d"
	}
	return "m"
}

// String returns "mask", "raw" or "decrypt".
func (t Treatment) String() string {
	switch t {
	case TreatMask:
		return "mask"
	case TreatRaw:
		return "raw"
	case TreatDecrypt:
		return "decrypt"
	}
	return "Treatment(" + strconv.Itoa(int(t)) + ")"
}

// Treatment returns how the session sees class. A class the policy does
// not define is masked (fail closed).
func (g *Grants) Treatment(class string) Treatment {
	return g.treat[class]
}

// ColumnTreatment returns how the session sees a column with rule r (nil
// for an unclassified column, which is raw). Decrypt on a column that is
// not stored encrypted is raw.
func (g *Grants) ColumnTreatment(r *ColumnRule) Treatment {
	if r == nil {
		return TreatRaw
	}
	t := g.Treatment(r.Class.Name)
	if t == TreatDecrypt && r.Encrypted == nil {
		return TreatRaw
	}
	return t
}

// AllRaw reports whether the session's statements need no rewriting:
// every class is raw or decrypt and no row filter applies to it.
func (g *Grants) AllRaw() bool { return g.allRaw }

// Key returns a canonical string for the effective grants: the policy
// hash, each class's treatment in name order and the indexes of the row
// filters that apply. Sessions with equal keys see the same data, so
// plan caches may key on it.
func (g *Grants) Key() string { return g.key }

// RowFilters returns the row filters whose roles intersect the session's,
// in file order. The caller must not modify the result.
func (g *Grants) RowFilters() []RowFilter { return g.filters }

// Column returns the rule of a classified column, or nil when the column
// is unclassified (and so raw for everyone).
func (p *Policy) Column(k ColumnKey) *ColumnRule { return p.Columns[k] }

// HasEncrypted reports whether the policy stores some column encrypted.
func (p *Policy) HasEncrypted() bool {
	for _, r := range p.Columns {
		if r.Encrypted != nil {
			return true
		}
	}
	return false
}
