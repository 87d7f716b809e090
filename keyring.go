package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/pflag"

	"github.com/pgveil/pgveil/vaultkms"
)

const keyringUsage = `Usage:
  pgveil keyring init PATH [--key NAME ...]   create a local keyring (mode 0600), or add keys to one
  pgveil keyring rotate PATH KEY              add a new version of KEY; older versions still decrypt
`

// runKeyring implements "pgveil keyring init|rotate": the local keyring,
// the embedded key service for users without Vault. It returns the exit
// code; usage errors print one line and return 2.
func runKeyring(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "pgveil keyring: "+format+"\n", a...)
		return exitUsage
	}
	if len(args) == 0 {
		return usage("missing subcommand (init or rotate)")
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, keyringUsage)
		return exitOK
	case "init":
		fs := pflag.NewFlagSet("keyring init", pflag.ContinueOnError)
		fs.SetOutput(io.Discard)
		keys := fs.StringArray("key", nil, "name of a key to create (repeatable)")
		if err := fs.Parse(args[1:]); err != nil {
			if errors.Is(err, pflag.ErrHelp) {
				fmt.Fprint(stdout, keyringUsage)
				return exitOK
			}
			return usage("%v", err)
		}
		if fs.NArg() != 1 {
			return usage("init takes exactly one PATH, got %d arguments", fs.NArg())
		}
		path := fs.Arg(0)
		added, err := vaultkms.InitKeyringFile(path, *keys)
		if err != nil {
			fmt.Fprintln(stderr, "pgveil keyring:", err)
			if errors.Is(err, vaultkms.ErrConfig) && strings.Contains(err.Error(), "invalid key name") {
				return exitUsage
			}
			return exitError
		}
		fmt.Fprintf(stdout, "keyring %s: added %d key(s)%s\n", path, len(added), listNames(added))
		return exitOK
	case "rotate":
		fs := pflag.NewFlagSet("keyring rotate", pflag.ContinueOnError)
		fs.SetOutput(io.Discard)
		if err := fs.Parse(args[1:]); err != nil {
			if errors.Is(err, pflag.ErrHelp) {
				fmt.Fprint(stdout, keyringUsage)
				return exitOK
			}
			return usage("%v", err)
		}
		if fs.NArg() != 2 {
			return usage("rotate takes PATH and KEY, got %d arguments", fs.NArg())
		}
		v, err := vaultkms.RotateKeyringFile(fs.Arg(0), fs.Arg(1))
		if err != nil {
			fmt.Fprintln(stderr, "pgveil keyring:", err)
			return exitError
		}
		fmt.Fprintf(stdout, "keyring %s: key %q is now at version %d\n", fs.Arg(0), fs.Arg(1), v)
		return exitOK
	}
	return usage("unknown subcommand %q (want init or rotate)", args[0])
}

func listNames(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return ": " + strings.Join(names, ", ")
}
