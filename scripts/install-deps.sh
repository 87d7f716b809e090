#!/usr/bin/env bash
# install-deps.sh installs what pgveil's tests, demo and benchmarks need and
# is missing: PostgreSQL 15 (server and psql), pgbench, PgBouncer, psycopg 3,
# the PostgreSQL JDBC driver with a Java runtime, Node.js with node-postgres.
# It is idempotent: present components are left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
packages=()
[[ -x $PGBIN/initdb && -x $PGBIN/pg_ctl && -x $PGBIN/postgres ]] || packages+=(postgresql-15)
[[ -x $PGBIN/psql && -x $PGBIN/pgbench ]] || packages+=(postgresql-client-15 postgresql-contrib)
command -v pgbouncer >/dev/null || [[ -x /usr/sbin/pgbouncer ]] || packages+=(pgbouncer)
/usr/bin/python3 -c 'import psycopg' 2>/dev/null || packages+=(python3-psycopg)
[[ -f /usr/share/java/postgresql.jar ]] || packages+=(libpostgresql-jdbc-java)
# Single-file Java programs need the compiler module, so a JDK, not a JRE.
command -v javac >/dev/null || packages+=(default-jdk-headless)
command -v node >/dev/null || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)

if ((${#packages[@]})); then
	echo "install-deps: installing ${packages[*]}"
	sudo=()
	[[ $(id -u) == 0 ]] || sudo=(sudo)
	export DEBIAN_FRONTEND=noninteractive
	"${sudo[@]}" apt-get update -qq
	# The Debian postgresql package would create and start a cluster; the
	# tests use their own, so stop any that appears.
	"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
	if command -v pg_lsclusters >/dev/null; then
		pg_lsclusters -h 2>/dev/null | while read -r ver name _; do
			"${sudo[@]}" pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true
		done
	fi
fi

# node-postgres and pg-copy-streams for the node client scenario.
if [[ ! -d integration/clients/node/node_modules/pg || ! -d integration/clients/node/node_modules/pg-copy-streams ]]; then
	echo "install-deps: npm ci (integration/clients/node)"
	(cd integration/clients/node && npm ci --no-audit --no-fund --loglevel=error)
fi
# A real Vault (v1.14.1, MPL-2.0) for the vaultkms tests, built once per
# machine from the Go module proxy (cold: about 4 minutes).
bash scripts/build-vault.sh >/dev/null
echo "install-deps: ok"
