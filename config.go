package main

import (
	"os"
	"strings"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// readConfigFile reads a --config file: a YAML mapping from setting names
// (the flag names, e.g. max-client-conn) to values. A list is accepted for
// settings that take several values (admin-users). It returns the values
// as flag strings, with the line of each; an unknown setting or a value of the wrong shape is an
// error naming the file and line.
func readConfigFile(path string, fs *pflag.FlagSet) (values map[string]string, lines map[string]int, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, usagef("cannot read --config: %v", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, nil, usagef("%s: %v", path, err)
	}
	out := map[string]string{}
	lines = map[string]int{}
	if len(doc.Content) == 0 {
		return out, lines, nil // an empty file sets nothing
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, nil, usagef("%s:%d: want a mapping of settings (listen: ..., upstream: ...)", path, root.Line)
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		name := k.Value
		f := fs.Lookup(name)
		if f == nil || name == "config" || name == "help" {
			return nil, nil, usagef("%s:%d: unknown setting %q (the settings are the flags of pgveil %s --help)", path, k.Line, name, fs.Name())
		}
		if _, dup := out[name]; dup {
			return nil, nil, usagef("%s:%d: setting %q given twice", path, k.Line, name)
		}
		switch v.Kind {
		case yaml.ScalarNode:
			out[name] = v.Value
		case yaml.SequenceNode:
			if f.Value.Type() != "stringSlice" {
				return nil, nil, usagef("%s:%d: %s takes one value, not a list", path, v.Line, name)
			}
			var items []string
			for _, it := range v.Content {
				if it.Kind != yaml.ScalarNode {
					return nil, nil, usagef("%s:%d: %s: want a list of plain values", path, it.Line, name)
				}
				items = append(items, it.Value)
			}
			out[name] = strings.Join(items, ",")
		default:
			return nil, nil, usagef("%s:%d: %s: want a plain value", path, v.Line, name)
		}
		lines[name] = v.Line
	}
	return out, lines, nil
}

// configUsage is appended to the --help of commands with --config.
const configUsage = `
Every setting can also be given in the environment as PGVEIL_<SETTING>
(upper case, dashes as underscores: PGVEIL_MAX_CLIENT_CONN) or in the
--config YAML file under its flag name (max-client-conn: 100). Flags win
over the environment, which wins over the file.
`
