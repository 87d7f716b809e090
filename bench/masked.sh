#!/usr/bin/env bash
# masked.sh measures masking cost: a masked role selecting rows by id from a
# protected table through pgveil, against the same query on an equivalent
# masking view read directly from PostgreSQL (the view's query is exactly
# pgveil's masking sub-query, printed by bench/maskview), alternating runs.
# It also runs the raw table direct and the view through PgBouncer (session
# pooling), which shows what one proxy hop costs here. Usage:
#   bash bench/masked.sh            (BENCH_SECONDS, BENCH_ROUNDS, BENCH_CLIENTS, BENCH_MODES)
set -euo pipefail
cd "$(dirname "$0")/.."

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-2}
CLIENTS=${BENCH_CLIENTS:-"1 16"}
MODES=${BENCH_MODES:-"simple prepared"}
ROWS=${BENCH_ROWS:-100000}

. bench/lib.sh
bench_workdir pgveil-masked
cleanup() {
	[[ -n ${VEIL_PID:-} ]] && kill "$VEIL_PID" 2>/dev/null || true
	[[ -s $WORK/pgbouncer.pid ]] && kill "$(cat "$WORK/pgbouncer.pid")" 2>/dev/null || true
	stop_pg
	rm -rf "$WORK"
}
trap cleanup EXIT

PGPORT=$(free_port)
VEILPORT=$(free_port)
PGBPORT=$(free_port)

start_pg

psql_su -d postgres <<SQL
CREATE ROLE analyst LOGIN;
CREATE ROLE pgveil LOGIN;
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn varchar(11), birth_date date, salary numeric(10,2), city text);
INSERT INTO customers
SELECT g, 'Name ' || g, 'user' || g || '@example.com', lpad((g * 7919 % 999999999)::text, 9, '0'),
       date '1950-01-01' + g % 20000, 30000 + g % 90000, 'City ' || g % 100
FROM generate_series(1, $ROWS) g;
ANALYZE customers;
GRANT SELECT ON customers TO analyst;
SQL

cat > "$WORK/policy.yaml" <<'YAML'
version: 1
classes:
  email:       { mask: email }
  national_id: { mask: "partial(last=4)" }
  birth_date:  { mask: "truncate(year)" }
  salary:      { mask: "round(-4)" }
columns:
  public.customers.email: email
  public.customers.ssn: national_id
  public.customers.birth_date: birth_date
  public.customers.salary: salary
roles:
  analyst: {}
YAML

go run ./bench/maskview --upstream "postgres://postgres@127.0.0.1:$PGPORT/postgres?sslmode=disable" \
	--policy "$WORK/policy.yaml" --role analyst --table public.customers --view public.customers_masked >"$WORK/view.sql"
psql_su -d postgres -f "$WORK/view.sql"
psql_su -d postgres -c "GRANT SELECT ON customers_masked TO analyst"

go build -o "$WORK/pgveil" .
"$WORK/pgveil" serve --listen "127.0.0.1:$VEILPORT" --admin-listen "" --log-level warn --policy "$WORK/policy.yaml" \
	--upstream "postgres://pgveil@127.0.0.1:$PGPORT/postgres?sslmode=disable" >"$WORK/pgveil.log" 2>&1 &
VEIL_PID=$!
for _ in $(seq 50); do "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$VEILPORT" && break; sleep 0.1; done

sed -e "s|@PGPORT@|$PGPORT|g" -e "s|@PGBPORT@|$PGBPORT|g" -e "s|@WORK@|$WORK|g" bench/pgbouncer.ini.template >"$WORK/pgbouncer.ini"
printf '"analyst" ""\n' >"$WORK/userlist.txt"
[[ $(id -u) == 0 ]] && chown postgres "$WORK/pgbouncer.ini" "$WORK/userlist.txt"
"${as_pg[@]}" "${PGBOUNCER_BIN:-/usr/sbin/pgbouncer}" -d -q "$WORK/pgbouncer.ini"
for _ in $(seq 50); do "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PGBPORT" && break; sleep 0.1; done

printf '\\set id random(1, %d)\nSELECT id, name, email, ssn, birth_date, salary FROM customers WHERE id = :id;\n' "$ROWS" >"$WORK/table.sql"
printf '\\set id random(1, %d)\nSELECT id, name, email, ssn, birth_date, salary FROM customers_masked WHERE id = :id;\n' "$ROWS" >"$WORK/view-q.sql"

# Sanity: the proxy and the view give the same masked row.
a=$("$PGBIN/psql" -X -A -t -h 127.0.0.1 -p "$VEILPORT" -U analyst -d postgres -c "SELECT id, name, email, ssn, birth_date, salary FROM customers WHERE id = 42")
b=$("$PGBIN/psql" -X -A -t -h 127.0.0.1 -p "$PGPORT" -U analyst -d postgres -c "SELECT id, name, email, ssn, birth_date, salary FROM customers_masked WHERE id = 42")
[[ "$a" == "$b" ]] || { echo "masked.sh: pgveil and the view disagree: $a vs $b" >&2; exit 1; }
echo "sanity: pgveil and the view both return: $a"

tps() { # port script mode clients
	local j=$(( $4 < 2 ? $4 : 2 ))
	"$PGBIN/pgbench" -n -h 127.0.0.1 -p "$1" -U analyst -f "$2" -M "$3" -c "$4" -j "$j" -T "$SECONDS_PER_RUN" postgres 2>/dev/null |
		awk '/^tps = /{print $3}'
}

echo
echo "| mode | clients | raw table direct | masking view direct | view through PgBouncer | pgveil (masked) | pgveil / view | PgBouncer view / view |"
echo "|---|---|---|---|---|---|---|---|"
for mode in $MODES; do
	for c in $CLIENTS; do
		best_raw=0 best_view=0 best_veil=0 best_pgb=0
		for _ in $(seq "$ROUNDS"); do
			r=$(tps "$PGPORT" "$WORK/table.sql" "$mode" "$c")
			v=$(tps "$PGPORT" "$WORK/view-q.sql" "$mode" "$c")
			p=$(tps "$VEILPORT" "$WORK/table.sql" "$mode" "$c")
			g=$(tps "$PGBPORT" "$WORK/view-q.sql" "$mode" "$c")
			best_raw=$(awk -v a="$best_raw" -v b="$r" 'BEGIN{print (b>a)?b:a}')
			best_view=$(awk -v a="$best_view" -v b="$v" 'BEGIN{print (b>a)?b:a}')
			best_veil=$(awk -v a="$best_veil" -v b="$p" 'BEGIN{print (b>a)?b:a}')
			best_pgb=$(awk -v a="$best_pgb" -v b="$g" 'BEGIN{print (b>a)?b:a}')
		done
		printf '| %s | %s | %.0f | %.0f | %.0f | %.0f | %.2f | %.2f |\n' "$mode" "$c" "$best_raw" "$best_view" "$best_pgb" "$best_veil" \
			"$(awk -v a="$best_veil" -v b="$best_view" 'BEGIN{print a/b}')" "$(awk -v a="$best_pgb" -v b="$best_view" 'BEGIN{print a/b}')"
	done
done
