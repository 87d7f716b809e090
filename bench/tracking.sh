#!/usr/bin/env bash
# tracking.sh measures what the usage ledger and the audit log cost: two
# pgveil instances with the same policy in front of one PostgreSQL, one
# plain (--policy) and one tracking every statement (--policy
# --usage-store sqlite:... --audit-log ...), alternating runs of
#   pass-through: pgbench's built-in select-only script as a role that sees
#                 everything raw (relayed unchanged; tracked through the
#                 literal-free facts cache), and
#   masked:       a select by id from a protected table as a masked role.
# Usage: bash bench/tracking.sh   (BENCH_SECONDS, BENCH_ROUNDS, BENCH_CLIENTS, BENCH_MODES;
#        BENCH_WORKLOADS; TRACK_PROFILE=cpu.out and PLAIN_PROFILE=cpu.out write CPU
#        profiles of the tracking and the plain instance; BENCH_PERF=1 prints,
#        instead of throughput, the proxy CPU per transaction by function, from
#        perf, tracked minus plain; BENCH_RATE=N prints, instead of throughput,
#        the proxies' CPU time per transaction at a fixed N transactions per
#        second, and what tracking adds, paired by round)
# Besides the throughput (the median of the paired ratios, and their
# geometric mean), each cell shows where it went, per transaction:
# the proxy's CPU time; the proxy's and PostgreSQL's CPU time relative to
# pgbench's own in the same run (the machine's speed, which swings on a
# shared host, cancels out: a ratio above 1 is work tracking added);
# pgbench's own CPU time, tracked run over plain run (above 1, tracking
# slowed the rest of the machine too, or changed how pgbench waits); the
# machine's idle share; the relay thread's CPU time and occupancy (the
# share of the run it was on a CPU or waiting for one); and what tracking
# costs the machine: the tracked proxy's extra CPU per transaction as a
# share of the machine's busy time per transaction, per pair (a steadier
# figure than throughput on a noisy host).
# Disturbance guard: a round (the pair of runs) during which processes
# outside the benchmark used more than BENCH_MAX_OTHER_CPU % of the
# machine (default 10) is repeated, up to BENCH_RETRIES times (default 3);
# the table shows the highest such share among the rounds kept.
set -euo pipefail
cd "$(dirname "$0")/.."

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
SECONDS_PER_RUN=${BENCH_SECONDS:-3}
ROUNDS=${BENCH_ROUNDS:-15}
CLIENTS=${BENCH_CLIENTS:-"1 16"}
MODES=${BENCH_MODES:-"simple prepared"}

. bench/lib.sh
bench_workdir veiltrack
cleanup() {
	for p in ${PLAIN_PID:-} ${TRACK_PID:-} ${QOS_PID:-}; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	stop_pg
	[[ ${BENCH_KEEP:-0} == 1 ]] || rm -rf "$WORK"
}
trap cleanup EXIT

# Idle CPUs poll instead of halting while this runs, where a cpuidle
# driver acts on the request (see bench/lib.sh).
hold_cpu_poll
[[ -z $QOS_PID ]] || echo "CPU idle: /dev/cpu_dma_latency held at 0 µs; $(cpu_idle_state)" >&2

PGPORT=$(free_port)
PLAIN=$(free_port)
TRACK=$(free_port)

start_pg

psql_su -d postgres <<SQL
CREATE ROLE analyst LOGIN;
CREATE ROLE app LOGIN;
CREATE ROLE pgveil LOGIN;
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn varchar(11), birth_date date, salary numeric(10,2), city text);
INSERT INTO customers
SELECT g, 'Name ' || g, 'user' || g || '@example.com', lpad((g * 7919 % 999999999)::text, 9, '0'),
       date '1950-01-01' + g % 20000, 30000 + g % 90000, 'City ' || g % 100
FROM generate_series(1, 100000) g;
ANALYZE customers;
GRANT SELECT ON customers TO analyst, app;
SQL
"$PGBIN/pgbench" -i -s 10 -q -h 127.0.0.1 -p "$PGPORT" -U postgres postgres >/dev/null 2>&1
psql_su -d postgres -c "GRANT SELECT, UPDATE ON ALL TABLES IN SCHEMA public TO app"

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
  app: { raw: all }
YAML

go build -o "$WORK/veil" .
up="postgres://pgveil@127.0.0.1:$PGPORT/postgres?sslmode=disable"
PGVEIL_CPUPROFILE="${PLAIN_PROFILE:-}" "$WORK/veil" serve --listen "127.0.0.1:$PLAIN" --admin-listen "" --log-level warn --policy "$WORK/policy.yaml" --upstream "$up" \
	>"$WORK/plain.log" 2>&1 &
PLAIN_PID=$!
PGVEIL_CPUPROFILE="${TRACK_PROFILE:-}" "$WORK/veil" serve --listen "127.0.0.1:$TRACK" --admin-listen "" --log-level warn --policy "$WORK/policy.yaml" --upstream "$up" \
	--usage-store "sqlite:$WORK/usage.db" --audit-log "$WORK/audit.log" >"$WORK/track.log" 2>&1 &
TRACK_PID=$!
for p in $PLAIN $TRACK; do
	for _ in $(seq 100); do "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$p" && break; sleep 0.1; done
done

printf '\\set id random(1, 100000)\nSELECT id, name, email, ssn, birth_date, salary FROM customers WHERE id = :id;\n' >"$WORK/masked.sql"

# CELLS: one "WORKLOAD USER SCRIPT MODE CLIENTS" line per cell of the
# tables: pass-through runs pgbench's select-only script as app (raw),
# masked the select above as analyst.
CELLS=()
for workload in ${BENCH_WORKLOADS:-pass-through masked}; do
	user=app script=builtin
	[[ $workload == masked ]] && user=analyst script="$WORK/masked.sql"
	for mode in $MODES; do
		for c in $CLIENTS; do CELLS+=("$workload $user $script $mode $c"); done
	done
done

CLK_TCK=$(getconf CLK_TCK)
# stat_ticks PID [children]: utime+stime of the process (all threads), or
# with "children" its cutime+cstime (its reaped children: for the
# postmaster, the CPU of the backends that exited), in clock ticks.
stat_ticks() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
	stat=${stat##*) }
	local -a f
	read -r -a f <<<"$stat"
	if [[ ${2:-} == children ]]; then echo $((f[13] + f[14])); else echo $((f[11] + f[12])); fi
}
# idle_ticks: the machine's idle and iowait time, in clock ticks.
idle_ticks() { awk '/^cpu /{print $5 + $6; exit}' /proc/stat; }
# thread_times PID: "TID RUN_NS WAIT_NS" per thread of the process (time on
# a CPU, and runnable but waiting for one, from schedstat).
thread_times() { for t in /proc/"$1"/task/*; do echo "${t##*/} $(cut -d' ' -f1,2 "$t/schedstat" 2>/dev/null)"; done | sort; }
# tps port user mode clients script|builtin -> "TPS PROXY PGBENCH POSTGRES
# IDLE": the throughput; the CPU time per transaction in µs of the proxy,
# of pgbench (its user and system time, from the shell's times) and of the
# PostgreSQL backends that served the run (counted by the postmaster when
# they exit, which the function waits for); and the share of the machine's
# CPU time that was idle during the run, in %; and of the proxy's busiest
# thread (the relay: the io_uring loop, or the one core of --procs 1), its
# CPU time per transaction in µs and the share of the run it was on a CPU
# or waiting for one (its occupancy: near 1, that thread bounds the
# throughput, and what tracking adds to it counts in full). The proxy's own CPU time per
# transaction is the machine-independent figure; pgbench's is the yardstick
# of the machine's speed during the run (tracking cannot change it).
tps() {
	local j=$(( $4 < 2 ? $4 : 2 ))
	local what=(-S)
	[[ $5 != builtin ]] && what=(-f "$5")
	local pid=$PLAIN_PID
	[[ $1 == "$TRACK" ]] && pid=$TRACK_PID
	local before after out pg0 pg1 kids i0 i1 t0 t1 th0 th1 top
	kids=$(pgrep -c -P "$PM_PID" || true)
	pg0=$(stat_ticks "$PM_PID" children)
	before=$(stat_ticks "$pid")
	th0=$(thread_times "$pid")
	i0=$(idle_ticks) t0=$(date +%s%N)
	out=$("$PGBIN/pgbench" -n -h 127.0.0.1 -p "$1" -U "$2" "${what[@]}" -M "$3" -c "$4" -j "$j" -T "$SECONDS_PER_RUN" postgres 2>/dev/null; times)
	i1=$(idle_ticks) t1=$(date +%s%N)
	th1=$(thread_times "$pid")
	top=$(join <(echo "$th0") <(echo "$th1") | awk '{r = $4 - $2; w = $5 - $3; if (r > br) {br = r; bw = w}} END{print br + 0, bw + 0}')
	after=$(stat_ticks "$pid")
	for _ in $(seq 100); do (($(pgrep -c -P "$PM_PID" || true) <= kids)) && break; sleep 0.01; done
	pg1=$(stat_ticks "$PM_PID" children)
	awk -v ticks=$((after - before)) -v pg=$((pg1 - pg0)) -v hz="$CLK_TCK" -v idle=$((i1 - i0)) -v wall=$((t1 - t0)) -v ncpu="$NCPU" -v top="$top" '
		function secs(s,  m) { m = s; sub(/m.*/, "", m); sub(/^[0-9]+m/, "", s); sub(/s$/, "", s); return m * 60 + s }
		/^tps = /{tps=$3} /number of transactions actually processed/{n=$NF}
		/^[0-9]+m[0-9.]+s [0-9]+m[0-9.]+s$/{bench=secs($1) + secs($2)} # the last such line: the children
		END{split(top, tt, " ")
			if (n > 0) printf "%s %.2f %.2f %.2f %.1f %.2f %.3f\n", tps, ticks/hz*1e6/n, bench*1e6/n, pg/hz*1e6/n, 100*idle/hz/(wall/1e9*ncpu), tt[1]/1e3/n, (tt[1]+tt[2])/wall
			else print "0 0 0 0 0 0 0"}' <<<"$out"
}
best() { awk -v a="$1" -v b="$2" 'BEGIN{print (b>a)?b:a}'; }

MAX_OTHER=${BENCH_MAX_OTHER_CPU:-10}
RETRIES=${BENCH_RETRIES:-3}
NCPU=$(nproc)
PM_PID=$(head -n 1 "$WORK/data/postmaster.pid")
# cpu_snapshot -> "WALL_NS BUSY_TICKS OUR_TICKS": the machine's user+system
# CPU time, and what the benchmark used (this shell with its reaped and
# live children, pgbench, the postmaster and its backends, both pgveils).
cpu_snapshot() {
	local busy ours
	busy=$(awk '/^cpu /{print $2 + $3 + $4; exit}' /proc/stat)
	ours=$(cat /proc/[0-9]*/stat 2>/dev/null | awk -v self=$$ -v pm="$PM_PID" -v a="$PLAIN_PID" -v b="$TRACK_PID" '
		{
			pid = $1; comm = $2; rest = $0; sub(/^.*\) /, "", rest); split(rest, f, " ")
			# f[2] = ppid, f[12..15] = utime stime cutime cstime
			if (pid == self || pid == pm || f[2] == self) t += f[12] + f[13] + f[14] + f[15]
			else if (f[2] == pm || pid == a || pid == b || comm == "(pgbench)") t += f[12] + f[13]
		}
		END { print t + 0 }')
	echo "$(date +%s%N) $busy $ours"
}

# Each round runs the two instances back to back (in alternating order)
# and keeps the ratio of that pair; the table shows the median ratio of
# the rounds (robust to a disturbed run) and the best TPS of each.
median() { sort -g | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
# median_ci: the distribution-free 95% confidence interval of the median
# of the numbers on stdin (order statistics k and n+1-k, k = the largest
# integer <= (n+1)/2 - 0.98 sqrt(n)); "–" for fewer than 6 numbers.
median_ci() { sort -g | awk '{a[NR]=$1} END{k=int((NR+1)/2 - 0.98*sqrt(NR)); if (k<1) print "–"; else printf "%.3f–%.3f", a[k], a[NR+1-k]}'; }
# geomean: the geometric mean of positive ratios and its normal 95%
# interval (on their logarithms): with the median, it shows whether a few
# disturbed pairs pull the typical ratio one way.
geomean() { awk '$1>0{l=log($1); s+=l; ss+=l*l; n++} END{if (n<2) {print "–"; exit} m=s/n; sd=sqrt((ss-n*m*m)/(n-1)); printf "%.3f (%.3f–%.3f)", exp(m), exp(m-1.96*sd/sqrt(n)), exp(m+1.96*sd/sqrt(n))}'; }
# BENCH_PERF=1: instead of the throughput rounds, profile both instances
# (perf record, cpu-clock, kernel included) during one run each per cell
# and print where the tracked instance's extra CPU goes: nanoseconds per
# transaction by function, tracked minus plain. The proxy's CPU per
# statement is a steadier figure than throughput on a noisy machine.
if [[ ${BENCH_PERF:-0} == 1 ]]; then
	command -v perf >/dev/null || { echo "BENCH_PERF=1 needs perf (Debian: linux-perf)" >&2; exit 2; }
	# profile PORT PID OUT USER MODE CLIENTS SCRIPT -> transactions run
	profile() {
		local j=$(($6 < 2 ? $6 : 2)) what=(-S)
		[[ $7 != builtin ]] && what=(-f "$7")
		perf record -q -e cpu-clock -F 4999 -p "$2" -o "$3" -- sleep $((SECONDS_PER_RUN + 1)) >/dev/null 2>&1 &
		local rec=$!
		sleep 0.5
		"$PGBIN/pgbench" -n -h 127.0.0.1 -p "$1" -U "$4" "${what[@]}" -M "$5" -c "$6" -j "$j" -T "$SECONDS_PER_RUN" postgres 2>/dev/null |
			awk '/number of transactions actually processed/{print $NF}'
		wait "$rec"
	}
	# by_symbol FILE TXNS: "DSO SYMBOL<TAB>ns per transaction", sorted
	by_symbol() {
		local n
		n=$(perf script -i "$1" -F comm 2>/dev/null | wc -l)
		perf report -i "$1" --no-children --sort dso,sym -g none -q --stdio 2>/dev/null |
			awk -v n="$n" -v t="$2" '{p=$1; sub(/%/, "", p); $1=""; sub(/^ +/, ""); printf "%s\t%.1f\n", $0, p/100*n/4999/t*1e9}' |
			sort -t$'\t' -k1,1
	}
	for cell in "${CELLS[@]}"; do
		read -r workload user script mode c <<<"$cell"
		tp=$(profile "$PLAIN" "$PLAIN_PID" "$WORK/plain.perf" "$user" "$mode" "$c" "$script")
		tt=$(profile "$TRACK" "$TRACK_PID" "$WORK/track.perf" "$user" "$mode" "$c" "$script")
		by_symbol "$WORK/plain.perf" "$tp" >"$WORK/plain.sym"
		by_symbol "$WORK/track.perf" "$tt" >"$WORK/track.sym"
		echo
		echo "$workload $mode, $c clients: proxy CPU ns per transaction by function (plain $tp, tracked $tt transactions)"
		join -t$'\t' -a1 -a2 -e 0 -o 0,1.2,2.2 "$WORK/plain.sym" "$WORK/track.sym" |
			awk -F'\t' '{a+=$2; b+=$3; printf "%8.0f %8.0f %+8.0f  %s\n", $2, $3, $3-$2, $1} END{printf "%8.0f %8.0f %+8.0f  (all)\n", a, b, b-a > "/dev/stderr"}' 2>"$WORK/total" |
			sort -k3 -g -r | awk -v n="${BENCH_PERF_TOP:-25}" 'NR <= n' | sed '1i\   plain  tracked    extra  function' | cat - "$WORK/total"
	done
	exit 0
fi
# BENCH_RATE=N: instead of the throughput rounds, run each instance in turn
# at a fixed N transactions per second (pgbench -R) and print the proxies'
# CPU time per transaction (all their threads, from /proc/PID/task/*/
# schedstat, in ns) and what tracking adds, the difference of each round's
# pair. This measures the cost itself rather than its effect on a
# saturated machine's throughput; single pairs still differ by 1-2 µs on
# a noisy VM, so run 30 rounds or more. The cost per statement is a
# little higher than at saturation, where more messages share each system
# call and the caches stay warmer.
if [[ -n ${BENCH_RATE:-} ]]; then
	# cpu_ns PID: the CPU time of all the process's threads, in ns.
	cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f", s}'; }
	# at_rate PORT PID USER MODE CLIENTS SCRIPT -> proxy CPU µs per transaction
	at_rate() {
		local j=$(($5 < 2 ? $5 : 2)) what=(-S) before after n
		[[ $6 != builtin ]] && what=(-f "$6")
		before=$(cpu_ns "$2")
		n=$("$PGBIN/pgbench" -n -h 127.0.0.1 -p "$1" -U "$3" "${what[@]}" -M "$4" -c "$5" -j "$j" -R "$BENCH_RATE" -T "$SECONDS_PER_RUN" postgres 2>/dev/null |
			awk '/number of transactions actually processed/{print $NF}')
		after=$(cpu_ns "$2")
		awk -v a="$before" -v b="$after" -v n="${n:-0}" 'BEGIN{printf "%.2f", (n>0)?(b-a)/n/1000:0}'
	}
	echo "| workload | mode | clients | rate (txn/s) | proxy CPU µs/txn, plain (median of $ROUNDS) | tracked | tracking adds, µs/txn (median of the pairs) | 95% CI | pairs |"
	echo "|---|---|---|---|---|---|---|---|---|"
	for cell in "${CELLS[@]}"; do
		read -r workload user script mode c <<<"$cell"
		ps=() ts=() ds=()
		for r in $(seq "$ROUNDS"); do
			if ((r % 2)); then
				p=$(at_rate "$PLAIN" "$PLAIN_PID" "$user" "$mode" "$c" "$script"); t=$(at_rate "$TRACK" "$TRACK_PID" "$user" "$mode" "$c" "$script")
			else
				t=$(at_rate "$TRACK" "$TRACK_PID" "$user" "$mode" "$c" "$script"); p=$(at_rate "$PLAIN" "$PLAIN_PID" "$user" "$mode" "$c" "$script")
			fi
			ps+=("$p"); ts+=("$t"); ds+=("$(awk -v a="$t" -v b="$p" 'BEGIN{printf "%.2f", a-b}')")
		done
		printf '| %s | %s | %s | %s | %.2f | %.2f | %.2f | %s | %s |\n' "$workload" "$mode" "$c" "$BENCH_RATE" \
			"$(printf '%s\n' "${ps[@]}" | median)" "$(printf '%s\n' "${ts[@]}" | median)" \
			"$(printf '%s\n' "${ds[@]}" | median)" "$(printf '%s\n' "${ds[@]}" | median_ci)" "${ds[*]}"
	done
	exit 0
fi
echo "| workload | mode | clients | pgveil TPS (best) | pgveil + ledger + audit TPS (best) | tracked / plain (median of $ROUNDS paired rounds) | 95% CI of the median | geometric mean (95% CI) | ratios | proxy CPU µs/txn plain → tracked (medians) | per pgbench CPU, tracked ÷ plain: proxy | PostgreSQL (medians of the pairs, 95% CI) | pgbench CPU per txn, tracked ÷ plain (same) | idle % plain → tracked (medians) | relay thread CPU µs/txn plain → tracked | its occupancy plain → tracked (medians) | tracking's extra proxy CPU, % of the machine's busy time per txn (median of the pairs, 95% CI) | other processes' CPU % (max) |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for cell in "${CELLS[@]}"; do
	read -r workload user script mode c <<<"$cell"
	bp=0 bt=0 ratios=() cpus_p=() cpus_t=() rel_proxy=() rel_pg=() rel_bench=() idle_p=() idle_t=() relay_p=() relay_t=() occ_p=() occ_t=() shares=() omax=0
	for r in $(seq "$ROUNDS"); do
		for attempt in $(seq 0 "$RETRIES"); do
			s0=$(cpu_snapshot)
			if (( r % 2 )); then
				read -r p cp gp kp ip rp op < <(tps "$PLAIN" "$user" "$mode" "$c" "$script"); read -r t ct gt kt it rt ot < <(tps "$TRACK" "$user" "$mode" "$c" "$script")
			else
				read -r t ct gt kt it rt ot < <(tps "$TRACK" "$user" "$mode" "$c" "$script"); read -r p cp gp kp ip rp op < <(tps "$PLAIN" "$user" "$mode" "$c" "$script")
			fi
			sleep 0.2 # let the process substitutions be reaped
			other=$(other_cpu_pct "$s0" "$(cpu_snapshot)")
			over_limit "$other" "$MAX_OTHER" || break
			((attempt < RETRIES)) && echo "  ($workload $mode $c round $r: other processes used $other% CPU; repeating)" >&2 && sleep 5
		done
		omax=$(best "$omax" "$other")
		cpus_p+=("$cp"); cpus_t+=("$ct"); idle_p+=("$ip"); idle_t+=("$it")
		relay_p+=("$rp"); relay_t+=("$rt"); occ_p+=("$op"); occ_t+=("$ot")
		# Each instance's CPU per transaction relative to pgbench's in the
		# same run: the machine's speed, which swings between runs on a
		# shared host, cancels out.
		rel_proxy+=("$(awk -v a="$ct" -v ga="$gt" -v b="$cp" -v gb="$gp" 'BEGIN{printf "%.4f", (ga>0 && gb>0 && b>0)?(a/ga)/(b/gb):0}')")
		rel_pg+=("$(awk -v a="$kt" -v ga="$gt" -v b="$kp" -v gb="$gp" 'BEGIN{printf "%.4f", (ga>0 && gb>0 && b>0)?(a/ga)/(b/gb):0}')")
		# pgbench's own CPU per transaction, tracked run over plain run:
		# the yardstick above. Above 1 (in the median of many pairs), the
		# tracked runs slowed the rest of the machine too (shared caches,
		# memory bandwidth), which the ratios above cancel out.
		rel_bench+=("$(awk -v a="$gt" -v b="$gp" 'BEGIN{printf "%.4f", (a>0 && b>0)?a/b:0}')")
		# What tracking costs the machine, decidable where throughput is
		# not: the tracked proxy's CPU per transaction beyond the plain
		# one's, both at the plain run's speed (scaled by pgbench's CPU),
		# over the whole machine's busy time per transaction in the plain
		# run. On a machine that is CPU-bound, throughput falls by about
		# this share, plus what the idle column adds.
		shares+=("$(awk -v a="$ct" -v ga="$gt" -v b="$cp" -v gb="$gp" -v tps="${p:-0}" -v idle="$ip" -v ncpu="$NCPU" 'BEGIN{busy = (tps>0)?ncpu*(100-idle)/100/tps*1e6:0; printf "%.2f", (ga>0 && busy>0)?100*(a/ga*gb - b)/busy:0}')")
		bp=$(best "$bp" "${p:-0}"); bt=$(best "$bt" "${t:-0}")
		ratios+=("$(awk -v a="${t:-0}" -v b="${p:-0}" 'BEGIN{printf "%.3f", (b>0)?a/b:0}')")
	done
	med=$(printf '%s\n' "${ratios[@]}" | median)
	ci=$(printf '%s\n' "${ratios[@]}" | median_ci)
	mcp=$(printf '%s\n' "${cpus_p[@]}" | median); mct=$(printf '%s\n' "${cpus_t[@]}" | median)
	rpx=$(printf '%s\n' "${rel_proxy[@]}" | median); rpxci=$(printf '%s\n' "${rel_proxy[@]}" | median_ci)
	rpg=$(printf '%s\n' "${rel_pg[@]}" | median); rpgci=$(printf '%s\n' "${rel_pg[@]}" | median_ci)
	rbe=$(printf '%s\n' "${rel_bench[@]}" | median); rbeci=$(printf '%s\n' "${rel_bench[@]}" | median_ci)
	gm=$(printf '%s\n' "${ratios[@]}" | geomean)
	mip=$(printf '%s\n' "${idle_p[@]}" | median); mit=$(printf '%s\n' "${idle_t[@]}" | median)
	mrp=$(printf '%s\n' "${relay_p[@]}" | median); mrt=$(printf '%s\n' "${relay_t[@]}" | median)
	mop=$(printf '%s\n' "${occ_p[@]}" | median); mot=$(printf '%s\n' "${occ_t[@]}" | median)
	msh=$(printf '%s\n' "${shares[@]}" | median); shci=$(printf '%s\n' "${shares[@]}" | median_ci)
	printf '| %s | %s | %s | %.0f | %.0f | %.3f | %s | %s | %s | %.1f → %.1f | %.3f (%s) | %.3f (%s) | %.3f (%s) | %.1f → %.1f | %.2f → %.2f | %.2f → %.2f | %.2f (%s) | %s |\n' "$workload" "$mode" "$c" "$bp" "$bt" "$med" "$ci" "$gm" "${ratios[*]}" "$mcp" "$mct" "$rpx" "$rpxci" "$rpg" "$rpgci" "$rbe" "$rbeci" "$mip" "$mit" "$mrp" "$mrt" "$mop" "$mot" "$msh" "$shci" "$omax"
done
kill "$TRACK_PID" "$PLAIN_PID"; wait "$TRACK_PID" "$PLAIN_PID" 2>/dev/null || true
TRACK_PID= PLAIN_PID=
lines=$(wc -l <"$WORK/audit.log")
echo
echo "audit log: $lines lines; $("$WORK/veil" audit verify "$WORK/audit.log" 2>&1 | head -1)"
# Records the queue could not hold are counted in gap markers: show them,
# with their reason, and what the tracked instance logged about them.
gaps=$(cat "$WORK"/audit.log* 2>/dev/null | grep -c '"kind":"gap"' || true)
if ((gaps > 0)); then
	echo "gap markers in the files kept: $gaps"
	cat "$WORK"/audit.log* | grep '"kind":"gap"' | head -n 5 | sed -e 's/,"prev":.*//' -e 's/^/  /'
	grep -i 'audit' "$WORK/track.log" | head -n 5 | sed 's/^/  log: /'
fi
