package usage

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/pgveil/pgveil/rules"
)

// OtherRoles is the heatmap column for sessions none of whose roles is
// named in the policy.
const OtherRoles = "(no policy role)"

// Finding kinds.
const (
	// FindingUnusedGrant is a raw or decrypt grant that no session holding
	// the role used in the window.
	FindingUnusedGrant = "unused_grant"
	// FindingUnreadColumn is a classified column nobody read in the window.
	FindingUnreadColumn = "unread_column"
	// FindingUnclassified is an unclassified column that looks personal
	// and is being read.
	FindingUnclassified = "unclassified_personal"
)

// ReportConfig is the input of BuildReport.
type ReportConfig struct {
	// Policy is the policy in force. Required.
	Policy *rules.Policy
	// PolicyText is the policy file's content and PolicyName the path the
	// diffs name; with an empty PolicyText the findings carry no diff.
	PolicyText []byte
	PolicyName string
	// Rows are the stored counts (Store.Query(since)).
	Rows []Row
	// Since and Now bound the window. Now zero means time.Now.
	Since, Now time.Time
	// Samples are value samples of unclassified columns, by
	// schema.table.column (optional; see SampleColumn).
	Samples map[string]SampleResult
}

// Report is the data-minimisation review of one window.
type Report struct {
	Generated time.Time `json:"generated"`
	Since     time.Time `json:"since"`
	Window    string    `json:"window"`
	// DataFrom is the first hour with data in the window (nil if none):
	// a ledger that started late covers less than the window.
	DataFrom   *time.Time `json:"data_from,omitempty"`
	Policy     string     `json:"policy"`
	PolicyHash string     `json:"policy_hash"`
	// ColumnUses sums statements over columns (a statement touching three
	// columns counts three times).
	ColumnUses int64 `json:"column_uses"`
	// Users and RoleSets count the distinct login users and role sets
	// seen.
	Users    int `json:"users"`
	RoleSets int `json:"role_sets"`
	// Roles are the heatmap's columns: the policy's roles, then OtherRoles
	// if such sessions were seen.
	Roles []string `json:"roles"`
	// Columns are every classified column, then the unclassified columns
	// of the findings.
	Columns  []*ColumnReport `json:"columns"`
	Findings []*Finding      `json:"findings"`
	// PolicyDiff applies every suggested policy change at once (git apply
	// or patch -p1).
	PolicyDiff string `json:"policy_diff,omitempty"`
	// SuggestedPolicy is the policy file with PolicyDiff applied.
	SuggestedPolicy string `json:"-"`
}

// ColumnReport is one column's use in the window.
type ColumnReport struct {
	Column    string `json:"column"`
	Class     string `json:"class,omitempty"`
	Encrypted bool   `json:"encrypted,omitempty"`
	// Reads by treatment name (statements that read the column).
	Reads map[string]int64 `json:"reads"`
	// ByRole are the reads per heatmap role, in Report.Roles order. A
	// statement counts for every policy role its session held.
	ByRole []RoleReads `json:"by_role"`
	// Rows returned by statements that output the column.
	Rows int64 `json:"rows_returned"`
	// Writes are statements that wrote the column.
	Writes      int64      `json:"writes"`
	Users       []string   `json:"users,omitempty"`
	LastRead    *time.Time `json:"last_read,omitempty"`
	LastRawRead *time.Time `json:"last_raw_read,omitempty"`
}

// TotalReads sums Reads over treatments, refused attempts included.
func (c *ColumnReport) TotalReads() int64 {
	var n int64
	for _, v := range c.Reads {
		n += v
	}
	return n
}

// RoleReads are one role's reads of one column.
type RoleReads struct {
	Role      string `json:"role"`
	Raw       int64  `json:"raw"`
	Masked    int64  `json:"masked"`
	Decrypted int64  `json:"decrypted"`
	Refused   int64  `json:"refused"`
	Rows      int64  `json:"rows_returned"`
}

// Total sums the role's reads over treatments.
func (r RoleReads) Total() int64 { return r.Raw + r.Masked + r.Decrypted + r.Refused }

// Finding is one recommendation with its evidence.
type Finding struct {
	Kind string `json:"kind"`
	// Subject is the role (unused_grant) or the column.
	Subject string `json:"subject"`
	// Class is the class concerned, or the suggested one.
	Class          string   `json:"class,omitempty"`
	Summary        string   `json:"summary"`
	Evidence       []string `json:"evidence"`
	Recommendation string   `json:"recommendation"`
	// Diff is this finding's change to the policy file alone.
	Diff string `json:"diff,omitempty"`

	edits []edit
}

// roleAgg accumulates one role's use of one column.
type colAgg struct {
	rep    *ColumnReport
	byRole map[string]*RoleReads
	users  map[string]bool
}

// BuildReport turns stored counts into the minimisation report.
func BuildReport(cfg ReportConfig) (*Report, error) {
	pol := cfg.Policy
	if pol == nil {
		return nil, errors.New("usage: report: no policy")
	}
	now := cfg.Now
	if now.IsZero() {
		now = time.Now()
	}
	r := &Report{
		Generated: now.UTC(), Since: cfg.Since.UTC(), Window: windowString(now.Sub(cfg.Since)),
		Policy: pol.Source, PolicyHash: pol.Hash,
	}
	var text *policyText
	if len(cfg.PolicyText) > 0 {
		name := cfg.PolicyName
		if name == "" {
			name = "policy.yaml"
		}
		text = parsePolicyText(strings.TrimPrefix(name, "/"), cfg.PolicyText)
	}

	policyRoles := sortedKeys(pol.Roles)
	cols := map[string]*colAgg{}
	get := func(name string) *colAgg {
		a := cols[name]
		if a == nil {
			a = &colAgg{rep: &ColumnReport{Column: name, Reads: map[string]int64{}}, byRole: map[string]*RoleReads{}, users: map[string]bool{}}
			cols[name] = a
		}
		return a
	}
	// used[role][class] is true when a session holding role read a column
	// of class raw or decrypted.
	used := map[string]map[string]bool{}
	// seen[role] counts the reads of sessions holding role.
	seen := map[string]int64{}
	users, roleSets := map[string]bool{}, map[string]bool{}
	other := false
	for i := range cfg.Rows {
		row := &cfg.Rows[i]
		if row.Hour.Before(cfg.Since.UTC().Truncate(time.Hour)) {
			continue
		}
		if r.DataFrom == nil || row.Hour.Before(*r.DataFrom) {
			h := row.Hour
			r.DataFrom = &h
		}
		r.ColumnUses += row.Statements
		users[row.User] = true
		roleSets[row.Roles] = true
		held := heldRoles(pol, row.RoleList())
		if len(held) == 0 {
			held = []string{OtherRoles}
			other = other || row.Reads > 0
		}
		for _, role := range held {
			seen[role] += row.Reads
		}
		name := row.ColumnName()
		rule := pol.Column(rules.ColumnKey{Schema: row.Schema, Table: row.Table, Column: row.Column})
		a := get(name)
		a.rep.Writes += row.WriteTarget
		if row.Reads == 0 {
			continue
		}
		a.rep.Reads[row.Treatment.String()] += row.Reads
		a.rep.Rows += row.Rows
		a.users[row.User] = true
		if row.Treatment != Refused {
			a.rep.LastRead = later(a.rep.LastRead, row.LastRead)
		}
		if row.Treatment == Raw || row.Treatment == Decrypted {
			a.rep.LastRawRead = later(a.rep.LastRawRead, row.LastRead)
			if rule != nil {
				for _, role := range held {
					if used[role] == nil {
						used[role] = map[string]bool{}
					}
					used[role][rule.Class.Name] = true
				}
			}
		}
		for _, role := range held {
			rr := a.byRole[role]
			if rr == nil {
				rr = &RoleReads{Role: role}
				a.byRole[role] = rr
			}
			switch row.Treatment {
			case Raw:
				rr.Raw += row.Reads
			case Masked:
				rr.Masked += row.Reads
			case Decrypted:
				rr.Decrypted += row.Reads
			case Refused:
				rr.Refused += row.Reads
			}
			rr.Rows += row.Rows
		}
	}
	r.Users, r.RoleSets = len(users), len(roleSets)
	r.Roles = policyRoles
	if other {
		r.Roles = append(r.Roles, OtherRoles)
	}
	window := fmt.Sprintf("since %s (%s)", r.Since.Format(time.RFC3339), r.Window)
	if r.DataFrom != nil && r.DataFrom.After(r.Since.Add(time.Hour)) {
		window += fmt.Sprintf("; the ledger has data only from %s", r.DataFrom.Format(time.RFC3339))
	}

	// Classified columns, in name order.
	classified := map[string]*rules.ColumnRule{}
	for k, rule := range pol.Columns {
		name := k.Schema + "." + k.Table + "." + k.Column
		classified[name] = rule
		a := get(name)
		a.rep.Class, a.rep.Encrypted = rule.Class.Name, rule.Encrypted != nil
	}
	finish := func(a *colAgg) *ColumnReport {
		for _, role := range r.Roles {
			rr := RoleReads{Role: role}
			if x := a.byRole[role]; x != nil {
				rr = *x
			}
			a.rep.ByRole = append(a.rep.ByRole, rr)
		}
		a.rep.Users = sortedKeys(a.users)
		return a.rep
	}
	for _, name := range sortedKeys(classified) {
		r.Columns = append(r.Columns, finish(cols[name]))
	}

	var findings []*Finding
	findings = append(findings, unusedGrants(pol, text, used, seen, classified, cols, window)...)
	for _, name := range sortedKeys(classified) {
		if f := unreadColumn(cols[name].rep, window); f != nil {
			findings = append(findings, f)
		}
	}
	for _, name := range sortedKeys(cols) {
		if classified[name] != nil {
			continue
		}
		a := cols[name]
		f := unclassifiedColumn(pol, text, a, cfg.Samples[name], window)
		if f != nil {
			findings = append(findings, f)
			r.Columns = append(r.Columns, finish(a))
		}
	}
	r.Findings = findings
	if text != nil {
		var all []edit
		for _, f := range findings {
			all = append(all, f.edits...)
		}
		all = dedupeEdits(all)
		r.PolicyDiff = text.diff(all)
		r.SuggestedPolicy = text.apply(all)
	}
	return r, nil
}

// heldRoles returns the policy roles among a session's role set, sorted.
func heldRoles(pol *rules.Policy, set []string) []string {
	var out []string
	for _, r := range set {
		if pol.Roles[r] != nil {
			out = append(out, r)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func later(cur *time.Time, t time.Time) *time.Time {
	if t.IsZero() || (cur != nil && !t.After(*cur)) {
		return cur
	}
	t = t.UTC()
	return &t
}

// unusedGrants finds raw and decrypt grants no session holding the role
// used.
func unusedGrants(pol *rules.Policy, text *policyText, used map[string]map[string]bool, seen map[string]int64,
	classified map[string]*rules.ColumnRule, cols map[string]*colAgg, window string) []*Finding {
	classCols := map[string][]string{}
	for name, rule := range classified {
		classCols[rule.Class.Name] = append(classCols[rule.Class.Name], name)
	}
	var out []*Finding
	for _, role := range sortedKeys(pol.Roles) {
		g := pol.Roles[role]
		var unused []string
		for _, class := range sortedKeys(pol.Classes) {
			grant := ""
			switch {
			case g.DecryptAll || g.Decrypt[class]:
				grant = "decrypt"
			case g.RawAll || g.Raw[class]:
				grant = "raw"
			default:
				continue
			}
			names := classCols[class]
			if len(names) == 0 || used[role][class] {
				continue // No column to read (pgveil check reports it), or used.
			}
			slices.Sort(names)
			unused = append(unused, class)
			f := &Finding{
				Kind: FindingUnusedGrant, Subject: role, Class: class,
				Summary: fmt.Sprintf("role %s holds %s on class %s but never read it %s", role, grant, class,
					map[string]string{"raw": "raw", "decrypt": "raw or decrypted"}[grant]),
				Recommendation: fmt.Sprintf("mask class %s for role %s: remove it from the role's %s grant", class, role, grantNames(g, class)),
			}
			if g.RawAll || g.DecryptAll {
				f.Evidence = append(f.Evidence, fmt.Sprintf("the grant comes from %q", allGrant(g)))
			}
			f.Evidence = append(f.Evidence, fmt.Sprintf("columns of class %s: %s", class, strings.Join(names, ", ")))
			var masked, refused int64
			for _, n := range names {
				for _, rr := range cols[n].byRole {
					if rr.Role == role {
						masked += rr.Masked
						refused += rr.Refused
					}
				}
			}
			if seen[role] == 0 {
				f.Evidence = append(f.Evidence, fmt.Sprintf("no session holding %s read any column %s", role, window))
			} else {
				f.Evidence = append(f.Evidence, fmt.Sprintf("sessions holding %s read columns %d times %s; of class %s: 0 raw or decrypted, %d masked, %d refused",
					role, seen[role], window, class, masked, refused))
			}
			if text != nil {
				if e, ok := text.revokeEdit(pol, role, map[string]bool{class: true}); ok {
					f.edits = []edit{e}
					f.Diff = text.diff(f.edits)
				}
			}
			out = append(out, f)
		}
		// The combined diff takes every unused class away at once: give
		// the role's last finding the edit that does, so dedupeEdits keeps it.
		if len(unused) > 1 && text != nil {
			revoke := map[string]bool{}
			for _, c := range unused {
				revoke[c] = true
			}
			if e, ok := text.revokeEdit(pol, role, revoke); ok {
				for _, f := range out[len(out)-len(unused):] {
					f.edits = []edit{e}
				}
			}
		}
	}
	return out
}

func grantNames(g *rules.RoleGrant, class string) string {
	var parts []string
	if g.RawAll || g.Raw[class] {
		parts = append(parts, "raw")
	}
	if g.DecryptAll || g.Decrypt[class] {
		parts = append(parts, "decrypt")
	}
	return strings.Join(parts, " and ")
}

func allGrant(g *rules.RoleGrant) string {
	var parts []string
	if g.RawAll {
		parts = append(parts, "raw: all")
	}
	if g.DecryptAll {
		parts = append(parts, "decrypt: all")
	}
	return strings.Join(parts, ", ")
}

// unreadColumn reports a classified column that nobody read.
func unreadColumn(c *ColumnReport, window string) *Finding {
	if c.Reads["raw"]+c.Reads["masked"]+c.Reads["decrypted"] > 0 {
		return nil
	}
	f := &Finding{
		Kind: FindingUnreadColumn, Subject: c.Column, Class: c.Class,
		Summary:        fmt.Sprintf("classified column %s (class %s) was never read", c.Column, c.Class),
		Evidence:       []string{fmt.Sprintf("0 reads by any role %s", window)},
		Recommendation: "if no purpose needs it, delete the column or shorten its retention; jobs that bypass the proxy are not counted, so confirm with the data owner first",
	}
	if n := c.Reads["refused"]; n > 0 {
		f.Evidence = append(f.Evidence, fmt.Sprintf("%d attempts were refused by the policy", n))
	}
	if c.Writes > 0 {
		f.Evidence = append(f.Evidence, fmt.Sprintf("written by %d statements: the data keeps being collected", c.Writes))
	}
	return f
}

// unclassifiedColumn reports an unclassified column being read whose name
// or sampled values look personal.
func unclassifiedColumn(pol *rules.Policy, text *policyText, a *colAgg, sample SampleResult, window string) *Finding {
	c := a.rep
	reads := c.Reads["raw"] + c.Reads["masked"] + c.Reads["decrypted"]
	if reads == 0 {
		return nil
	}
	parts := strings.SplitN(c.Column, ".", 3)
	byName := CategoryByName(parts[len(parts)-1])
	byValue := categoryNamed(sample.Category)
	cat := byValue
	if cat == nil {
		cat = byName
	}
	if cat == nil {
		return nil
	}
	class, mask := suggestClass(pol, cat)
	f := &Finding{
		Kind: FindingUnclassified, Subject: c.Column, Class: class,
		Summary: fmt.Sprintf("unclassified column %s looks like %s and is read raw", c.Column, cat.Describe),
	}
	if byName != nil {
		f.Evidence = append(f.Evidence, fmt.Sprintf("its name suggests %s", byName.Describe))
	}
	switch {
	case sample.Err != "":
		f.Evidence = append(f.Evidence, "its values could not be sampled: "+sample.Err)
	case byValue != nil:
		f.Evidence = append(f.Evidence, fmt.Sprintf("%d of %d sampled values look like %s (values not shown)", sample.Matched, sample.Sampled, byValue.Describe))
	case sample.Sampled > 0:
		f.Evidence = append(f.Evidence, fmt.Sprintf("of %d sampled values, too few look like personal data to confirm (values not shown)", sample.Sampled))
	}
	var roles []string
	for _, rr := range a.byRole {
		if rr.Total() > 0 {
			roles = append(roles, rr.Role)
		}
	}
	slices.Sort(roles)
	users := fmt.Sprintf("%d users", len(a.users))
	if len(a.users) == 1 {
		users = "1 user"
	}
	f.Evidence = append(f.Evidence, fmt.Sprintf("read %d times by %s (roles: %s), %d rows returned, %s",
		reads, users, strings.Join(roles, ", "), c.Rows, window))
	if pol.Classes[class] != nil {
		f.Recommendation = fmt.Sprintf("classify it as %s", class)
	} else {
		f.Recommendation = fmt.Sprintf("classify it as a new class %s (mask %s)", class, mask)
	}
	if text != nil {
		if edits, ok := text.classifyEdits(pol, c.Column, class, mask); ok {
			f.edits = edits
			f.Diff = text.diff(edits)
		}
	}
	return f
}

// suggestClass picks the policy class fitting cat, or a new one.
func suggestClass(pol *rules.Policy, cat *Category) (class, mask string) {
	for _, name := range cat.Classes {
		if c := pol.Classes[name]; c != nil {
			return name, ""
		}
	}
	return cat.Classes[0], cat.Mask
}

// dedupeEdits drops repeated edits (the same role edit from several
// findings, the same new class for several columns) and keeps inserts at
// one place in a stable order.
func dedupeEdits(edits []edit) []edit {
	seen := map[string]bool{}
	var out []edit
	for _, e := range edits {
		k := fmt.Sprint(e.start, e.end, e.lines)
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, e)
	}
	// Merge inserts at the same place into one edit.
	sort.SliceStable(out, func(i, j int) bool { return out[i].start < out[j].start })
	var merged []edit
	for _, e := range out {
		if n := len(merged); n > 0 && e.end < e.start && merged[n-1].end < merged[n-1].start && merged[n-1].start == e.start {
			merged[n-1].lines = append(slices.Clone(merged[n-1].lines), e.lines...)
			continue
		}
		merged = append(merged, e)
	}
	return merged
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// windowString renders a window length as days or hours ("30 days",
// "36h", "45m").
func windowString(d time.Duration) string {
	switch {
	case d >= 48*time.Hour && d%(24*time.Hour) < time.Minute:
		return fmt.Sprintf("%d days", d/(24*time.Hour))
	case d >= time.Hour:
		return fmt.Sprintf("%dh", (d+30*time.Minute)/time.Hour)
	}
	return fmt.Sprintf("%dm", (d+30*time.Second)/time.Minute)
}
