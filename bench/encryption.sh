#!/usr/bin/env bash
# encryption.sh measures the cost of encrypted columns through pgveil, with
# a real Vault dev server (v1.14.1, built by scripts/build-vault.sh):
#   reads:  a 100,000-row SELECT of one column as a role that may decrypt it:
#           plaintext column vs Vault transit (batched, one request per 1000
#           rows) vs envelope (data keys from Vault, AES-GCM locally) vs the
#           naive way (--decrypt-batch 1: one Vault request per value, on
#           BENCH_NAIVE_ROWS rows);
#   writes: pgbench INSERTs whose card value is a bound parameter into a
#           plaintext, an envelope and a transit column.
# Usage: bash bench/encryption.sh   (BENCH_ROUNDS, BENCH_SECONDS, BENCH_ROWS, BENCH_NAIVE_ROWS)
set -euo pipefail
cd "$(dirname "$0")/.."

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
ROUNDS=${BENCH_ROUNDS:-3}
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
ROWS=${BENCH_ROWS:-100000}
NAIVE_ROWS=${BENCH_NAIVE_ROWS:-2000}
VAULT=$(bash scripts/build-vault.sh | tail -1)

. bench/lib.sh
bench_workdir veilenc
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	stop_pg
	[[ ${BENCH_KEEP:-0} == 1 ]] || rm -rf "$WORK"
}
trap cleanup EXIT

# Idle CPUs poll instead of halting while this runs (see bench/lib.sh).
hold_cpu_poll
[[ -n $QOS_PID ]] && PIDS+=("$QOS_PID")

PGPORT=$(free_port)
VAULTPORT=$(free_port)
BATCHED=$(free_port)
NAIVE=$(free_port)

# Vault dev server with the transit engine and two derived keys.
"$VAULT" server -dev -dev-root-token-id=root -dev-listen-address="127.0.0.1:$VAULTPORT" >"$WORK/vault.log" 2>&1 &
PIDS+=($!)
export VAULT_ADDR="http://127.0.0.1:$VAULTPORT" VAULT_TOKEN=root
for _ in $(seq 100); do curl -sf "$VAULT_ADDR/v1/sys/health" >/dev/null && break; sleep 0.1; done
vault_api() { curl -sf -H "X-Vault-Token: root" -X "$1" "$VAULT_ADDR/v1/$2" -d "$3" >/dev/null; }
vault_api POST sys/mounts/transit '{"type":"transit"}'
vault_api POST transit/keys/card-t '{"type":"aes256-gcm96","derived":true}'
vault_api POST transit/keys/card-e '{"type":"aes256-gcm96","derived":true}'

start_pg
psql_su -d postgres <<SQL
CREATE ROLE dpo LOGIN;
CREATE ROLE pgveil LOGIN;
CREATE TABLE cards (id int PRIMARY KEY, plain text, transit text, envelope text);
INSERT INTO cards SELECT g, c, c, c FROM (SELECT g, '4' || lpad((g * 7919)::text, 15, '0') AS c FROM generate_series(1, $ROWS) g) s;
CREATE TABLE w (id bigint, plain text, transit text, envelope text);
GRANT SELECT ON cards TO dpo;
GRANT INSERT ON w TO dpo;
SQL

cat >"$WORK/policy.yaml" <<'YAML'
version: 1
classes:
  card: { mask: "partial(last=4)" }
columns:
  public.cards.transit:  { class: card, encrypted: { key: card-t, mode: transit } }
  public.cards.envelope: { class: card, encrypted: { key: card-e, mode: envelope } }
  public.w.transit:      { class: card, encrypted: { key: card-t, mode: transit } }
  public.w.envelope:     { class: card, encrypted: { key: card-e, mode: envelope } }
roles:
  dpo: { decrypt: all }
YAML

go build -o "$WORK/veil" .
up="postgres://pgveil@127.0.0.1:$PGPORT/postgres?sslmode=disable"
# Encrypt the stored values with pgveil's own migration.
for col in transit envelope; do
	"$WORK/veil" migrate encrypt --upstream "postgres://postgres@127.0.0.1:$PGPORT/postgres?sslmode=disable" --policy "$WORK/policy.yaml" \
		--table cards --column "$col" --progress never >&2
done
"$WORK/veil" serve --listen "127.0.0.1:$BATCHED" --admin-listen "" --log-level warn --policy "$WORK/policy.yaml" --upstream "$up" >"$WORK/batched.log" 2>&1 &
PIDS+=($!)
"$WORK/veil" serve --listen "127.0.0.1:$NAIVE" --admin-listen "" --log-level warn --policy "$WORK/policy.yaml" --upstream "$up" --decrypt-batch 1 >"$WORK/naive.log" 2>&1 &
PIDS+=($!)
for p in $BATCHED $NAIVE; do
	for _ in $(seq 100); do "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$p" && break; sleep 0.1; done
done
# Sanity: the proxy decrypts what migrate encrypted.
echo "sanity: id 7 through pgveil as dpo (plain|transit|envelope): $(
	"$PGBIN/psql" -X -A -t -h 127.0.0.1 -p "$BATCHED" -U dpo -d postgres -c "SELECT plain, transit, envelope FROM cards WHERE id = 7")" >&2
echo "sanity: id 7 stored: $(psql_su -d postgres -A -t -c "SELECT left(transit, 12) || '...', left(envelope, 12) || '...' FROM cards WHERE id = 7")" >&2

# rows_per_sec port sql rows: best of ROUNDS wall-clock runs of psql reading every row.
rps() {
	local best=0
	for _ in $(seq "$ROUNDS"); do
		local t0 t1
		t0=$(date +%s%N)
		"$PGBIN/psql" -X -q -A -t -h 127.0.0.1 -p "$1" -U dpo -d postgres -o /dev/null -c "$2"
		t1=$(date +%s%N)
		best=$(awk -v b="$best" -v r="$3" -v ns=$((t1 - t0)) 'BEGIN{v=r/(ns/1e9); print (v>b)?v:b}')
	done
	echo "$best"
}
plain=$(rps "$BATCHED" "SELECT plain FROM cards" "$ROWS")
transit=$(rps "$BATCHED" "SELECT transit FROM cards" "$ROWS")
envelope=$(rps "$BATCHED" "SELECT envelope FROM cards" "$ROWS")
naive=$(ROUNDS=1 rps "$NAIVE" "SELECT transit FROM cards LIMIT $NAIVE_ROWS" "$NAIVE_ROWS")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", (b>0)?a/b:0}'; }
echo "| read ($ROWS-row SELECT as a decrypting role) | rows/s | vs plaintext | vs naive transit |"
echo "|---|---|---|---|"
printf '| plaintext column | %.0f | 1.00 | %s |\n' "$plain" "$(ratio "$plain" "$naive")"
printf '| Vault transit, batched (1000 rows per request) | %.0f | %s | %s |\n' "$transit" "$(ratio "$transit" "$plain")" "$(ratio "$transit" "$naive")"
printf '| envelope (Vault data keys, AES-GCM) | %.0f | %s | %s |\n' "$envelope" "$(ratio "$envelope" "$plain")" "$(ratio "$envelope" "$naive")"
printf '| Vault transit, one request per value (%d rows) | %.0f | %s | 1.00 |\n' "$NAIVE_ROWS" "$naive" "$(ratio "$naive" "$plain")"

# Writes: pgbench INSERTs with the card as a bound parameter.
for col in plain envelope transit; do
	printf '\\set id random(1, 1000000000)\n\\set card 4111111111111111\nINSERT INTO w (id, %s) VALUES (:id, :card);\n' "$col" >"$WORK/ins-$col.sql"
done
ins() {
	"$PGBIN/pgbench" -n -h 127.0.0.1 -p "$BATCHED" -U dpo -M prepared -f "$WORK/ins-$1.sql" -c 4 -j 2 -T "$SECONDS_PER_RUN" postgres 2>/dev/null |
		awk '/^tps = /{print $3}'
}
bp=0 be=0 bt=0
for _ in $(seq "$ROUNDS"); do
	p=$(ins plain); e=$(ins envelope); t=$(ins transit)
	bp=$(awk -v a="$bp" -v b="${p:-0}" 'BEGIN{print (b>a)?b:a}')
	be=$(awk -v a="$be" -v b="${e:-0}" 'BEGIN{print (b>a)?b:a}')
	bt=$(awk -v a="$bt" -v b="${t:-0}" 'BEGIN{print (b>a)?b:a}')
done
echo
echo "| write (pgbench INSERT, card as a parameter, 4 clients, prepared) | TPS | vs plaintext |"
echo "|---|---|---|"
printf '| plaintext column | %.0f | 1.00 |\n' "$bp"
printf '| envelope column | %.0f | %s |\n' "$be" "$(ratio "$be" "$bp")"
printf '| transit column (one Vault request per INSERT) | %.0f | %s |\n' "$bt" "$(ratio "$bt" "$bp")"
n=$(psql_su -d postgres -A -t -c "SELECT count(*) FROM w WHERE envelope LIKE 'pgveil:e1:%' OR transit LIKE 'vault:v%'")
echo
echo "stored: $n encrypted values written through pgveil"
