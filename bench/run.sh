#!/usr/bin/env bash
# bench/run.sh - compare direct PostgreSQL, PgBouncer and pgveil with pgbench.
#
# One run starts a private PostgreSQL, a private PgBouncer (session pooling)
# and pgveil, all on free loopback ports inside a temp dir, then runs the
# pgbench select-only workload (-S) for every protocol mode x client count,
# alternating the three targets inside each cell, and prints a markdown table.
# Everything it started is stopped and the temp dir removed on exit.
#
# Usage: bash bench/run.sh            (see bench/README.md)
#
# Environment knobs (defaults in brackets):
#   BENCH_SECONDS  pgbench -T per run                          [10]
#   BENCH_ROUNDS   runs per target per cell                    [2]
#   BENCH_SCALE    pgbench -i scale factor                     [10]
#   BENCH_CLIENTS  client counts, space separated              ["1 16"]
#   BENCH_MODES    pgbench -M modes                            ["simple extended prepared"]
#   BENCH_AGG      how rounds are combined: best | median      [best]
#   BENCH_WARMUP   seconds of warm-up per target (0 = none)    [3]
#   BENCH_OUT      also write the report (markdown) here       [unset]
#   BENCH_KEEP     1 = keep the temp dir (logs) after the run  [0]
#   BENCH_MAX_OTHER_CPU  a run during which processes that are not part of
#                  the benchmark used more than this % of the machine's
#                  CPU is repeated (other builds/tests on the box)       [10]
#   BENCH_RETRIES  how often such a disturbed run is repeated, after
#                  waiting up to 60 s for the machine to calm down       [3]
#   BENCH_WAIT_IDLE  before benchmarking, wait up to this many seconds for
#                  the machine to be idle (< BENCH_MAX_OTHER_CPU)        [120]
#   BENCH_HUGE_PAGES  PostgreSQL's shared memory in huge pages: auto (when
#                  free or, as root, reservable: vm.nr_hugepages is raised
#                  for the run and restored), on (fail otherwise), off.
#                  Without them direct and pgveil runs start cold backends
#                  that PgBouncer's pool does not (bench/lib.sh)      [auto]
#   BENCH_CPU_POLL 1 = hold /dev/cpu_dma_latency at 0 during the runs so idle
#                  CPUs poll instead of halting (needs root; see README),
#                  0 = leave CPU idle states alone, auto = 1 if writable  [auto]
#   PGBIN          PostgreSQL bin dir                          [/usr/lib/postgresql/15/bin]
#   PGBOUNCER_BIN  pgbouncer binary                            [/usr/sbin/pgbouncer]
#   PGVEIL_BIN     use this pgveil binary instead of building  [unset]
#   PGVEIL_ARGS    extra args appended to `pgveil serve`       [unset]
#   SKIP_PGVEIL    1 = benchmark only direct and PgBouncer     [0]
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$SCRIPT_DIR/lib.sh" # other_cpu_pct, over_limit
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)

BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_ROUNDS=${BENCH_ROUNDS:-2}
BENCH_SCALE=${BENCH_SCALE:-10}
BENCH_CLIENTS=${BENCH_CLIENTS:-"1 16"}
BENCH_MODES=${BENCH_MODES:-"simple extended prepared"}
BENCH_AGG=${BENCH_AGG:-best}
BENCH_WARMUP=${BENCH_WARMUP:-3}
BENCH_OUT=${BENCH_OUT:-}
BENCH_KEEP=${BENCH_KEEP:-0}
BENCH_MAX_OTHER_CPU=${BENCH_MAX_OTHER_CPU:-10}
BENCH_RETRIES=${BENCH_RETRIES:-3}
BENCH_WAIT_IDLE=${BENCH_WAIT_IDLE:-120}
BENCH_CPU_POLL=${BENCH_CPU_POLL:-auto}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGBOUNCER_BIN=${PGBOUNCER_BIN:-/usr/sbin/pgbouncer}
PGVEIL_BIN=${PGVEIL_BIN:-}
PGVEIL_ARGS=${PGVEIL_ARGS:-}
SKIP_PGVEIL=${SKIP_PGVEIL:-0}

PGBENCH=$PGBIN/pgbench
PSQL=$PGBIN/psql
PGUSER_NAME=postgres
PGDB_NAME=postgres

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

# ---------------------------------------------------------------- checks
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_posint() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
is_posint "$BENCH_SECONDS" || die "BENCH_SECONDS must be a positive integer"
is_posint "$BENCH_ROUNDS" || die "BENCH_ROUNDS must be a positive integer"
is_posint "$BENCH_SCALE" || die "BENCH_SCALE must be a positive integer"
is_uint "$BENCH_WARMUP" || die "BENCH_WARMUP must be a non-negative integer"
is_uint "$BENCH_MAX_OTHER_CPU" || die "BENCH_MAX_OTHER_CPU must be a non-negative integer (percent)"
is_uint "$BENCH_RETRIES" || die "BENCH_RETRIES must be a non-negative integer"
is_uint "$BENCH_WAIT_IDLE" || die "BENCH_WAIT_IDLE must be a non-negative integer"
read -r -a CLIENTS <<<"$BENCH_CLIENTS"
read -r -a MODES <<<"$BENCH_MODES"
((${#CLIENTS[@]} > 0)) || die "BENCH_CLIENTS is empty"
((${#MODES[@]} > 0)) || die "BENCH_MODES is empty"
for c in "${CLIENTS[@]}"; do
	if ! is_posint "$c" || ((c > 90)); then
		die "bad client count '$c' (1..90)"
	fi
done
for m in "${MODES[@]}"; do
	case $m in simple | extended | prepared) ;; *) die "bad mode '$m' (simple|extended|prepared)" ;; esac
done
case $BENCH_AGG in best | median) ;; *) die "BENCH_AGG must be best or median" ;; esac
case $BENCH_CPU_POLL in
0 | 1) ;;
auto) if [[ -w /dev/cpu_dma_latency ]]; then BENCH_CPU_POLL=1; else BENCH_CPU_POLL=0; fi ;;
*) die "BENCH_CPU_POLL must be 0, 1 or auto" ;;
esac
for b in "$PGBIN/initdb" "$PGBIN/pg_ctl" "$PGBENCH" "$PSQL" "$PGBOUNCER_BIN"; do
	[[ -x $b ]] || die "missing executable: $b"
done
read -r -a PGVEIL_EXTRA <<<"$PGVEIL_ARGS"

if [[ $(id -u) -eq 0 ]]; then
	id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' OS user"
	# PostgreSQL and PgBouncer both refuse to run as root.
	as_pg() { runuser -u postgres -- "$@"; }
else
	as_pg() { "$@"; }
fi

# ---------------------------------------------------------------- state + cleanup
# Neither the temp dir nor the binary under test has "pgveil" in its name:
# a developer's `pkill pgveil` on the same machine must not kill the
# benchmark's instance mid-run (it happened).
WORK=$(mktemp -d "${TMPDIR:-/tmp}/veilbench.XXXXXX")
PGDATA=$WORK/pgdata
RESULTS=$WORK/results.txt
PGVEIL_PID=
PGVEIL_EXIT=
PG_STARTED=0
QOS_PID=
mkdir -p "$WORK/runs"
chmod 755 "$WORK"
if [[ $(id -u) -eq 0 ]]; then
	chown postgres: "$WORK"
fi

stop_pid() { # pid: TERM, wait up to 10 s, then KILL
	local pid=$1 i
	kill "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	log "pid $pid ignored SIGTERM, killing"
	kill -9 "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +e
	if [[ -n $PGVEIL_PID && -z $PGVEIL_EXIT ]]; then
		stop_pid "$PGVEIL_PID"
		wait "$PGVEIL_PID" 2>/dev/null
	fi
	if [[ -s $WORK/pgbouncer.pid ]]; then
		stop_pid "$(cat "$WORK/pgbouncer.pid")"
	fi
	if [[ -n $QOS_PID ]]; then
		kill "$QOS_PID" 2>/dev/null
		wait "$QOS_PID" 2>/dev/null
	fi
	if ((PG_STARTED)); then
		as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w -t 30 stop >/dev/null 2>&1 ||
			log "pg_ctl stop failed"
	fi
	release_huge_pages
	if ((rc != 0)); then
		local f
		for f in "$WORK"/postgres.log "$WORK"/pgbouncer.log "$WORK"/pgveil.log; do
			[[ -s $f ]] || continue
			log "last lines of $f:"
			tail -n 15 "$f" >&2
		done
	fi
	if [[ $BENCH_KEEP == 1 ]]; then
		log "kept $WORK"
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers
USED_PORTS=" "
PORT=
pick_port() { # sets PORT to a free loopback TCP port
	local p i
	for ((i = 0; i < 500; i++)); do
		p=$((20000 + RANDOM % 10000))
		[[ $USED_PORTS == *" $p "* ]] && continue
		# connect succeeds => something listens there
		if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			continue
		fi
		USED_PORTS+="$p "
		PORT=$p
		return 0
	done
	die "could not find a free port"
}

# wait_ready NAME PORT [PID]: wait until `select 1` works through PORT
wait_ready() {
	local name=$1 port=$2 pid=${3:-} i out
	for ((i = 0; i < 150; i++)); do
		if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
			die "$name exited during start-up"
		fi
		out=$(PGCONNECT_TIMEOUT=2 "$PSQL" -X -qAt -h 127.0.0.1 -p "$port" \
			-U "$PGUSER_NAME" -d "$PGDB_NAME" -c 'select 1' 2>/dev/null) || out=
		if [[ $out == 1 ]]; then
			return 0
		fi
		sleep 0.2
	done
	die "$name did not accept queries on port $port within 30 s"
}

CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)
# proc_cpu_ticks PID: utime+stime of all its threads in clock ticks; empty
# if the process is gone.
proc_cpu_ticks() {
	local pid=$1 stat
	[[ -n $pid && -r /proc/$pid/stat ]] || return 0
	stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 0
	stat=${stat##*) }
	local -a f
	read -r -a f <<<"$stat"
	echo $((f[11] + f[12]))
}
# cpu_snapshot -> "WALL_NS BUSY_TICKS OUR_TICKS". BUSY is the machine's
# user+system CPU time (irq/softirq time, e.g. loopback TCP processing, is
# not charged to processes, so it is left out on both sides); OUR is what the benchmark itself used: this shell's
# reaped children (pgbench), the postmaster with its live and reaped
# children (PgBouncer keeps its server connections open, so live backends
# must be counted too), PgBouncer and pgveil.
cpu_snapshot() {
	local busy ours
	busy=$(awk '/^cpu /{print $2 + $3 + $4; exit}' /proc/stat) # user+nice+system
	ours=$(cat /proc/[0-9]*/stat 2>/dev/null | awk -v self=$$ -v pm="${PM_PID:-x}" \
		-v pgb="${PGB_PID:-x}" -v veil="${PGVEIL_PID:-x}" '
		{
			pid = $1; rest = $0; sub(/^.*\) /, "", rest); split(rest, f, " ")
			# f[2] = ppid, f[12..15] = utime stime cutime cstime
			if (pid == self) t += f[14] + f[15]
			else if (pid == pm) t += f[12] + f[13] + f[14] + f[15]
			else if (f[2] == pm || pid == pgb || pid == veil) t += f[12] + f[13]
		}
		END { print t + 0 }')
	echo "$(date +%s%N) $busy $ours"
}

# ---------------------------------------------------------------- pgveil binary
PGVEIL=
if [[ $SKIP_PGVEIL == 1 ]]; then
	log "SKIP_PGVEIL=1: pgveil will not be benchmarked"
elif [[ -n $PGVEIL_BIN ]]; then
	[[ -x $PGVEIL_BIN ]] || die "PGVEIL_BIN=$PGVEIL_BIN is not executable"
	cp "$PGVEIL_BIN" "$WORK/veil-under-test"
	PGVEIL=$WORK/veil-under-test
else
	command -v go >/dev/null || die "go not found (set PGVEIL_BIN or SKIP_PGVEIL=1)"
	log "building pgveil in $REPO_ROOT"
	if ! (cd "$REPO_ROOT" && go build -o "$WORK/veil-under-test" .) >"$WORK/build.log" 2>&1; then
		cat "$WORK/build.log" >&2
		die "go build failed (set SKIP_PGVEIL=1 to benchmark only direct and PgBouncer)"
	fi
	PGVEIL=$WORK/veil-under-test
fi

# ---------------------------------------------------------------- PostgreSQL
pick_port
PGPORT=$PORT
log "initdb + start PostgreSQL on 127.0.0.1:$PGPORT"
as_pg "$PGBIN/initdb" -D "$PGDATA" -U "$PGUSER_NAME" --auth=trust -E UTF8 --no-sync \
	>"$WORK/initdb.log" 2>&1 || {
	cat "$WORK/initdb.log" >&2
	die "initdb failed"
}
cat >>"$PGDATA/postgresql.conf" <<EOF

# --- bench/run.sh ---
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$WORK'
max_connections = 100
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
# Huge pages when the machine allows (lib.sh: why).
reserve_huge_pages "$PGDATA" || die "huge pages unavailable"
echo "huge_pages = $HUGE_PAGES" >>"$PGDATA/postgresql.conf"
log "huge pages: $HUGE_NOTE"
PG_STARTED=1
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$WORK/postgres.log" -w -t 60 start >/dev/null ||
	die "pg_ctl start failed"
wait_ready PostgreSQL "$PGPORT"
PM_PID=$(head -n 1 "$PGDATA/postmaster.pid")

log "pgbench -i -s $BENCH_SCALE"
"$PGBENCH" -i -s "$BENCH_SCALE" -q -h 127.0.0.1 -p "$PGPORT" -U "$PGUSER_NAME" "$PGDB_NAME" \
	>"$WORK/pgbench-init.log" 2>&1 || {
	cat "$WORK/pgbench-init.log" >&2
	die "pgbench -i failed"
}
"$PSQL" -X -q -h 127.0.0.1 -p "$PGPORT" -U "$PGUSER_NAME" -d "$PGDB_NAME" -c 'checkpoint' >/dev/null

# ---------------------------------------------------------------- PgBouncer
pick_port
PGBPORT=$PORT
log "start PgBouncer on 127.0.0.1:$PGBPORT (session pooling)"
sed -e "s|@PGPORT@|$PGPORT|g" -e "s|@PGBPORT@|$PGBPORT|g" -e "s|@WORK@|$WORK|g" \
	"$SCRIPT_DIR/pgbouncer.ini.template" >"$WORK/pgbouncer.ini"
printf '"%s" ""\n' "$PGUSER_NAME" >"$WORK/userlist.txt"
as_pg "$PGBOUNCER_BIN" -d -q "$WORK/pgbouncer.ini" >"$WORK/pgbouncer.stdout" 2>&1 || {
	cat "$WORK/pgbouncer.stdout" >&2
	die "pgbouncer failed to start"
}
wait_ready PgBouncer "$PGBPORT"
PGB_PID=$(cat "$WORK/pgbouncer.pid")

# ---------------------------------------------------------------- pgveil
TARGETS=(direct pgbouncer)
VPORT=
if [[ -n $PGVEIL ]]; then
	pick_port
	VPORT=$PORT
	# The admin endpoint (metrics) stays on, as in a deployment, on a free
	# port of its own.
	pick_port
	APORT=$PORT
	log "start pgveil on 127.0.0.1:$VPORT${PGVEIL_ARGS:+ (extra args: $PGVEIL_ARGS)}"
	"$PGVEIL" serve --listen "127.0.0.1:$VPORT" --admin-listen "127.0.0.1:$APORT" \
		--upstream "postgres://127.0.0.1:$PGPORT/$PGDB_NAME?sslmode=disable" \
		--log-level warn "${PGVEIL_EXTRA[@]}" >"$WORK/pgveil.log" 2>&1 &
	PGVEIL_PID=$!
	wait_ready pgveil "$VPORT" "$PGVEIL_PID"
	TARGETS+=(pgveil)
fi

target_port() {
	case $1 in
	direct) echo "$PGPORT" ;;
	pgbouncer) echo "$PGBPORT" ;;
	pgveil) echo "$VPORT" ;;
	esac
}
target_pid() { # the process whose CPU time is charged to the target
	case $1 in
	pgbouncer) echo "$PGB_PID" ;;
	pgveil) echo "$PGVEIL_PID" ;;
	*) echo "" ;;
	esac
}

# ---------------------------------------------------------------- runs
# run_one TARGET MODE CLIENTS ROUND -> appends one line to $RESULTS:
#   mode clients target round tps lat_ms txns proxy_cpu_ticks failed other_cpu_pct attempts
# A run disturbed by other processes on the machine is repeated (see
# BENCH_MAX_OTHER_CPU / BENCH_RETRIES); the last attempt is recorded.
run_one() {
	local target=$1 mode=$2 clients=$3 round=$4
	local port pid jobs out rc before after cpu tps lat txns failed snap0 snap1 other attempt=0
	port=$(target_port "$target")
	pid=$(target_pid "$target")
	jobs=$((clients < 2 ? clients : 2))
	out=$WORK/runs/$mode-c$clients-r$round-$target.log
	while :; do
		attempt=$((attempt + 1))
		if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
			if [[ $target == pgveil && -z $PGVEIL_EXIT ]]; then
				PGVEIL_EXIT=0
				wait "$pid" 2>/dev/null || PGVEIL_EXIT=$?
				log "  pgveil exited with status $PGVEIL_EXIT$( ((PGVEIL_EXIT > 128)) && echo " (signal $((PGVEIL_EXIT - 128)))")"
			fi
			log "  $target is not running; recording a failure"
			echo "$mode $clients $target $round NA NA NA NA NA NA $attempt" >>"$RESULTS"
			return 0
		fi
		snap0=$(cpu_snapshot)
		before=$(proc_cpu_ticks "$pid")
		rc=0
		"$PGBENCH" -S -n -M "$mode" -c "$clients" -j "$jobs" -T "$BENCH_SECONDS" \
			-h 127.0.0.1 -p "$port" -U "$PGUSER_NAME" "$PGDB_NAME" >"$out" 2>&1 || rc=$?
		after=$(proc_cpu_ticks "$pid")
		snap1=$(cpu_snapshot)
		other=$(other_cpu_pct "$snap0" "$snap1")
		cpu=NA
		if [[ -n $before && -n $after ]]; then
			cpu=$((after - before))
		fi
		tps=$(awk '/^tps = /{print $3; exit}' "$out")
		lat=$(awk '/^latency average = /{print $4; exit}' "$out")
		txns=$(awk -F': *' '/^number of transactions actually processed/{split($2, a, "/"); print a[1]; exit}' "$out")
		failed=$(awk -F': *' '/^number of failed transactions/{split($2, a, " "); print a[1]; exit}' "$out")
		if ((rc != 0)) || [[ -z $tps || -z $lat || -z $txns ]]; then
			log "  $target FAILED (pgbench exit $rc), see below"
			tail -n 5 "$out" >&2
			echo "$mode $clients $target $round NA NA NA NA NA $other $attempt" >>"$RESULTS"
			return 0
		fi
		if over_limit "$other" && ((attempt <= BENCH_RETRIES)); then
			log "  $(printf '%-9s' "$target") tps=$(printf '%.0f' "$tps") but other processes used ${other}% CPU; repeating"
			wait_idle 60
			continue
		fi
		break
	done
	log "  $(printf '%-9s' "$target") tps=$(printf '%.0f' "$tps") lat=${lat}ms other-cpu=${other}%"
	echo "$mode $clients $target $round $tps $lat $txns $cpu ${failed:-0} $other $attempt" >>"$RESULTS"
}

# wait_idle [MAX_S]: wait up to MAX_S (default BENCH_WAIT_IDLE) seconds for
# a 3 s window in which other processes use less than BENCH_MAX_OTHER_CPU %
# of the machine
wait_idle() {
	local deadline=$((SECONDS + ${1:-$BENCH_WAIT_IDLE})) a b other
	while :; do
		a=$(cpu_snapshot)
		sleep 3
		b=$(cpu_snapshot)
		other=$(other_cpu_pct "$a" "$b")
		if ! over_limit "$other"; then
			log "machine is idle enough (other processes: ${other}% CPU)"
			return 0
		fi
		if ((SECONDS >= deadline)); then
			log "WARNING: machine still busy (other processes: ${other}% CPU); benchmarking anyway"
			return 0
		fi
		log "machine busy (other processes: ${other}% CPU); waiting"
		sleep 5
	done
}

if ((BENCH_WARMUP > 0)); then
	log "warm-up: ${BENCH_WARMUP}s per target"
	for t in "${TARGETS[@]}"; do
		"$PGBENCH" -S -n -M simple -c 4 -j 2 -T "$BENCH_WARMUP" -h 127.0.0.1 \
			-p "$(target_port "$t")" -U "$PGUSER_NAME" "$PGDB_NAME" >"$WORK/warmup-$t.log" 2>&1 || {
			cat "$WORK/warmup-$t.log" >&2
			die "warm-up against $t failed"
		}
	done
fi

if [[ $BENCH_CPU_POLL == 1 ]]; then
	[[ -w /dev/cpu_dma_latency ]] || die "BENCH_CPU_POLL=1 needs a writable /dev/cpu_dma_latency (root)"
	# A PM QoS request of 0 us lives as long as the file is open: a helper
	# process holds it, and cleanup kills the helper, which drops it again.
	(
		exec 9>/dev/cpu_dma_latency
		printf '\x00\x00\x00\x00' >&9
		exec sleep 86400
	) &
	QOS_PID=$!
	log "BENCH_CPU_POLL=1: CPU wake-up latency request 0 us held by pid $QOS_PID"
fi

: >"$RESULTS"
if ((BENCH_WAIT_IDLE > 0)); then
	wait_idle
fi
ncells=$((${#MODES[@]} * ${#CLIENTS[@]}))
est=$((ncells * BENCH_ROUNDS * ${#TARGETS[@]} * BENCH_SECONDS))
log "benchmark: $ncells cells x $BENCH_ROUNDS rounds x ${#TARGETS[@]} targets x ${BENCH_SECONDS}s (~${est}s)"
cell=0
for mode in "${MODES[@]}"; do
	for clients in "${CLIENTS[@]}"; do
		cell=$((cell + 1))
		for ((round = 1; round <= BENCH_ROUNDS; round++)); do
			log "[$cell/$ncells] -M $mode -c $clients, round $round/$BENCH_ROUNDS"
			# alternate targets; rotate who goes first each round
			n=${#TARGETS[@]}
			for ((k = 0; k < n; k++)); do
				run_one "${TARGETS[$(((round - 1 + k) % n))]}" "$mode" "$clients" "$round"
			done
		done
	done
done

# ---------------------------------------------------------------- report
# agg MODE CLIENTS TARGET -> "tps lat_ms cpu_us_per_txn used total" (NA when no data)
# Runs over BENCH_MAX_OTHER_CPU are ignored unless every run of the target was.
agg() {
	grep -E "^$1 $2 $3 " "$RESULTS" |
		awk -v agg="$BENCH_AGG" -v tck="$CLK_TCK" -v lim="$BENCH_MAX_OTHER_CPU" '
		{ total++ }
		$5 != "NA" {
			m++; mt[m] = $5; ml[m] = $6
			mc[m] = ($8 == "NA" || $7 == 0) ? -1 : $8 * 1e6 / tck / $7
			dist[m] = ($10 + 0 > lim + 0); if (!dist[m]) clean++
		}
		END {
			# runs disturbed by other processes only count if all were
			for (i = 1; i <= m; i++) {
				if (clean && dist[i]) continue
				n++; tps[n] = mt[i]; lat[n] = ml[i]; cpu[n] = mc[i]
			}
			if (n == 0) { print "NA NA NA 0 " total + 0; exit }
			# sort indices by tps, descending (insertion sort; n is tiny)
			for (i = 1; i <= n; i++) idx[i] = i
			for (i = 2; i <= n; i++) {
				v = idx[i]; j = i - 1
				while (j >= 1 && tps[idx[j]] < tps[v]) { idx[j + 1] = idx[j]; j-- }
				idx[j + 1] = v
			}
			if (agg == "best") {
				b = idx[1]; t = tps[b]; l = lat[b]; c = cpu[b]
			} else if (n % 2 == 1) {
				b = idx[(n + 1) / 2]; t = tps[b]; l = lat[b]; c = cpu[b]
			} else {
				a = idx[n / 2]; b = idx[n / 2 + 1]
				t = (tps[a] + tps[b]) / 2; l = (lat[a] + lat[b]) / 2
				c = (cpu[a] < 0 || cpu[b] < 0) ? -1 : (cpu[a] + cpu[b]) / 2
			}
			printf "%s %s %s %d %d\n", t, l, (c < 0 ? "NA" : c), n, total
		}'
}

fmt_tps() { if [[ $1 == NA ]]; then echo FAIL; else printf '%.0f' "$1"; fi; }
fmt_lat() { if [[ $1 == NA ]]; then echo "–"; else printf '%.3f' "$1"; fi; }
ratio() { if [[ $1 == NA || $2 == NA ]]; then echo "–"; else awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a / b}'; fi; }
added_us() { if [[ $1 == NA || $2 == NA ]]; then echo "–"; else awk -v a="$1" -v b="$2" 'BEGIN{printf "%+.0f", (a - b) * 1000}'; fi; }
fmt_cpu() { if [[ $1 == NA ]]; then echo "–"; else printf '%.1f' "$1"; fi; }

pgveil_rev() {
	[[ -n $PGVEIL ]] || return 0
	go version -m "$PGVEIL" 2>/dev/null |
		awk -F'[\t=]' '$3 == "vcs.revision" {r = substr($4, 1, 12)} $3 == "vcs.modified" && $4 == "true" {m = "+dirty"} END {print r m}'
}

report() {
	local cpu_model mem_gb
	cpu_model=$(awk -F': *' '/^model name/{print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
	mem_gb=$(awk '/^MemTotal/{printf "%.0f", $2 / 1048576}' /proc/meminfo 2>/dev/null || true)
	echo "### pgbench select-only (-S), $BENCH_AGG of $BENCH_ROUNDS x ${BENCH_SECONDS}s runs per target"
	echo
	echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "- machine: $(nproc) CPUs (${cpu_model:-unknown}), ${mem_gb:-?} GiB RAM, $(uname -sr)"
	echo "- $("$PGBIN/postgres" --version), $("$PGBOUNCER_BIN" --version 2>/dev/null | head -n 1), $("$PGBENCH" --version)"
	if [[ -n $PGVEIL ]]; then
		local src rev
		src=${PGVEIL_BIN:-built from this repo}
		rev=$(pgveil_rev)
		echo "- pgveil: $src${rev:+ (rev $rev)}, $(go version 2>/dev/null | awk '{print $3}')${PGVEIL_ARGS:+; extra args: \`$PGVEIL_ARGS\`}"
	else
		echo "- pgveil: skipped (SKIP_PGVEIL=1)"
	fi
	echo "- scale $BENCH_SCALE; PgBouncer pool_mode=session, default_pool_size=20; PostgreSQL fsync=off; all processes on loopback"
	echo "- PostgreSQL huge pages: $HUGE_NOTE"
	if [[ $BENCH_CPU_POLL == 1 ]]; then
		echo "- BENCH_CPU_POLL=1: /dev/cpu_dma_latency held at 0 µs; $(cpu_idle_state)"
	else
		echo "- BENCH_CPU_POLL=0: CPU idle states untouched (1-client rows include the cost of waking idle CPUs)"
	fi
	echo "- disturbance guard: runs during which other processes used > ${BENCH_MAX_OTHER_CPU}% of the machine's CPU were repeated (up to $BENCH_RETRIES times) and only count if a target has no undisturbed run; $(awk -v lim="$BENCH_MAX_OTHER_CPU" '$10 != "NA" && $10 + 0 > lim + 0 {n++} END {print n + 0}' "$RESULTS") of $(wc -l <"$RESULTS") recorded runs are still disturbed"
	echo
	echo "| mode | clients | direct TPS | PgBouncer TPS | pgveil TPS | PgBouncer/direct | pgveil/direct | pgveil/PgBouncer | latency ms direct / PgBouncer / pgveil | added µs PgBouncer−direct (1 client) | added µs pgveil−direct (1 client) | proxy CPU µs/txn PgBouncer / pgveil |"
	echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
	local mode clients d b v dt dl bt bl bc vt vl vc addb addv
	for mode in "${MODES[@]}"; do
		for clients in "${CLIENTS[@]}"; do
			read -r dt dl _ _ _ <<<"$(agg "$mode" "$clients" direct)"
			read -r bt bl bc _ _ <<<"$(agg "$mode" "$clients" pgbouncer)"
			if [[ -n $PGVEIL ]]; then
				read -r vt vl vc _ _ <<<"$(agg "$mode" "$clients" pgveil)"
				v=$(fmt_tps "$vt")
			else
				vt=NA vl=NA vc=NA v=skipped
			fi
			d=$(fmt_tps "$dt")
			b=$(fmt_tps "$bt")
			if ((clients == 1)); then
				addb=$(added_us "$bl" "$dl")
				addv=$(added_us "$vl" "$dl")
			else
				addb="–" addv="–"
			fi
			printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s / %s / %s | %s | %s | %s / %s |\n' \
				"$mode" "$clients" "$d" "$b" "$v" \
				"$(ratio "$bt" "$dt")" "$(ratio "$vt" "$dt")" "$(ratio "$vt" "$bt")" \
				"$(fmt_lat "$dl")" "$(fmt_lat "$bl")" "$(fmt_lat "$vl")" \
				"$addb" "$addv" "$(fmt_cpu "$bc")" "$(fmt_cpu "$vc")"
		done
	done
	if [[ -n $PGVEIL ]]; then
		echo
		echo "pgveil / PgBouncer paired by round (the two runs of a round are back to back, so a slow spell of the machine hits both): median of the rounds' ratios, its distribution-free 95% confidence interval (order statistics; needs 6 rounds or more), and in how many rounds pgveil had the higher TPS."
		echo
		echo "| mode | clients | rounds | median pgveil/PgBouncer | 95% CI of the median | rounds pgveil ahead |"
		echo "|---|---:|---:|---:|---:|---:|"
		for mode in "${MODES[@]}"; do
			for clients in "${CLIENTS[@]}"; do
				awk -v m="$mode" -v c="$clients" '
					$1 == m && $2 == c && $5 != "NA" && $3 == "pgbouncer" { b[$4] = $5 }
					$1 == m && $2 == c && $5 != "NA" && $3 == "pgveil" { v[$4] = $5 }
					END {
						n = 0; ahead = 0
						for (r in v) if (r in b) { n++; x[n] = v[r] / b[r]; if (x[n] > 1) ahead++ }
						for (i = 2; i <= n; i++) { t = x[i]; j = i - 1; while (j >= 1 && x[j] > t) { x[j + 1] = x[j]; j-- } x[j + 1] = t }
						med = n == 0 ? "–" : sprintf("%.3f", (n % 2) ? x[(n + 1) / 2] : (x[n / 2] + x[n / 2 + 1]) / 2)
						k = int((n + 1) / 2 - 0.98 * sqrt(n))
						ci = k < 1 ? "–" : sprintf("%.3f–%.3f", x[k], x[n + 1 - k])
						printf "| %s | %s | %d | %s | %s | %d of %d |\n", m, c, n, med, ci, ahead, n
					}' "$RESULTS"
			done
		done
	fi
	echo
	echo "<details><summary>all runs (TPS, in run order)</summary>"
	echo
	echo "| mode | clients | round | target | TPS | latency ms | failed txns | other CPU % | attempts |"
	echo "|---|---:|---:|---|---:|---:|---:|---:|---:|"
	awk '{printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $4, $3, ($5 == "NA" ? "FAIL" : sprintf("%.0f", $5)), $6, $9, $10, $11}' "$RESULTS"
	echo
	echo "</details>"
}

if [[ -n $BENCH_OUT ]]; then
	report | tee "$BENCH_OUT"
	log "report written to $BENCH_OUT"
else
	report
fi
if awk '$5 == "NA" {bad = 1} END {exit !bad}' "$RESULTS"; then
	log "WARNING: some runs failed (FAIL in the table)"
	exit 2
fi
