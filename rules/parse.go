package rules

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// maxIdentBytes is the longest identifier PostgreSQL keeps, NAMEDATALEN-1
// (src/include/pg_config_manual.h); longer names are truncated by the
// server and would never match.
const maxIdentBytes = 63

// PolicyError is one problem in a policy file. Its message names the file,
// the line and the field: policy.yaml:14: roles.support.raw: unknown class "emial".
type PolicyError struct {
	File string
	Line int    // 1-based; 0 when the problem has no line
	Path string // the field, e.g. roles.support.raw; "" for the whole file
	Msg  string
}

func (e *PolicyError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
	}
	if e.Path != "" {
		b.WriteString(": " + e.Path)
	}
	b.WriteString(": " + e.Msg)
	return b.String()
}

// Load reads and parses the policy file at path; see Parse.
func Load(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return Parse(path, data)
}

// Parse parses and validates a policy file (DESIGN.md §3); name is the
// file name used in error messages. Every problem is reported, not only
// the first: the error joins one *PolicyError per problem (errors.Join,
// one per line, in file order). Unknown keys are errors, so a typo cannot
// silently weaken the policy.
func Parse(name string, data []byte) (*Policy, error) {
	ps := &parser{file: name}
	p := ps.parse(data)
	if len(ps.errs) > 0 {
		slices.SortStableFunc(ps.errs, func(a, b *PolicyError) int { return a.Line - b.Line })
		errs := make([]error, len(ps.errs))
		for i, e := range ps.errs {
			errs[i] = e
		}
		return nil, errors.Join(errs...)
	}
	sum := sha256.Sum256(data)
	p.Hash = hex.EncodeToString(sum[:])[:16]
	p.Source = name
	return p, nil
}

type parser struct {
	file string
	errs []*PolicyError
}

func (ps *parser) errorf(n *yaml.Node, path, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	ps.errs = append(ps.errs, &PolicyError{File: ps.file, Line: line, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// yamlLine matches the position prefix of go-yaml's syntax errors.
var yamlLine = regexp.MustCompile(`^yaml: line (\d+): `)

func (ps *parser) parse(data []byte) *Policy {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if err == io.EOF {
			ps.errorf(nil, "", "empty policy (want at least \"version: 1\")")
			return nil
		}
		msg := err.Error()
		line := 0
		if m := yamlLine.FindStringSubmatch(msg); m != nil {
			line, _ = strconv.Atoi(m[1])
			msg = msg[len(m[0]):]
		}
		ps.errs = append(ps.errs, &PolicyError{File: ps.file, Line: line, Msg: strings.TrimPrefix(msg, "yaml: ")})
		return nil
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err != io.EOF {
		ps.errorf(&extra, "", "a policy file holds one YAML document")
		return nil
	}
	root := resolve(&doc)
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			ps.errorf(root, "", "empty policy (want at least \"version: 1\")")
			return nil
		}
		root = resolve(root.Content[0])
	}
	p := &Policy{
		Classes:      map[string]*Class{},
		Columns:      map[ColumnKey]*ColumnRule{},
		Roles:        map[string]*RoleGrant{},
		UnknownRoles: "mask",
	}
	var classes, columns, roles, filters, version *yaml.Node
	ps.mapping(root, "", func(key string, k, v *yaml.Node) bool {
		switch key {
		case "version":
			version = v
		case "classes":
			classes = v
		case "columns":
			columns = v
		case "roles":
			roles = v
		case "row_filters":
			filters = v
		case "unknown_roles":
			if s, ok := ps.scalar(v, key); ok {
				if s != "mask" && s != "reject" {
					ps.errorf(v, key, "want mask or reject, got %q", s)
				}
				p.UnknownRoles = s
			}
		default:
			return false
		}
		return true
	}, "version", "classes", "columns", "roles", "row_filters", "unknown_roles")
	if root.Kind != yaml.MappingNode {
		return p
	}
	switch {
	case version == nil:
		ps.errorf(root, "version", "missing (want version: 1)")
	case version.Kind != yaml.ScalarNode || version.Tag != "!!int":
		ps.errorf(version, "version", "want the number 1")
	case version.Value != "1":
		ps.errorf(version, "version", "unsupported version %s (this pgveil reads version 1)", version.Value)
	default:
		p.Version = 1
	}
	ps.classes(p, classes)
	ps.columns(p, columns)
	ps.roles(p, roles)
	ps.rowFilters(p, filters)
	return p
}

// resolve follows YAML aliases.
func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

// isNull reports whether n is absent or an empty/null value.
func isNull(n *yaml.Node) bool {
	return n == nil || n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

// mapping walks the mapping n at path, calling field for each key; field
// returns false for a key it does not know. Duplicate and unknown keys
// are errors; known lists the keys for the message. A null n is an empty
// mapping.
func (ps *parser) mapping(n *yaml.Node, path string, field func(key string, k, v *yaml.Node) bool, known ...string) {
	n = resolve(n)
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		ps.errorf(n, path, "want a mapping")
		return
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			ps.errorf(k, path, "keys must be plain strings")
			continue
		}
		key := k.Value
		sub := join(path, key)
		if line, dup := seen[key]; dup {
			ps.errorf(k, sub, "given twice (first at line %d)", line)
			continue
		}
		seen[key] = k.Line
		if !field(key, k, v) {
			if len(known) > 0 {
				ps.errorf(k, sub, "unknown key (want %s)", strings.Join(known, ", "))
			} else {
				ps.errorf(k, sub, "unknown key")
			}
		}
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// scalar returns the text of a scalar node; other nodes are an error.
func (ps *parser) scalar(n *yaml.Node, path string) (string, bool) {
	n = resolve(n)
	if n == nil || n.Kind != yaml.ScalarNode {
		ps.errorf(n, path, "want a string")
		return "", false
	}
	return n.Value, true
}

// className matches class names: they appear in grant keys and role lists.
var className = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]*$`)

func (ps *parser) classes(p *Policy, n *yaml.Node) {
	ps.mapping(n, "classes", func(name string, k, v *yaml.Node) bool {
		path := join("classes", name)
		switch {
		case !className.MatchString(name):
			ps.errorf(k, path, "a class name is letters, digits, '_' and '-', starting with a letter or '_'")
			return true
		case name == "all":
			ps.errorf(k, path, `"all" is reserved (raw: all, decrypt: all)`)
			return true
		}
		c := &Class{Name: name}
		var mask *yaml.Node
		if v := resolve(v); v == nil || v.Kind != yaml.MappingNode {
			ps.errorf(v, path, "want a mapping such as { mask: email }")
			return true
		}
		ps.mapping(v, path, func(key string, _, v *yaml.Node) bool {
			if key != "mask" {
				return false
			}
			mask = v
			return true
		}, "mask")
		if mask == nil {
			ps.errorf(v, join(path, "mask"), "missing")
			return true
		}
		if s, ok := ps.scalar(mask, join(path, "mask")); ok {
			m, err := ParseMask(s)
			if err != nil {
				ps.errorf(mask, join(path, "mask"), "%v", err)
			}
			c.Mask = m
		}
		p.Classes[name] = c
		return true
	})
}

func (ps *parser) columns(p *Policy, n *yaml.Node) {
	lines := map[ColumnKey]int{}
	ps.mapping(n, "columns", func(name string, k, v *yaml.Node) bool {
		path := join("columns", name)
		parts, err := parseQualified(name, 3)
		if err != nil {
			ps.errorf(k, path, "%v", err)
			return true
		}
		key := ColumnKey{Schema: parts[0], Table: parts[1], Column: parts[2]}
		if line, dup := lines[key]; dup {
			ps.errorf(k, path, "column already classified at line %d", line)
			return true
		}
		lines[key] = k.Line
		rule := &ColumnRule{Key: key}
		var class *yaml.Node
		if v := resolve(v); v != nil && v.Kind == yaml.MappingNode {
			ps.mapping(v, path, func(key string, _, v *yaml.Node) bool {
				switch key {
				case "class":
					class = v
				case "encrypted":
					rule.Encrypted = ps.encryption(v, join(path, "encrypted"))
				default:
					return false
				}
				return true
			}, "class", "encrypted")
			if class == nil {
				ps.errorf(v, join(path, "class"), "missing")
				return true
			}
			path = join(path, "class")
		} else {
			class = v
		}
		if s, ok := ps.scalar(class, path); ok {
			if rule.Class = p.Classes[s]; rule.Class == nil {
				ps.errorf(class, path, "unknown class %q", s)
			}
		}
		p.Columns[key] = rule
		return true
	})
}

func (ps *parser) encryption(n *yaml.Node, path string) *Encryption {
	e := &Encryption{Mode: "transit"}
	sawKey := false
	n = resolve(n)
	if n == nil || n.Kind != yaml.MappingNode {
		ps.errorf(n, path, "want a mapping such as { key: payments-card }")
		return e
	}
	ps.mapping(n, path, func(key string, _, v *yaml.Node) bool {
		sub := join(path, key)
		switch key {
		case "key":
			sawKey = true
			if s, ok := ps.scalar(v, sub); ok {
				if strings.TrimSpace(s) == "" {
					ps.errorf(v, sub, "want a key name")
				}
				e.Key = s
			}
		case "mode":
			if s, ok := ps.scalar(v, sub); ok {
				if s != "transit" && s != "envelope" {
					ps.errorf(v, sub, "want transit or envelope, got %q", s)
				}
				e.Mode = s
			}
		case "searchable":
			if v := resolve(v); v.Kind != yaml.ScalarNode || v.Tag != "!!bool" {
				ps.errorf(v, sub, "want true or false")
			} else {
				e.Searchable = v.Value == "true"
			}
		default:
			return false
		}
		return true
	}, "key", "mode", "searchable")
	if !sawKey {
		ps.errorf(n, join(path, "key"), "missing")
	}
	return e
}

func (ps *parser) roles(p *Policy, n *yaml.Node) {
	ps.mapping(n, "roles", func(name string, k, v *yaml.Node) bool {
		path := join("roles", name)
		if err := checkRoleName(name); err != nil {
			ps.errorf(k, path, "%v", err)
			return true
		}
		g := &RoleGrant{Name: name, Raw: map[string]bool{}, Decrypt: map[string]bool{}}
		ps.mapping(v, path, func(key string, _, v *yaml.Node) bool {
			switch key {
			case "raw":
				g.RawAll = ps.classList(p, v, join(path, key), g.Raw)
			case "decrypt":
				g.DecryptAll = ps.classList(p, v, join(path, key), g.Decrypt)
			default:
				return false
			}
			return true
		}, "raw", "decrypt")
		p.Roles[name] = g
		return true
	})
}

// classList reads "all" (returning true) or a list of class names into set.
func (ps *parser) classList(p *Policy, n *yaml.Node, path string, set map[string]bool) bool {
	n = resolve(n)
	switch {
	case isNull(n):
		return false
	case n.Kind == yaml.ScalarNode && n.Value == "all":
		return true
	case n.Kind == yaml.ScalarNode:
		ps.errorf(n, path, "want all or a list of classes, e.g. [%s]", n.Value)
		return false
	case n.Kind != yaml.SequenceNode:
		ps.errorf(n, path, "want all or a list of classes")
		return false
	}
	for _, item := range n.Content {
		s, ok := ps.scalar(item, path)
		switch {
		case !ok:
		case s == "all":
			ps.errorf(item, path, `write "all" alone (%s: all), not in a list`, path[strings.LastIndexByte(path, '.')+1:])
		case p.Classes[s] == nil:
			ps.errorf(item, path, "unknown class %q", s)
		default:
			set[s] = true
		}
	}
	return false
}

func checkRoleName(s string) error {
	switch {
	case s == "":
		return errors.New("empty role name")
	case len(s) > maxIdentBytes:
		return fmt.Errorf("role names are at most %d bytes", maxIdentBytes)
	case strings.IndexByte(s, 0) >= 0 || !utf8.ValidString(s):
		return errors.New("role names are valid UTF-8 without NUL")
	}
	return nil
}

func (ps *parser) rowFilters(p *Policy, n *yaml.Node) {
	n = resolve(n)
	if isNull(n) {
		return
	}
	if n.Kind != yaml.SequenceNode {
		ps.errorf(n, "row_filters", "want a list of { table, roles, where }")
		return
	}
	for i, item := range n.Content {
		path := fmt.Sprintf("row_filters[%d]", i)
		var f RowFilter
		var table, roles, where *yaml.Node
		item = resolve(item)
		if item.Kind != yaml.MappingNode {
			ps.errorf(item, path, "want a mapping { table, roles, where }")
			continue
		}
		ps.mapping(item, path, func(key string, _, v *yaml.Node) bool {
			switch key {
			case "table":
				table = v
			case "roles":
				roles = v
			case "where":
				where = v
			default:
				return false
			}
			return true
		}, "table", "roles", "where")
		for _, req := range []struct {
			name string
			n    *yaml.Node
		}{{"table", table}, {"roles", roles}, {"where", where}} {
			if req.n == nil {
				ps.errorf(item, join(path, req.name), "missing")
			}
		}
		if table != nil {
			if s, ok := ps.scalar(table, join(path, "table")); ok {
				if parts, err := parseQualified(s, 2); err != nil {
					ps.errorf(table, join(path, "table"), "%v", err)
				} else {
					f.Schema, f.Table = parts[0], parts[1]
				}
			}
		}
		if roles = resolve(roles); roles != nil {
			if roles.Kind != yaml.SequenceNode || len(roles.Content) == 0 {
				ps.errorf(roles, join(path, "roles"), "want a non-empty list of roles")
			} else {
				for _, r := range roles.Content {
					if s, ok := ps.scalar(r, join(path, "roles")); ok {
						if err := checkRoleName(s); err != nil {
							ps.errorf(r, join(path, "roles"), "%v", err)
						}
						f.Roles = append(f.Roles, s)
					}
				}
			}
		}
		if where != nil {
			if s, ok := ps.scalar(where, join(path, "where")); ok {
				if strings.TrimSpace(s) == "" {
					ps.errorf(where, join(path, "where"), "empty condition")
				}
				f.Where = s
			}
		}
		p.RowFilters = append(p.RowFilters, f)
	}
}

// parseQualified splits a dotted name of want parts (schema.table or
// schema.table.column). A part is either a double-quoted identifier, with
// "" for a quote, kept as written (so it may hold dots or capitals), or a
// plain identifier: letters, digits, '_' and '$', not starting with a
// digit or '$', in lower case, because PostgreSQL folds unquoted names to
// lower case and a capital here would never match.
func parseQualified(s string, want int) ([]string, error) {
	what := "schema.table"
	if want == 3 {
		what = "schema.table.column"
	}
	var parts []string
	i := 0
	for {
		var part string
		if i < len(s) && s[i] == '"' {
			var ok bool
			if part, i, ok = ScanQuotedIdent(s, i); !ok {
				return nil, fmt.Errorf("unterminated quoted identifier in %q", s)
			}
			if part == "" {
				return nil, fmt.Errorf("empty quoted identifier in %q", s)
			}
		} else {
			j := i
			for j < len(s) && s[j] != '.' {
				j++
			}
			part, i = s[i:j], j
			if err := checkPlainIdent(part); err != nil {
				return nil, err
			}
		}
		if len(part) > maxIdentBytes {
			return nil, fmt.Errorf("identifier %q is longer than %d bytes", part, maxIdentBytes)
		}
		parts = append(parts, part)
		if i == len(s) {
			break
		}
		if s[i] != '.' {
			return nil, fmt.Errorf("want %s: unexpected %q after a quoted identifier", what, s[i])
		}
		i++
	}
	if len(parts) != want {
		return nil, fmt.Errorf("want %s, got %d part(s) (quote a name that contains dots)", what, len(parts))
	}
	return parts, nil
}

// ScanQuotedIdent reads the double-quoted identifier that starts at s[i]
// ("" stands for a quote) and returns it and the index after its closing
// quote; ok is false when it is not terminated.
func ScanQuotedIdent(s string, i int) (ident string, next int, ok bool) {
	var b strings.Builder
	for j := i + 1; j < len(s); j++ {
		if s[j] != '"' {
			b.WriteByte(s[j])
			continue
		}
		if j+1 < len(s) && s[j+1] == '"' {
			b.WriteByte('"')
			j++
			continue
		}
		return b.String(), j + 1, true
	}
	return "", len(s), false
}

func checkPlainIdent(s string) error {
	if s == "" {
		return errors.New("empty name")
	}
	for i, r := range s {
		switch {
		case r >= 'A' && r <= 'Z':
			return fmt.Errorf("%q has capitals, which PostgreSQL folds to lower case unless quoted: write %s, or \"%s\" for a case-sensitive name", s, strings.ToLower(s), s)
		case r >= 'a' && r <= 'z', r == '_', r >= utf8.RuneSelf:
		case (r >= '0' && r <= '9' || r == '$') && i > 0:
		default:
			return fmt.Errorf("%q is not a plain identifier (quote it)", s)
		}
	}
	return nil
}
