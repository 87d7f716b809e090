package usage

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/pgveil/pgveil/rules"
)

// diffContext is the number of unchanged lines around each change in the
// suggested policy diffs.
const diffContext = 2

// edit replaces old lines [start, end] (1-based, inclusive) of the policy
// file with lines; end == start-1 inserts before start.
type edit struct {
	start, end int
	lines      []string
}

// policyText is the policy file's text with the positions report edits
// need.
type policyText struct {
	name  string
	lines []string
	// roles maps a role to the lines of its entry under roles:.
	roles map[string]lineRange
	// columnsEnd and classesEnd are the last lines of the columns: and
	// classes: mappings, and their key indentation; 0 when the mapping is
	// missing or in flow style (then no diff is offered).
	columnsEnd, columnsIndent int
	classesEnd, classesIndent int
}

type lineRange struct{ start, end, indent int }

// parsePolicyText finds the report's edit positions in a policy file. It
// returns nil when the text does not parse (the policy itself was already
// validated by rules, so this only happens when the file changed).
func parsePolicyText(name string, data []byte) *policyText {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil || len(doc.Content) == 0 {
		return nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil
	}
	text := strings.TrimSuffix(string(data), "\n")
	p := &policyText{name: name, lines: strings.Split(text, "\n"), roles: map[string]lineRange{}}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		block := v.Kind == yaml.MappingNode && v.Style&yaml.FlowStyle == 0 && len(v.Content) > 0
		switch k.Value {
		case "roles":
			if v.Kind != yaml.MappingNode {
				continue
			}
			for j := 0; j+1 < len(v.Content); j += 2 {
				rk, rv := v.Content[j], v.Content[j+1]
				if v.Style&yaml.FlowStyle != 0 {
					continue // A one-line roles: {...} is not edited.
				}
				p.roles[rk.Value] = lineRange{rk.Line, max(rk.Line, lastLine(rv)), rk.Column - 1}
			}
		case "columns":
			if block {
				p.columnsEnd, p.columnsIndent = lastLine(v), v.Content[0].Column-1
			}
		case "classes":
			if block {
				p.classesEnd, p.classesIndent = lastLine(v), v.Content[0].Column-1
			}
		}
	}
	return p
}

// lastLine returns the last source line of n and its descendants.
func lastLine(n *yaml.Node) int {
	l := n.Line
	if n.Kind == yaml.ScalarNode && n.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
		l += strings.Count(strings.TrimSuffix(n.Value, "\n"), "\n") + 1
	}
	for _, c := range n.Content {
		l = max(l, lastLine(c))
	}
	return l
}

// plainYAML matches keys and scalars that need no quoting.
var plainYAML = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]*$`)

func yamlScalar(s string) string {
	if plainYAML.MatchString(s) && s != "true" && s != "false" && s != "null" && s != "yes" && s != "no" {
		return s
	}
	return strconv.Quote(s)
}

// roleLine renders a role's grants in flow style on one line.
func roleLine(indent int, role string, raw, decrypt []string) string {
	var parts []string
	if len(raw) > 0 {
		parts = append(parts, "raw: ["+strings.Join(quoteAll(raw), ", ")+"]")
	}
	if len(decrypt) > 0 {
		parts = append(parts, "decrypt: ["+strings.Join(quoteAll(decrypt), ", ")+"]")
	}
	body := "{}"
	if len(parts) > 0 {
		body = "{ " + strings.Join(parts, ", ") + " }"
	}
	return strings.Repeat(" ", indent) + yamlScalar(role) + ": " + body
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = yamlScalar(s)
	}
	return out
}

// revokeEdit returns the edit that takes classes away from role's raw
// and decrypt grants, or false when the file cannot be edited safely.
func (p *policyText) revokeEdit(pol *rules.Policy, role string, revoke map[string]bool) (edit, bool) {
	lr, ok := p.roles[role]
	g := pol.Roles[role]
	if !ok || g == nil {
		return edit{}, false
	}
	keep := func(all bool, set map[string]bool) []string {
		var out []string
		for name := range pol.Classes {
			if (all || set[name]) && !revoke[name] {
				out = append(out, name)
			}
		}
		slices.Sort(out)
		return out
	}
	raw, decrypt := keep(g.RawAll, g.Raw), keep(g.DecryptAll, g.Decrypt)
	// A class kept for decrypt need not be listed under raw as well.
	raw = slices.DeleteFunc(raw, func(c string) bool { return slices.Contains(decrypt, c) })
	// Keep "all" where nothing was taken away from it.
	line := roleLine(lr.indent, role, raw, decrypt)
	if g.RawAll && len(raw) == len(pol.Classes) {
		line = strings.Replace(line, "raw: ["+strings.Join(quoteAll(raw), ", ")+"]", "raw: all", 1)
	}
	if g.DecryptAll && len(decrypt) == len(pol.Classes) {
		line = strings.Replace(line, "decrypt: ["+strings.Join(quoteAll(decrypt), ", ")+"]", "decrypt: all", 1)
	}
	return edit{start: lr.start, end: lr.end, lines: []string{line}}, true
}

// classifyEdits returns the edits that classify column as class, adding
// the class with mask when the policy lacks it.
func (p *policyText) classifyEdits(pol *rules.Policy, column, class, mask string) ([]edit, bool) {
	if p.columnsEnd == 0 || (pol.Classes[class] == nil && p.classesEnd == 0) {
		return nil, false
	}
	var out []edit
	if pol.Classes[class] == nil {
		out = append(out, edit{start: p.classesEnd + 1, end: p.classesEnd,
			lines: []string{strings.Repeat(" ", p.classesIndent) + yamlScalar(class) + ": { mask: " + strconv.Quote(mask) + " }"}})
	}
	out = append(out, edit{start: p.columnsEnd + 1, end: p.columnsEnd,
		lines: []string{strings.Repeat(" ", p.columnsIndent) + yamlColumnKey(column) + ": " + yamlScalar(class)}})
	return out, true
}

// yamlColumnKey renders schema.table.column as a policy key, double-quoting
// identifiers that PostgreSQL would fold or reject unquoted.
func yamlColumnKey(column string) string {
	parts := strings.SplitN(column, ".", 3)
	quoted := false
	for i, s := range parts {
		if !regexp.MustCompile(`^[a-z_][a-z0-9_$]*$`).MatchString(s) {
			parts[i] = `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
			quoted = true
		}
	}
	key := strings.Join(parts, ".")
	if quoted {
		return "'" + strings.ReplaceAll(key, "'", "''") + "'"
	}
	return key
}

// apply returns the policy text with edits applied.
func (p *policyText) apply(edits []edit) string {
	edits = sortEdits(edits)
	var out []string
	next := 1
	for _, e := range edits {
		out = append(out, p.lines[next-1:e.start-1]...)
		out = append(out, e.lines...)
		next = e.end + 1
	}
	out = append(out, p.lines[next-1:]...)
	return strings.Join(out, "\n") + "\n"
}

func sortEdits(edits []edit) []edit {
	edits = slices.Clone(edits)
	slices.SortStableFunc(edits, func(a, b edit) int { return a.start - b.start })
	return edits
}

// diff renders edits as a unified diff (a/NAME, b/NAME) that git apply and
// patch -p1 accept. Edits must not overlap.
func (p *policyText) diff(edits []edit) string {
	if len(edits) == 0 {
		return ""
	}
	edits = sortEdits(edits)
	var b strings.Builder
	fmt.Fprintf(&b, "--- a/%s\n+++ b/%s\n", p.name, p.name)
	shift := 0 // new line number minus old line number so far
	for i := 0; i < len(edits); {
		// Group edits whose context would touch.
		j := i + 1
		for j < len(edits) && edits[j].start-edits[j-1].end-1 <= 2*diffContext {
			j++
		}
		group := edits[i:j]
		from := max(1, group[0].start-diffContext)
		to := min(len(p.lines), group[len(group)-1].end+diffContext)
		var body []string
		oldN, newN := 0, 0
		line := from
		for _, e := range group {
			for ; line < e.start; line++ {
				body = append(body, " "+p.lines[line-1])
				oldN++
				newN++
			}
			for ; line <= e.end; line++ {
				body = append(body, "-"+p.lines[line-1])
				oldN++
			}
			for _, l := range e.lines {
				body = append(body, "+"+l)
				newN++
			}
		}
		for ; line <= to; line++ {
			body = append(body, " "+p.lines[line-1])
			oldN++
			newN++
		}
		oldStart, newStart := from, from+shift
		if oldN == 0 {
			oldStart--
		}
		if newN == 0 {
			newStart--
		}
		fmt.Fprintf(&b, "@@ -%d,%d +%d,%d @@\n", oldStart, oldN, newStart, newN)
		for _, l := range body {
			b.WriteString(l + "\n")
		}
		shift += newN - oldN
		i = j
	}
	return b.String()
}
