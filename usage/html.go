package usage

import (
	"fmt"
	"html/template"
	"io"
	"math"
	"strings"
)

// writeHTML renders the report as one self-contained page: inline CSS and
// SVG, no scripts, no network.
func writeHTML(w io.Writer, r *Report) error {
	var maxReads int64
	for _, c := range r.Columns {
		for _, rr := range c.ByRole {
			maxReads = max(maxReads, rr.Total())
		}
	}
	counts := map[string]int{}
	for _, f := range r.Findings {
		counts[f.Kind]++
	}
	data := struct {
		*Report
		Max    int64
		Counts map[string]int
	}{r, maxReads, counts}
	return reportTemplate.Execute(w, data)
}

// heat returns the background and text colour of a heatmap cell: a log
// scale from pale to deep blue; grey for no reads.
func heat(n, maxN int64) template.CSS {
	if n == 0 {
		return "background:#f4f5f7;color:#b0b5bd"
	}
	f := 1.0
	if maxN > 1 {
		f = math.Log1p(float64(n)) / math.Log1p(float64(maxN))
	}
	light := 95 - 57*f
	fg := "#12263f"
	if light < 62 {
		fg = "#ffffff"
	}
	return template.CSS(fmt.Sprintf("background:hsl(212,72%%,%.0f%%);color:%s", light, fg))
}

// diffLines splits a diff into lines with a CSS class each.
func diffLines(d string) []struct{ Class, Text string } {
	var out []struct{ Class, Text string }
	for _, l := range strings.Split(strings.TrimSuffix(d, "\n"), "\n") {
		c := "ctx"
		switch {
		case strings.HasPrefix(l, "+++"), strings.HasPrefix(l, "---"):
			c = "hdr"
		case strings.HasPrefix(l, "@@"):
			c = "hunk"
		case strings.HasPrefix(l, "+"):
			c = "add"
		case strings.HasPrefix(l, "-"):
			c = "del"
		}
		out = append(out, struct{ Class, Text string }{c, l})
	}
	return out
}

var reportTemplate = template.Must(template.New("report").Funcs(template.FuncMap{
	"heat":      heat,
	"diffLines": diffLines,
	"kindTitle": kindTitle,
	"time":      fmtTime,
	"short":     func(t interface{ Format(string) string }) string { return t.Format("2006-01-02 15:04Z") },
	"add":       func(a, b int) int { return a + b },
}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pgveil usage report — {{.Policy}}</title>
<style>
:root { --ink:#1d2733; --muted:#5f6b7a; --line:#e3e7ec; --raw:#d9480f; --dec:#7048e8; --mask:#2b8a3e; --ref:#868e96; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif; color:var(--ink); background:#f7f8fa; }
header { background:linear-gradient(135deg,#12263f,#1f4e79); color:#fff; padding:28px 40px 64px; }
header h1 { margin:0 0 4px; font-size:24px; font-weight:650; letter-spacing:.2px; }
header p { margin:0 auto; opacity:.85; max-width:1120px; }
header h1, header p { max-width:1120px; margin-left:auto; margin-right:auto; }
main { max-width:1200px; margin:0 auto; padding:24px 40px 48px; }
.cards { display:flex; gap:14px; flex-wrap:wrap; margin:-44px 0 24px; }
.card { background:#fff; border-radius:10px; box-shadow:0 1px 3px rgba(16,24,40,.12); padding:14px 18px; min-width:170px; flex:1; }
.card b { display:block; font-size:26px; font-weight:650; }
.card span { color:var(--muted); font-size:13px; }
section { background:#fff; border-radius:10px; box-shadow:0 1px 3px rgba(16,24,40,.10); padding:20px 24px; margin-bottom:24px; }
h2 { font-size:18px; margin:0 0 6px; }
.sub { color:var(--muted); margin:0 0 16px; font-size:13.5px; }
table.heatmap { border-collapse:separate; border-spacing:3px; width:100%; }
.heatmap th { font-size:12.5px; font-weight:600; color:var(--muted); text-align:left; padding:4px 8px; white-space:nowrap; }
.heatmap thead th.role { text-align:center; }
.heatmap td { padding:6px 8px; border-radius:6px; text-align:center; min-width:86px; font-variant-numeric:tabular-nums; }
.heatmap td.col { text-align:left; background:none; font-family:ui-monospace,"DejaVu Sans Mono",monospace; font-size:13px; white-space:nowrap; }
.heatmap td.cls { text-align:left; background:none; white-space:nowrap; }
.n { font-weight:650; font-size:14px; display:block; }
.marks { display:inline-flex; gap:3px; margin-top:2px; }
.m { display:inline-block; min-width:17px; padding:0 4px; border-radius:4px; font-size:10.5px; font-weight:700; line-height:16px; color:#fff; }
.m.raw { background:var(--raw); } .m.decrypted { background:var(--dec); } .m.masked { background:var(--mask); } .m.refused { background:var(--ref); }
.tag { display:inline-block; padding:1px 8px; border-radius:999px; font-size:12px; background:#edf2ff; color:#364fc7; }
.tag.none { background:#fff4e6; color:#c2410c; }
.legend { display:flex; align-items:center; gap:18px; flex-wrap:wrap; color:var(--muted); font-size:12.5px; margin-top:14px; }
.legend .m { margin-right:4px; }
.finding { border:1px solid var(--line); border-left:5px solid #adb5bd; border-radius:8px; padding:14px 18px; margin:14px 0; }
.finding.unused_grant { border-left-color:var(--raw); }
.finding.unread_column { border-left-color:#1c7ed6; }
.finding.unclassified_personal { border-left-color:#e8590c; }
.finding h3 { margin:0 0 6px; font-size:15.5px; }
.kind { font-size:11.5px; text-transform:uppercase; letter-spacing:.6px; font-weight:700; color:var(--muted); }
.finding ul { margin:6px 0 8px 18px; padding:0; color:#334155; }
.rec { margin:6px 0; }
.rec b { color:#0b7285; }
pre.diff { background:#0f1720; color:#d8dee9; border-radius:8px; padding:12px 14px; overflow-x:auto; font:12.5px/1.45 ui-monospace,"DejaVu Sans Mono",monospace; margin:8px 0 0; }
pre.diff .add { color:#8ce99a; } pre.diff .del { color:#ffa8a8; } pre.diff .hunk { color:#74c0fc; } pre.diff .hdr { color:#adb5bd; }
.empty { color:var(--muted); font-style:italic; }
footer { color:var(--muted); font-size:12.5px; text-align:center; padding-bottom:32px; }
</style>
</head>
<body>
<header>
<h1>Data-minimisation review</h1>
<p>Policy <b>{{.Policy}}</b> ({{.PolicyHash}}) · window {{.Window}} since {{short .Since}}{{with .DataFrom}} · ledger data from {{short .}}{{end}}</p>
</header>
<main>
<div class="cards">
<div class="card"><b>{{.ColumnUses}}</b><span>column uses recorded</span></div>
<div class="card"><b>{{.Users}}</b><span>login users in {{.RoleSets}} role sets</span></div>
<div class="card"><b>{{index .Counts "unused_grant"}}</b><span>grants never used</span></div>
<div class="card"><b>{{index .Counts "unread_column"}}</b><span>classified columns never read</span></div>
<div class="card"><b>{{index .Counts "unclassified_personal"}}</b><span>unclassified personal columns</span></div>
</div>

<section>
<h2>Who reads what</h2>
<p class="sub">Reads per column and policy role in the window. A statement counts for every policy role its session held. Colour: number of reads (log scale); marks: how the values were seen.</p>
<table class="heatmap" id="heatmap">
<thead><tr><th>Column</th><th>Class</th>{{range .Roles}}<th class="role">{{.}}</th>{{end}}</tr></thead>
<tbody>
{{range $c := .Columns}}<tr>
<td class="col">{{$c.Column}}</td>
<td class="cls">{{if $c.Class}}<span class="tag">{{$c.Class}}{{if $c.Encrypted}} · encrypted{{end}}</span>{{else}}<span class="tag none">unclassified</span>{{end}}</td>
{{range $c.ByRole}}<td style="{{heat .Total $.Max}}" title="{{.Role}}: {{.Raw}} raw, {{.Masked}} masked, {{.Decrypted}} decrypted, {{.Refused}} refused; {{.Rows}} rows">{{if .Total}}<span class="n">{{.Total}}</span><span class="marks">{{if .Raw}}<span class="m raw">R</span>{{end}}{{if .Decrypted}}<span class="m decrypted">D</span>{{end}}{{if .Masked}}<span class="m masked">M</span>{{end}}{{if .Refused}}<span class="m refused">✕</span>{{end}}</span>{{else}}·{{end}}</td>{{end}}
</tr>
{{end}}</tbody>
</table>
<div class="legend">
<span><span class="m raw">R</span>raw</span><span><span class="m decrypted">D</span>decrypted</span><span><span class="m masked">M</span>masked</span><span><span class="m refused">✕</span>refused</span>
<span>fewer
<svg width="160" height="12" viewBox="0 0 160 12" role="img" aria-label="colour scale" style="vertical-align:middle">
<defs><linearGradient id="scale"><stop offset="0" stop-color="hsl(212,72%,95%)"/><stop offset="1" stop-color="hsl(212,72%,38%)"/></linearGradient></defs>
<rect width="160" height="12" rx="3" fill="url(#scale)"/></svg>
more reads (max {{.Max}})</span>
</div>
</section>

<section id="findings">
<h2>Findings</h2>
<p class="sub">Each finding comes with its evidence and, where the policy file allows, the change that acts on it.</p>
{{range $i, $f := .Findings}}<div class="finding {{$f.Kind}}">
<div class="kind">{{add $i 1}} · {{kindTitle $f.Kind}}</div>
<h3>{{$f.Summary}}</h3>
<ul>{{range $f.Evidence}}<li>{{.}}</li>{{end}}</ul>
<p class="rec"><b>Recommendation:</b> {{$f.Recommendation}}</p>
{{with $f.Diff}}<pre class="diff">{{range diffLines .}}<span class="{{.Class}}">{{.Text}}</span>
{{end}}</pre>{{end}}
</div>
{{else}}<p class="empty">No findings: every grant was used and every classified column was read.</p>
{{end}}
</section>

{{with .PolicyDiff}}<section id="policy-diff">
<h2>Suggested policy change</h2>
<p class="sub">All findings at once; apply with <code>git apply</code> or <code>patch -p1</code>, then review with <code>pgveil check</code>.</p>
<pre class="diff">{{range diffLines .}}<span class="{{.Class}}">{{.Text}}</span>
{{end}}</pre>
</section>{{end}}
</main>
<footer>Generated by pgveil report at {{short .Generated}}. Counts come from the usage ledger; statements that bypass the proxy are not counted.</footer>
</body>
</html>
`))
