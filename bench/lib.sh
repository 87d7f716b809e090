# lib.sh is sourced by bench/masked.sh, tracking.sh and encryption.sh: the
# set-up they share (run.sh uses only its disturbance guard and the huge
# pages). It expects PGBIN and defines:
#   bench_workdir PREFIX  WORK, a temp dir PostgreSQL may use, and as_pg,
#                         the prefix that runs a command as the postgres OS
#                         user when run as root
#   free_port             a free TCP port on 127.0.0.1
#   hold_cpu_poll         hold a 0 µs PM QoS request on /dev/cpu_dma_latency
#                         (idle CPUs poll instead of halting, where a cpuidle
#                         driver acts on it; see README.md) when root can
#                         and BENCH_CPU_POLL is not 0; QOS_PID
#   cpu_idle_state        one line on what that request does here
#   start_pg              initdb and start PostgreSQL on PGPORT (tuned for
#                         benchmarks: fsync off, 256 MB shared buffers,
#                         huge pages as reserve_huge_pages decides)
#   reserve_huge_pages DATADIR
#                         decide HUGE_PAGES (on | off) for the cluster in
#                         DATADIR (initdb done, settings in its
#                         postgresql.conf) per BENCH_HUGE_PAGES (auto | on |
#                         off), raising vm.nr_hugepages when root can;
#                         HUGE_NOTE says what was done, for the report
#   release_huge_pages    give back what reserve_huge_pages added
#   stop_pg               stop it
#   psql_su ARGS          psql as the superuser on PGPORT
#   other_cpu_pct A B     % of the machine's CPU that processes outside the
#                         benchmark used between two "ns busy ours"
#                         snapshots (the script's cpu_snapshot; needs
#                         CLK_TCK and NCPU)
#   over_limit PCT [LIM]  whether PCT exceeds LIM (default
#                         BENCH_MAX_OTHER_CPU)

bench_workdir() {
	WORK=$(mktemp -d "/tmp/$1.XXXXXX")
	chmod 755 "$WORK"
	as_pg=()
	if [[ $(id -u) == 0 ]]; then
		chown postgres "$WORK"
		as_pg=(runuser -u postgres --)
	fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# cpu_idle_state prints what a 0 µs request on /dev/cpu_dma_latency does
# here: a PM QoS request acts through the cpuidle driver, so without one
# (current_driver "none": the kernel's default idle, HLT in a VM) idle
# CPUs halt whatever is requested.
cpu_idle_state() {
	local drv
	drv=$(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || true)
	if [[ -z $drv || $drv == none ]]; then
		echo "no cpuidle driver here, so idle CPUs halt regardless (the request has no effect; 1-client rows include the cost of waking halted vCPUs)"
	else
		echo "cpuidle driver $drv: idle CPUs poll instead of halting"
	fi
}

QOS_PID=
hold_cpu_poll() {
	if [[ -w /dev/cpu_dma_latency && ${BENCH_CPU_POLL:-1} != 0 ]]; then
		(
			exec 9>/dev/cpu_dma_latency
			printf '\x00\x00\x00\x00' >&9
			exec sleep 86400
		) &
		QOS_PID=$!
	fi
}

# Why huge pages: a new backend maps the shared buffers it touches page by
# page. With 4 kB pages, 16 fresh backends spend their first seconds in
# page faults (select-only throughput direct: 0.81, 0.93, 0.97 of the
# steady rate in seconds 1-3 on the reference machine). PgBouncer's pool
# keeps its backends, warm, from one run to the next, while direct
# connections and pgveil (one server connection per client session) start
# fresh ones every run, so short runs without huge pages measure that
# difference rather than the relays. With 2 MB pages the ramp is gone.
HUGE_PAGES=off
HUGE_NOTE=
HUGE_OLD=
reserve_huge_pages() {
	local data=$1 want=${BENCH_HUGE_PAGES:-auto} need free total runner=()
	HUGE_PAGES=off
	# PostgreSQL refuses to run as root.
	[[ $(id -u) != 0 ]] || runner=(runuser -u postgres --)
	case $want in
	off)
		HUGE_NOTE="off (BENCH_HUGE_PAGES=off)"
		return 0
		;;
	on | auto) ;;
	*)
		echo "BENCH_HUGE_PAGES must be auto, on or off" >&2
		return 1
		;;
	esac
	need=$("${runner[@]}" "$PGBIN/postgres" -D "$data" -C shared_memory_size_in_huge_pages 2>/dev/null) || need=
	free=$(avail_huge_pages)
	total=$(cat /proc/sys/vm/nr_hugepages 2>/dev/null)
	if ! [[ $need =~ ^[0-9]+$ && $need -gt 0 ]]; then
		HUGE_NOTE="off (PostgreSQL reports no huge page size here)"
	elif ! [[ $free =~ ^[0-9]+$ && $total =~ ^[0-9]+$ ]]; then
		HUGE_NOTE="off (no huge page counters in /proc)"
	elif ((free < need)) && ! [[ -w /proc/sys/vm/nr_hugepages ]]; then
		HUGE_NOTE="off ($free free huge pages, $need needed, and vm.nr_hugepages is not writable: run as root or reserve them)"
	else
		if ((free < need)); then
			HUGE_OLD=$total
			echo $((total + need - free)) >/proc/sys/vm/nr_hugepages 2>/dev/null || true
			free=$(avail_huge_pages)
		fi
		if ((free >= need)); then
			HUGE_PAGES=on
			HUGE_NOTE="on ($need pages for PostgreSQL's shared memory${HUGE_OLD:+; vm.nr_hugepages raised from $HUGE_OLD for the run})"
		else
			HUGE_NOTE="off (the kernel could reserve only $free of the $need huge pages needed)"
			release_huge_pages
		fi
	fi
	if [[ $want == on && $HUGE_PAGES == off ]]; then
		echo "BENCH_HUGE_PAGES=on, but huge pages are $HUGE_NOTE" >&2
		return 1
	fi
}

# avail_huge_pages: free huge pages not yet promised to a mapping.
avail_huge_pages() { awk '/^HugePages_Free:/ {f = $2} /^HugePages_Rsvd:/ {r = $2} END {if (f != "") print f - r}' /proc/meminfo 2>/dev/null; }

release_huge_pages() {
	if [[ -n $HUGE_OLD ]]; then
		echo "$HUGE_OLD" >/proc/sys/vm/nr_hugepages 2>/dev/null || true
		HUGE_OLD=
	fi
}

start_pg() {
	"${as_pg[@]}" "$PGBIN/initdb" -D "$WORK/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
	printf '%s\n' "shared_buffers = 256MB" "max_connections = 100" "fsync = off" "synchronous_commit = off" >>"$WORK/data/postgresql.conf"
	reserve_huge_pages "$WORK/data"
	echo "huge_pages = $HUGE_PAGES" >>"$WORK/data/postgresql.conf"
	echo "huge pages: $HUGE_NOTE" >&2
	"${as_pg[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w \
		-o "-p $PGPORT -k $WORK -c listen_addresses=127.0.0.1" start >/dev/null
}

# stop_pg stops PostgreSQL and gives back the huge pages reserved for it.
stop_pg() {
	"${as_pg[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null 2>&1 || true
	release_huge_pages
}

psql_su() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres "$@"; }

other_cpu_pct() {
	awk -v a="$1" -v b="$2" -v tck="$CLK_TCK" -v ncpu="$NCPU" 'BEGIN {
		split(a, x, " "); split(b, y, " ")
		wall = (y[1] - x[1]) / 1e9
		other = (y[2] - x[2]) - (y[3] - x[3])
		if (other < 0) other = 0
		printf "%.1f", (wall > 0) ? 100 * other / (wall * tck * ncpu) : 0
	}'
}

over_limit() { awk -v v="$1" -v lim="${2:-$BENCH_MAX_OTHER_CPU}" 'BEGIN { exit !(v > lim) }'; }
