// Command pgveil is a PostgreSQL wire-protocol proxy that gives every caller
// exactly the data its role may see.
//
// main is thin: it maps flags and PGVEIL_* environment variables onto each
// package's Config, runs subcommands, and handles signals.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// PGVEIL_CPUPROFILE=file writes a CPU profile of the whole run (for
	// the benchmarks in bench/; go tool pprof reads it).
	if path := os.Getenv("PGVEIL_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil {
			if pprof.StartCPUProfile(f) == nil {
				code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
				pprof.StopCPUProfile()
				f.Close()
				os.Exit(code)
			}
		}
	}
	// PGVEIL_MEMPROFILE=file writes the allocations of the whole run when
	// it ends (go tool pprof -sample_index=alloc_space reads it).
	if path := os.Getenv("PGVEIL_MEMPROFILE"); path != "" {
		code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
		if f, err := os.Create(path); err == nil {
			pprof.Lookup("allocs").WriteTo(f, 0)
			f.Close()
		}
		os.Exit(code)
	}
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // a runtime failure
	exitUsage = 2 // a bad flag, a bad value, an unreadable file
)

// usageError is a command-line mistake: one line on stderr and exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

const topUsage = `pgveil — a PostgreSQL proxy that gives every caller exactly the data its role may see

Usage:
  pgveil serve   --upstream postgres://host:5432/db [flags]   run the proxy
  pgveil check   --policy policy.yaml [--upstream URL]      validate a policy, optionally against the live schema
  pgveil harden  --policy policy.yaml [--upstream URL]      print defence-in-depth SQL for the masked roles
  pgveil demo    [flags]                                    a throwaway PostgreSQL with sample data behind the proxy
  pgveil report  --usage-store S --policy P [--since 720h]  the minimisation report (text, json, csv, html)
  pgveil audit verify audit.log [--key-file F]              check the audit log's hash chain
  pgveil keyring init|rotate keys.json ...                  local encryption keys (the embedded key service)
  pgveil migrate encrypt|decrypt|rewrap --table T --column C  convert an existing column in batches (resumable)
  pgveil healthcheck [--path /readyz]                      ask a running pgveil's admin endpoint (for containers)
  pgveil version                                            print the version

Run "pgveil <command> --help" for the flags of a command. Every flag can also be
set with an environment variable PGVEIL_<FLAG>, e.g. PGVEIL_UPSTREAM, and the
settings of serve in a YAML file given with --config.
`

// run executes one pgveil command and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, topUsage)
		return exitUsage
	}
	var err error
	switch args[0] {
	case "serve":
		err = runServe(ctx, args[1:], stdout, stderr)
	case "demo":
		err = runDemo(ctx, args[1:], stdout, stderr)
	case "check":
		err = runCheck(ctx, args[1:], stdout, stderr)
	case "harden":
		err = runHarden(ctx, args[1:], stdout, stderr)
	case "healthcheck":
		err = runHealthcheck(ctx, args[1:], stdout, stderr)
	case "report":
		return runReport(ctx, args[1:], stdout, stderr)
	case "audit":
		return runAudit(ctx, args[1:], stdout, stderr)
	case "keyring":
		return runKeyring(ctx, args[1:], stdout, stderr)
	case "migrate":
		err = runMigrate(ctx, args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "pgveil", versionString())
	case "help", "-h", "--help":
		fmt.Fprint(stdout, topUsage)
	default:
		err = usagef("unknown command %q (try: pgveil help)", args[0])
	}
	return exitCode(err, stderr)
}

// exitCode reports err on stderr (one line) and returns the exit code for
// it: usage errors 2, other failures 1.
func exitCode(err error, stderr io.Writer) int {
	var ue *usageError
	switch {
	case err == nil, errors.Is(err, pflag.ErrHelp):
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, "pgveil:", ue.msg)
		return exitUsage
	default:
		fmt.Fprintln(stderr, "pgveil:", err)
		return exitError
	}
}

func versionString() string {
	v := version
	bi, ok := debug.ReadBuildInfo()
	if v == "" && ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	}
	if v == "" {
		v = "dev"
		if ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" && len(s.Value) >= 12 {
					v += "+" + s.Value[:12]
				}
			}
		}
	}
	goVersion := ""
	if ok {
		goVersion = " (" + bi.GoVersion + ")"
	}
	return v + goVersion
}

// parseFlags parses args into fs, then fills every flag not given on the
// command line from PGVEIL_<FLAG> (upper case, dashes as underscores).
func parseFlags(fs *pflag.FlagSet, args []string, stdout io.Writer) error {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintf(stdout, "Usage of pgveil %s:\n%s", fs.Name(), fs.FlagUsages())
			if fs.Lookup("config") != nil {
				fmt.Fprint(stdout, configUsage)
			}
			return err
		}
		return usagef("%v", err)
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	// A --config file (from the flag or PGVEIL_CONFIG) fills what
	// neither a flag nor the environment sets.
	var file map[string]string
	var lines map[string]int
	var configPath string
	if cf := fs.Lookup("config"); cf != nil {
		configPath = cf.Value.String()
		if !cf.Changed {
			configPath = os.Getenv("PGVEIL_CONFIG")
		}
		if configPath != "" {
			var err error
			if file, lines, err = readConfigFile(configPath, fs); err != nil {
				return err
			}
		}
	}
	var setErr error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || setErr != nil || f.Name == "config" {
			return
		}
		name := envName(f.Name)
		if v, ok := os.LookupEnv(name); ok {
			if err := fs.Set(f.Name, v); err != nil {
				setErr = usagef("invalid value %q for %s: %v", v, name, err)
			}
			return
		}
		if v, ok := file[f.Name]; ok {
			if err := fs.Set(f.Name, v); err != nil {
				setErr = usagef("%s:%d: invalid value %q for %s: %v", configPath, lines[f.Name], v, f.Name, err)
			}
		}
	})
	return setErr
}

// envName is the environment variable of a flag: PGVEIL_<FLAG>.
func envName(flag string) string {
	return "PGVEIL_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}
