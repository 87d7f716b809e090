package pgcluster

import (
	"cmp"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// maxSocketPath is the longest unix socket path the kernel accepts
// (sizeof(sockaddr_un.sun_path) minus the terminating NUL on Linux).
const maxSocketPath = 107

// socketName is the longest socket file name PostgreSQL puts in SocketDir.
const socketName = "/.s.PGSQL.65535"

// settingsFile is the file in the data directory holding pgcluster's
// settings, included at the end of postgresql.conf.
const settingsFile = "pgcluster.conf"

// serverOSUser is the OS user the server runs as when we are root.
const serverOSUser = "postgres"

// osUser is the OS user that owns the cluster's files and runs its programs.
type osUser struct {
	name     string
	uid, gid int
	home     string
	// cred is nil when programs run as the current user.
	cred *syscall.Credential
}

// serverUser returns the current user, or the "postgres" OS user when the
// process runs as root.
func serverUser() (osUser, error) {
	if os.Geteuid() != 0 {
		return osUser{uid: os.Geteuid(), gid: os.Getegid()}, nil
	}
	u, err := user.Lookup(serverOSUser)
	if err != nil {
		return osUser{}, fmt.Errorf("pgcluster: PostgreSQL cannot run as root and there is no %q OS user to run it as: %w", serverOSUser, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return osUser{}, fmt.Errorf("pgcluster: uid of OS user %q: %w", serverOSUser, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return osUser{}, fmt.Errorf("pgcluster: gid of OS user %q: %w", serverOSUser, err)
	}
	groups := []uint32{}
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if g, err := strconv.ParseUint(id, 10, 32); err == nil {
				groups = append(groups, uint32(g))
			}
		}
	}
	return osUser{
		name: u.Username,
		uid:  int(uid),
		gid:  int(gid),
		home: u.HomeDir,
		cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups},
	}, nil
}

// env returns the environment for PostgreSQL programs: ours without any PG*
// variables (which would redirect libpq or pg_ctl), and with HOME, USER and
// LOGNAME of the OS user when running as another user.
func (o osUser) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "PG") {
			continue
		}
		if o.cred != nil && (name == "HOME" || name == "USER" || name == "LOGNAME") {
			continue
		}
		env = append(env, kv)
	}
	if o.cred != nil {
		env = append(env, "HOME="+o.home, "USER="+o.name, "LOGNAME="+o.name)
	}
	return env
}

// chown gives path to the OS user when running as another user.
func (o osUser) chown(path string) error {
	if o.cred == nil {
		return nil
	}
	if err := os.Chown(path, o.uid, o.gid); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return nil
}

// makeSearchable grants others search permission on dir and its ancestors
// where the OS user could not otherwise traverse them.
func (o osUser) makeSearchable(dir string) error {
	if o.cred == nil {
		return nil
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	for p := real; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("pgcluster: %w", err)
		}
		perm := fi.Mode().Perm()
		ok := perm&0o001 != 0
		if st, isStat := fi.Sys().(*syscall.Stat_t); isStat {
			ok = ok || (int(st.Uid) == o.uid && perm&0o100 != 0) || (int(st.Gid) == o.gid && perm&0o010 != 0)
		}
		if !ok {
			mode := fi.Mode()&(os.ModePerm|os.ModeSetuid|os.ModeSetgid|os.ModeSticky) | 0o001
			if err := os.Chmod(p, mode); err != nil {
				return fmt.Errorf("pgcluster: let OS user %q reach %s: %w", o.name, dir, err)
			}
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// makeDirs creates Dir (unless given), DataDir, SocketDir and the log file,
// owned by the OS user.
func (c *Cluster) makeDirs(parent string) error {
	if parent == "" {
		dir, err := os.MkdirTemp("", "pgcluster-")
		if err != nil {
			return fmt.Errorf("pgcluster: create cluster directory: %w", err)
		}
		c.Dir = dir
		c.removeDirs = append(c.removeDirs, dir)
		if err := os.Chmod(dir, 0o755); err != nil {
			return fmt.Errorf("pgcluster: %w", err)
		}
		if err := c.owner.chown(dir); err != nil {
			return err
		}
	} else {
		dir, err := filepath.Abs(parent)
		if err != nil {
			return fmt.Errorf("pgcluster: cluster directory: %w", err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("pgcluster: create cluster directory: %w", err)
		}
		c.Dir = dir
	}
	if err := c.owner.makeSearchable(c.Dir); err != nil {
		return err
	}

	c.DataDir = filepath.Join(c.Dir, "data")
	if err := c.mkdir(c.DataDir, 0o700); err != nil {
		return err
	}

	c.SocketDir = filepath.Join(c.Dir, "sock")
	if len(c.SocketDir)+len(socketName) > maxSocketPath {
		dir, err := os.MkdirTemp("", "pgsock-")
		if err != nil {
			return fmt.Errorf("pgcluster: create socket directory: %w", err)
		}
		c.removeDirs = append(c.removeDirs, dir)
		c.SocketDir = dir
		if len(c.SocketDir)+len(socketName) > maxSocketPath {
			return fmt.Errorf("pgcluster: socket directory %s is too long for a unix socket path", c.SocketDir)
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			return fmt.Errorf("pgcluster: %w", err)
		}
		if err := c.owner.chown(dir); err != nil {
			return err
		}
		if err := c.owner.makeSearchable(dir); err != nil {
			return err
		}
	} else if err := c.mkdir(c.SocketDir, 0o755); err != nil {
		return err
	}

	f, err := os.OpenFile(c.LogFile(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("pgcluster: create server log: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("pgcluster: create server log: %w", err)
	}
	return c.owner.chown(c.LogFile())
}

// mkdir creates the new directory path with exactly mode, owned by the OS
// user.
func (c *Cluster) mkdir(path string, mode os.FileMode) error {
	if err := os.Mkdir(path, mode); err != nil {
		return fmt.Errorf("pgcluster: create directory: %w", err)
	}
	if err := os.Chmod(path, mode); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return c.owner.chown(path)
}

// writeFile writes path with mode, owned by the OS user.
func (c *Cluster) writeFile(path string, data []byte, mode os.FileMode) error {
	if err := os.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	if err := os.Chmod(path, mode); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return c.owner.chown(path)
}

// writeFiles writes Config.Files, whose names Start checked, into the data
// directory.
func (c *Cluster) writeFiles(files map[string][]byte) error {
	for name, data := range files {
		path := filepath.Join(c.DataDir, name)
		dir := c.DataDir
		for _, part := range strings.Split(filepath.Dir(filepath.Clean(name)), string(filepath.Separator)) {
			if part == "." {
				continue
			}
			dir = filepath.Join(dir, part)
			if _, err := os.Stat(dir); err == nil {
				continue
			}
			if err := c.mkdir(dir, 0o700); err != nil {
				return err
			}
		}
		if err := c.writeFile(path, data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// writeHBA replaces pg_hba.conf with lines, or with pgcluster's trusting
// defaults if lines is nil.
func (c *Cluster) writeHBA(lines []string) error {
	if lines == nil {
		lines = []string{
			"local all all trust",
			"host all all 127.0.0.1/32 trust",
			"host all all ::1/128 trust",
		}
	}
	text := "# Written by pgcluster.\n" + strings.Join(lines, "\n") + "\n"
	return c.writeFile(filepath.Join(c.DataDir, "pg_hba.conf"), []byte(text), 0o600)
}

// includeSettings makes postgresql.conf include settingsFile at its end, so
// pgcluster's settings override initdb's.
func (c *Cluster) includeSettings() error {
	path := filepath.Join(c.DataDir, "postgresql.conf")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	_, err = fmt.Fprintf(f, "\n# Added by pgcluster; its settings override the ones above.\ninclude %s\n", quote(settingsFile))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pgcluster: write %s: %w", path, err)
	}
	return nil
}

// writeSettings writes settings, sorted by name, into settingsFile.
func (c *Cluster) writeSettings(settings map[string]string) error {
	var b strings.Builder
	b.WriteString("# Written by pgcluster.\n")
	for _, name := range slices.Sorted(maps.Keys(settings)) {
		fmt.Fprintf(&b, "%s = %s\n", name, quote(settings[name]))
	}
	return c.writeFile(filepath.Join(c.DataDir, settingsFile), []byte(b.String()), 0o600)
}

// mergeSettings returns pgcluster's default settings overridden by user's,
// with names lower-cased.
func mergeSettings(user map[string]string) (map[string]string, error) {
	settings := map[string]string{
		"listen_addresses": Host,
		"fsync":            "off",
		"max_connections":  "200",
	}
	for name, value := range user {
		lower := strings.ToLower(name)
		if !validSettingName(lower) {
			return nil, fmt.Errorf("pgcluster: setting %q: invalid name", name)
		}
		if lower == "port" || lower == "unix_socket_directories" {
			return nil, fmt.Errorf("pgcluster: setting %q is managed by pgcluster (use Config.Port)", name)
		}
		settings[lower] = value
	}
	return settings, nil
}

// validSettingName reports whether name is a plain or custom
// ("extension.name") configuration parameter name.
func validSettingName(name string) bool {
	if name == "" || name[0] == '.' || (name[0] >= '0' && name[0] <= '9') {
		return false
	}
	for _, r := range name {
		if !(r == '_' || r == '.' || (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9')) {
			return false
		}
	}
	return true
}

// quote returns value as a postgresql.conf single-quoted string.
func quote(value string) string {
	r := strings.NewReplacer(`\`, `\\`, `'`, `''`, "\n", `\n`, "\r", `\r`)
	return "'" + r.Replace(value) + "'"
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(Host, "0"))
	if err != nil {
		return 0, fmt.Errorf("pgcluster: pick a free port: %w", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		return 0, fmt.Errorf("pgcluster: pick a free port: %w", err)
	}
	return port, nil
}

// requiredPrograms returns the PostgreSQL programs pgcluster runs.
func requiredPrograms() []string {
	return []string{"initdb", "pg_ctl", "postgres", "psql"}
}

// FindBinDir returns the directory of the PostgreSQL programs as
// Config.BinDir describes: dir itself if non-empty, else the directory of
// pg_ctl on PATH (symlinks resolved) if it holds initdb, pg_ctl, postgres
// and psql, else the highest-versioned /usr/lib/postgresql/*/bin. Tests can
// use it to skip when PostgreSQL is not installed.
func FindBinDir(dir string) (string, error) {
	if dir != "" {
		if missing := missingPrograms(dir); missing != "" {
			return "", fmt.Errorf("pgcluster: BinDir %s lacks %s", dir, missing)
		}
		abs, err := filepath.Abs(dir)
		if err != nil {
			return "", fmt.Errorf("pgcluster: BinDir: %w", err)
		}
		return abs, nil
	}
	if path, err := exec.LookPath("pg_ctl"); err == nil {
		if real, err := filepath.EvalSymlinks(path); err == nil {
			path = real
		}
		if abs, err := filepath.Abs(filepath.Dir(path)); err == nil && missingPrograms(abs) == "" {
			return abs, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		return compareVersions(filepath.Base(filepath.Dir(a)), filepath.Base(filepath.Dir(b)))
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if missingPrograms(dirs[i]) == "" {
			return dirs[i], nil
		}
	}
	return "", fmt.Errorf("pgcluster: no PostgreSQL programs (%s) found: put pg_ctl on PATH or set Config.BinDir", strings.Join(requiredPrograms(), ", "))
}

// missingPrograms returns the required programs not in dir, comma-separated.
func missingPrograms(dir string) string {
	var missing []string
	for _, name := range requiredPrograms() {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			missing = append(missing, name)
		}
	}
	return strings.Join(missing, ", ")
}

// compareVersions compares dotted version strings such as "9.6" and "15"
// numerically, part by part.
func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) || i < len(bs); i++ {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if c := cmp.Compare(x, y); c != 0 {
			return c
		}
	}
	return 0
}
