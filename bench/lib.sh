# lib.sh is sourced by bench/masked.sh, tracking.sh and encryption.sh: the
# set-up they share (run.sh uses only its disturbance guard). It expects PGBIN and defines:
#   bench_workdir PREFIX  WORK, a temp dir PostgreSQL may use, and as_pg,
#                         the prefix that runs a command as the postgres OS
#                         user when run as root
#   free_port             a free TCP port on 127.0.0.1
#   hold_cpu_poll         hold a 0 µs PM QoS request on /dev/cpu_dma_latency
#                         (idle CPUs poll instead of halting; see README.md)
#                         when root can and BENCH_CPU_POLL is not 0; QOS_PID
#   start_pg              initdb and start PostgreSQL on PGPORT (tuned for
#                         benchmarks: fsync off, 256 MB shared buffers)
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

start_pg() {
	"${as_pg[@]}" "$PGBIN/initdb" -D "$WORK/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
	"${as_pg[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w \
		-o "-p $PGPORT -k $WORK -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c shared_buffers=256MB -c max_connections=100" start >/dev/null
}

stop_pg() { "${as_pg[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null 2>&1 || true; }

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
