package rewrite

import (
	"fmt"
	"strings"
)

// renderUse renders a ColumnUse as "schema.table.column clauses treatment".
func renderUse(u ColumnUse) string {
	return fmt.Sprintf("%s.%s.%s %s %s", u.Column.Schema, u.Column.Table, u.Column.Column, u.Clauses, u.Treatment)
}

// renderOutput renders an Output as the source column (or "-") and the
// transform when there is one.
func renderOutput(o Output) string {
	if o.Source == nil {
		return "-"
	}
	s := o.Source.Schema + "." + o.Source.Table + "." + o.Source.Column
	if o.Transform != TransformNone {
		s += " " + o.Transform.String()
	}
	return s
}

// renderFacts renders the facts of every statement of a plan.
func renderFacts(p *Plan) string {
	var b strings.Builder
	for _, st := range p.Statements {
		fmt.Fprintf(&b, "  %s\n", st.Kind)
		for _, u := range st.Uses {
			fmt.Fprintf(&b, "    use %s\n", renderUse(u))
		}
		if !st.OutputsKnown {
			b.WriteString("    outputs unknown\n")
			continue
		}
		var outs []string
		for _, o := range st.Outputs {
			outs = append(outs, renderOutput(o))
		}
		fmt.Fprintf(&b, "    outputs [%s]\n", strings.Join(outs, ", "))
	}
	return b.String()
}
