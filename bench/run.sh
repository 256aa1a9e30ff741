#!/usr/bin/env bash
# bench/run.sh — Kafscale's benchmark, in one command:
#
#     bash bench/run.sh            (or: make -C bench run)
#
# Builds the load generator and the peer (bench/load.c, bench/peer.c: gcc +
# pkg-config rdkafka) and the broker (make -C <repo> build/kafscale-broker),
# then runs the same librdkafka load against three targets, interleaved in
# every round (the starting target rotates from round to round):
#
#   embedded  our broker, embedded mode: SQLite metadata, records in a fresh
#             KAFSCALE_DATA_DIR on local disk (default flush interval, 5 ms)
#   s3        our broker in cluster mode: records in S3 (s3rver from
#             <repo>/.tools, a fresh bucket directory per round), metadata in
#             a fresh single-node etcd (Debian's etcd-server) per round,
#             default S3 flush interval (150 ms)
#   peer      librdkafka's in-process mock cluster (bench/peer.c)
#
# Workloads per target and round (docs/benchmarks.md explains each):
#   produce_100B  N100 x 100 B      consume_100B       the same back, hot
#   produce_1KiB  N1K x 1 KiB       consume_1KiB       the same back, hot
#   (broker restart; ours only)     consume_*_cold     both again, from objects
#   latency       LAT_MBPS MB/s of 1 KiB records for LAT_S s (produce latency)
#   e2e           E2E_MBPS MB/s of 1 KiB records for E2E_S s (end-to-end latency)
#   s3_cost       (s3 only) COST_MBPS MB/s for COST_S s: objects and requests per GiB
#   s3_cost_8clients  the same bytes/s from 8 producers with linger.ms=0 (more requests/s)
#
# Every run writes one JSON line to $OUT/results.jsonl; bench/report.py turns
# them into medians, ratios ours/peer and the Markdown table printed at the end
# ($OUT/summary.md). The machine is noisy: only same-run ratios mean anything.
#
# Environment knobs (defaults in brackets): ROUNDS [3], TARGETS ["embedded s3 peer"],
# N100 [1000000], N1K [200000], LAT_MBPS [20], LAT_S [10], E2E_MBPS [20], E2E_S [10],
# COST_MBPS [50], COST_S [10], WARMUP_S [1], PARTITIONS [32],
# BENCH_WORK [a fresh dir under /var/tmp, removed at the end unless KEEP_WORK=1; a
#   directory given here is used and never removed],
# BENCH_OUT [bench/results/<UTC timestamp>], SKIP_BUILD [0].
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")

ROUNDS=${ROUNDS:-3}
TARGETS=${TARGETS:-"embedded s3 peer"}
N100=${N100:-1000000}
N1K=${N1K:-200000}
LAT_MBPS=${LAT_MBPS:-20}
LAT_S=${LAT_S:-10}
E2E_MBPS=${E2E_MBPS:-20}
E2E_S=${E2E_S:-10}
COST_MBPS=${COST_MBPS:-50}
COST_S=${COST_S:-10}
WARMUP_S=${WARMUP_S:-1}
PARTITIONS=${PARTITIONS:-32}
SKIP_BUILD=${SKIP_BUILD:-0}
LOAD_TIMEOUT_S=300
TOPICS="bench-100b bench-1kib bench-lat bench-e2e bench-cost bench-cost8"

say() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- tools
need() { command -v "$1" >/dev/null 2>&1 || die "required tool '$1' is missing ($2)"; }
need gcc "apt-get install gcc"
need make "apt-get install make"
need pkg-config "apt-get install pkg-config"
need timeout "coreutils"
need find "findutils"
need node "apt-get install nodejs (for s3rver)"
pkg-config --exists rdkafka || die "librdkafka is missing: apt-get install librdkafka-dev"
RDK_INC=$(pkg-config --variable=includedir rdkafka)
[ -f "$RDK_INC/librdkafka/rdkafka_mock.h" ] || die "$RDK_INC/librdkafka/rdkafka_mock.h is missing (librdkafka-dev >= 1.4 ships it)"
PYTHON=/usr/bin/python3
[ -x "$PYTHON" ] || PYTHON=$(command -v python3 || true)
[ -n "$PYTHON" ] || die "python3 is missing (bench/report.py needs only its standard library)"
S3RVER_JS="$REPO/.tools/node_modules/s3rver/bin/s3rver.js"
case " $TARGETS " in *" s3 "*)
        [ -f "$S3RVER_JS" ] || die "s3rver is missing ($S3RVER_JS): run scripts/install-deps.sh --test (or: cd .tools && npm install s3rver@3.7.1)"
        need etcd "apt-get install etcd-server (metadata of the s3 target)"
        need curl "apt-get install curl";;
esac
for t in $TARGETS; do case $t in embedded|s3|peer) ;; *) die "unknown target '$t' (embedded, s3, peer)";; esac; done

# ---------------------------------------------------------------- cleanup
PIDS=()          # every background process this script started
PEER_FD=
WORK=
WORK_CREATED=0
cleanup() {
        local rc=$?
        trap - EXIT INT TERM
        for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
        for pid in "${PIDS[@]}"; do
                for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                kill -KILL "$pid" 2>/dev/null || true
        done
        [ -n "$PEER_FD" ] && exec {PEER_FD}>&- 2>/dev/null || true
        if [ "$WORK_CREATED" = 1 ] && [ -d "$WORK" ] && [ "${KEEP_WORK:-0}" != 1 ]; then rm -rf "$WORK"; fi
        exit $rc
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

forget_pid() { local p=$1 i; for i in "${!PIDS[@]}"; do if [ "${PIDS[$i]}" = "$p" ]; then unset 'PIDS[i]'; fi; done; return 0; }

stop_pid() {   # stop_pid PID WHAT: SIGTERM, wait up to 30 s, then SIGKILL
        local pid=$1 what=$2
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then say "$what ($pid) did not stop in 30 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
        wait "$pid" 2>/dev/null || true
        forget_pid "$pid"
}

# ---------------------------------------------------------------- build
OUT=${BENCH_OUT:-$BENCH_DIR/results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
if [ -n "${BENCH_WORK:-}" ]; then
        WORK=$BENCH_WORK   # the caller's: never removed
else
        WORK=$(mktemp -d /var/tmp/kafscale-bench.XXXXXX)
        WORK_CREATED=1
fi
mkdir -p "$WORK/bin"

if [ "$SKIP_BUILD" != 1 ]; then
        say "building bench/load and bench/peer"
        make -s -C "$BENCH_DIR" all >&2 || die "building bench/ failed"
        say "building the broker (make -C $REPO -j2 build/kafscale-broker)"
        make -s -C "$REPO" -j2 build/kafscale-broker >&2 || die "building the broker failed"
fi
for f in "$BENCH_DIR/build/load" "$BENCH_DIR/build/peer" "$REPO/build/kafscale-broker"; do
        [ -x "$f" ] || die "$f is missing (build failed?)"
done
# Private copies: other people rebuilding build/ during the run do not
# change what is measured, and profiles keep their symbols.
cp "$BENCH_DIR/build/load" "$BENCH_DIR/build/peer" "$REPO/build/kafscale-broker" "$WORK/bin/"
LOAD="$WORK/bin/load"; PEER="$WORK/bin/peer"; BROKER="$WORK/bin/kafscale-broker"
GIT_REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$REPO" diff --quiet HEAD -- src 2>/dev/null || GIT_REV="$GIT_REV+dirty"

# Configuration comes from the environment: start from none of the caller's.
for v in $(compgen -e | grep '^KAFSCALE_' || true); do unset "$v"; done

# ---------------------------------------------------------------- helpers
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
        local p
        for _ in $(seq 200); do
                p=$((20000 + RANDOM % 40000))
                port_in_use "$p" || { echo "$p"; return; }
        done
        die "no free TCP port found"
}

record() { printf '%s\n' "$1" >> "$RESULTS"; }

# rss_kb PID: current VmRSS
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo -1; }

# Broker instance state
B_PID='' B_PORT='' B_MPORT='' B_DATA='' B_MODE='' B_LOG='' S3_PID='' S3_PORT='' S3_DIR='' S3_LOG='' BOOTSTRAP=''
ETCD_PID='' ETCD_PORT='' ETCD_DIR=''

start_etcd() {     # fresh single-node etcd for the s3 target's metadata
        ETCD_DIR="$WORK/$1/etcd"
        rm -rf "$ETCD_DIR"; mkdir -p "$ETCD_DIR"
        local attempt peer
        for attempt in 1 2 3; do
                ETCD_PORT=$(free_port); peer=$(free_port)
                etcd --name n1 --data-dir "$ETCD_DIR/data" \
                        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
                        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
                        --initial-cluster "n1=http://127.0.0.1:$peer" --logger zap --log-level warn > "$ETCD_DIR/etcd.log" 2>&1 &
                ETCD_PID=$!; PIDS+=("$ETCD_PID")
                for _ in $(seq 200); do
                        kill -0 "$ETCD_PID" 2>/dev/null || break
                        curl -sf "http://127.0.0.1:$ETCD_PORT/health" >/dev/null 2>&1 && return 0
                        sleep 0.05
                done
                stop_pid "$ETCD_PID" etcd
                say "etcd did not start on port $ETCD_PORT (attempt $attempt): $(tail -3 "$ETCD_DIR/etcd.log" | tr '\n' ' ')"
        done
        die "etcd does not start; log: $ETCD_DIR/etcd.log"
}

start_s3rver() {   # fresh bucket directory
        S3_DIR="$WORK/$1/s3rver"; S3_LOG="$WORK/$1/s3rver.log"
        rm -rf "$S3_DIR"; mkdir -p "$S3_DIR"
        local attempt
        for attempt in 1 2 3; do
                S3_PORT=$(free_port)
                # Not --silent: its per-request log lines are how requests are counted.
                node --openssl-legacy-provider "$S3RVER_JS" -d "$S3_DIR" -a 127.0.0.1 -p "$S3_PORT" \
                        --configure-bucket kafscale > "$S3_LOG" 2>&1 &
                S3_PID=$!; PIDS+=("$S3_PID")
                for _ in $(seq 200); do
                        kill -0 "$S3_PID" 2>/dev/null || break
                        grep -q "listening on" "$S3_LOG" 2>/dev/null && return 0
                        sleep 0.05
                done
                stop_pid "$S3_PID" s3rver
                say "s3rver did not start on port $S3_PORT (attempt $attempt): $(tail -3 "$S3_LOG" | tr '\n' ' ')"
        done
        die "s3rver does not start; log: $S3_LOG"
}

launch_broker() {  # uses B_MODE B_DATA B_PORT B_MPORT; sets B_PID
        local -a env=(KAFSCALE_BROKER_ADDR="127.0.0.1:$B_PORT" KAFSCALE_METRICS_ADDR="127.0.0.1:$B_MPORT"
                      KAFSCALE_DATA_DIR="$B_DATA" KAFSCALE_LOG_LEVEL=info)
        if [ "$B_MODE" = s3 ]; then
                env+=(KAFSCALE_S3_BUCKET=kafscale KAFSCALE_S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
                      KAFSCALE_S3_ACCESS_KEY=S3RVER KAFSCALE_S3_SECRET_KEY=S3RVER
                      KAFSCALE_ETCD_ENDPOINTS="http://127.0.0.1:$ETCD_PORT")
        fi
        local mark; mark=$(wc -l < "$B_LOG" 2>/dev/null || echo 0)
        env "${env[@]}" "$BROKER" >> "$B_LOG" 2>&1 &
        B_PID=$!; PIDS+=("$B_PID")
        for _ in $(seq 400); do
                if ! kill -0 "$B_PID" 2>/dev/null; then wait "$B_PID" 2>/dev/null || true; forget_pid "$B_PID"; B_PID=; return 1; fi
                tail -n +"$((mark + 1))" "$B_LOG" | grep -q 'event=broker_started' && return 0
                sleep 0.05
        done
        stop_pid "$B_PID" broker; B_PID=
        return 1
}

start_broker() {   # start_broker embedded|s3 INSTANCE_DIR
        B_MODE=$1; B_DATA="$WORK/$2/data"; B_LOG="$WORK/$2/broker.log"
        rm -rf "$B_DATA"; mkdir -p "$B_DATA"; : > "$B_LOG"
        local attempt
        for attempt in 1 2 3; do
                B_PORT=$(free_port); B_MPORT=$(free_port)
                launch_broker && { BOOTSTRAP="127.0.0.1:$B_PORT"; return 0; }
                say "broker did not start (attempt $attempt): $(tail -3 "$B_LOG" | tr '\n' ' ')"
        done
        die "the broker does not start; log: $B_LOG"
}

RESTART_S=
restart_broker() { # SIGTERM, start again on the same data; sets RESTART_S (stop + start)
        local t0 t1; t0=$(date +%s.%N)
        stop_pid "$B_PID" broker
        launch_broker || die "the broker does not restart; log: $B_LOG"
        t1=$(date +%s.%N)
        RESTART_S=$(echo "$t0 $t1" | awk '{printf "%.3f", $2 - $1}')
}

start_peer() {
        local dir="$WORK/$1"; mkdir -p "$dir"
        rm -f "$dir/peer.stdin"; mkfifo "$dir/peer.stdin"
        # This script holds the FIFO's write end: when it exits for any
        # reason, even SIGKILL, the peer reads end-of-file and stops.
        exec {PEER_FD}<>"$dir/peer.stdin"
        # shellcheck disable=SC2086
        "$PEER" -p "$PARTITIONS" $TOPICS < "$dir/peer.stdin" > "$dir/peer.addr" 2> "$dir/peer.log" {PEER_FD}>&- &
        B_PID=$!; PIDS+=("$B_PID"); B_LOG="$dir/peer.log"; B_MODE=peer
        for _ in $(seq 200); do
                [ -s "$dir/peer.addr" ] && break
                kill -0 "$B_PID" 2>/dev/null || die "peer exited: $(cat "$dir/peer.log")"
                sleep 0.05
        done
        BOOTSTRAP=$(head -1 "$dir/peer.addr")
        [ -n "$BOOTSTRAP" ] || die "peer printed no bootstrap address"
}

stop_target() {
        if [ -n "$B_PID" ]; then stop_pid "$B_PID" "$B_MODE"; fi
        B_PID=
        if [ -n "$PEER_FD" ]; then exec {PEER_FD}>&-; PEER_FD=; fi
        if [ -n "$S3_PID" ]; then stop_pid "$S3_PID" s3rver; fi
        S3_PID=
        if [ -n "$ETCD_PID" ]; then stop_pid "$ETCD_PID" etcd; fi
        ETCD_PID=
}

objects_count() {  # objects currently in the target's object store
        case $B_MODE in
        embedded) find "$B_DATA/objects" -type f ! -name '*.tmp*' 2>/dev/null | wc -l ;;
        s3) find "$S3_DIR" -type f -name '*._S3rver_object' 2>/dev/null | wc -l ;;
        *) echo -1 ;;
        esac
}
requests_count() { # object-store requests so far (s3rver logs one line per answered request)
        case $B_MODE in
        s3) grep -cE ' [0-9]{3} [0-9.]+m?s [0-9.]+[kmg]?b' "$S3_LOG" 2>/dev/null || true ;;
        *) echo -1 ;;
        esac
}

# run_load ROUND TARGET WORKLOAD MODE ARGS...: one load run, one JSON line
run_load() {
        local round=$1 target=$2 workload=$3 mode=$4; shift 4
        if [ -z "$B_PID" ] || ! kill -0 "$B_PID" 2>/dev/null; then
                say "  $workload: skipped, $target is not running"
                record "{\"round\":$round,\"target\":\"$target\",\"workload\":\"$workload\",\"ok\":false,\"error\":\"target not running\"}"
                return 0
        fi
        local o0 r0 o1 r1 line rc=0
        o0=$(objects_count); r0=$(requests_count)
        local -a store=()
        if [ -n "$S3_PID" ]; then store=(-q "$S3_PID"); fi
        line=$(timeout "$LOAD_TIMEOUT_S" "$LOAD" "$mode" -b "$BOOTSTRAP" -p "$B_PID" "${store[@]}" -l "$target/$workload/$round" "$@" \
                2>> "$OUT/load-stderr.log") || rc=$?
        o1=$(objects_count); r1=$(requests_count)
        [ -n "$line" ] || line="{\"ok\":false,\"error\":\"load exited $rc without output\"}"
        record "{\"round\":$round,\"target\":\"$target\",\"workload\":\"$workload\",\"objects_written\":$((o1 - o0)),\"store_requests\":$((r1 - r0)),\"exit\":$rc,\"load\":$line}"
        local brief
        brief=$(printf '%s' "$line" | grep -oE '"(msgs_per_s|mb_per_s|produce_p99_ms|e2e_p99_ms|ok)":[^,}]*' | tr '\n' ' ')
        say "  $workload: $brief"
        if [ $rc != 0 ]; then say "  $workload: load exited $rc (see $OUT/load-stderr.log)"; fi
        return 0
}

create_topics() {  # ours: CreateTopics through librdkafka (the peer creates its own)
        local t
        for t in $TOPICS; do
                timeout 60 "$LOAD" create -b "$BOOTSTRAP" -t "$t" -P "$PARTITIONS" >/dev/null 2>>"$OUT/load-stderr.log" \
                        || die "creating topic $t on $B_MODE failed (see $OUT/load-stderr.log)"
        done
}

run_target() {   # run_target ROUND TARGET
        local round=$1 target=$2 inst="r$1-$2" idle rt
        say "round $round: $target"
        case $target in
        embedded) start_broker embedded "$inst" ;;
        s3) start_s3rver "$inst"; start_etcd "$inst"; start_broker s3 "$inst" ;;
        peer) start_peer "$inst" ;;
        esac
        sleep 1
        idle=$(rss_kb "$B_PID")
        record "{\"round\":$round,\"target\":\"$target\",\"workload\":\"idle\",\"idle_rss_kb\":$idle}"
        [ "$target" = peer ] || create_topics

        run_load "$round" "$target" produce_100B produce -t bench-100b -n "$N100" -s 100
        run_load "$round" "$target" consume_100B consume -t bench-100b
        run_load "$round" "$target" produce_1KiB produce -t bench-1kib -n "$N1K" -s 1024
        run_load "$round" "$target" consume_1KiB consume -t bench-1kib
        if [ "$target" != peer ] && [ -n "$B_PID" ]; then
                restart_broker
                rt=$RESTART_S
                sleep 1
                idle=$(rss_kb "$B_PID")
                record "{\"round\":$round,\"target\":\"$target\",\"workload\":\"restart\",\"restart_s\":$rt,\"idle_rss_kb\":$idle}"
                run_load "$round" "$target" consume_100B_cold consume -t bench-100b
                run_load "$round" "$target" consume_1KiB_cold consume -t bench-1kib
        fi
        run_load "$round" "$target" latency latency -t bench-lat -s 1024 -r "$LAT_MBPS" -d "$LAT_S" -w "$WARMUP_S"
        run_load "$round" "$target" e2e e2e -t bench-e2e -s 1024 -r "$E2E_MBPS" -d "$E2E_S" -w "$WARMUP_S"
        if [ "$target" = s3 ]; then
                # Same bytes per second twice: one producer with the settings
                # above, then 8 producers (8 connections) with linger.ms=0:
                # several times the produce requests per second. The objects
                # per GiB must not follow the request rate.
                run_load "$round" "$target" s3_cost latency -t bench-cost -s 1024 -r "$COST_MBPS" -d "$COST_S" -w "$WARMUP_S"
                run_load "$round" "$target" s3_cost_8clients latency -t bench-cost8 -s 1024 -r "$COST_MBPS" -d "$COST_S" -w "$WARMUP_S" -c 8 -X linger.ms=0
        fi
        # Keep the logs. The data stays until the end of the run: deleting
        # hundreds of thousands of files makes ext4 (without a journal, as
        # here) skip "recently deleted" inodes on every file creation for
        # minutes afterwards, which would slow the next round's broker.
        if [ -f "$WORK/$inst/broker.log" ]; then cp "$WORK/$inst/broker.log" "$OUT/$inst-broker.log"; fi
        if [ -f "$WORK/$inst/peer.log" ]; then cp "$WORK/$inst/peer.log" "$OUT/$inst-peer.log"; fi
        stop_target
        du -sk "$WORK/$inst" 2>/dev/null | awk -v i="$inst" '{printf "  %s: %.0f MiB on disk\n", i, $1 / 1024}' >&2 || true
}

# ---------------------------------------------------------------- run
# File creation cost on the data file system. ext4 without a journal (as on
# these machines) skips every inode deleted in the last minutes when it
# allocates a new one: after a large deletion (such as the end of a previous
# run) creating a file costs ~20x more for up to ~6 minutes, and the
# embedded target, which creates two files per flush, looks much worse.
fs_create_us() {   # CPU per file created in 32 directories (like a topic's partitions) x 30 files
        "$PYTHON" - "$WORK/fs-probe" <<'PY'
import os, sys, time
d = sys.argv[1]
os.makedirs(d, exist_ok=True)
c0 = time.process_time()
for p in range(32):
    os.mkdir("%s/%d" % (d, p))
    for i in range(30):
        os.close(os.open("%s/%d/f%d" % (d, p, i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
print(int((time.process_time() - c0) / (32 * 31) * 1e6))
PY
}
FS_US=$(fs_create_us || echo -1)
if [ "$FS_US" -gt 100 ]; then
        say "WARNING: creating a file takes ${FS_US} us of CPU on $WORK (normally 10-30 us): probably many files were deleted"
        say "WARNING: there in the last minutes (ext4 without a journal skips recently deleted inodes). The embedded"
        say "WARNING: target will look worse than it is; wait ~6 minutes and run again for clean numbers."
fi

{
        echo "date_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "git=$GIT_REV"
        echo "nproc=$(nproc)"
        echo "cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
        echo "mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
        echo "kernel=$(uname -r)"
        echo "librdkafka=$(pkg-config --modversion rdkafka)"
        echo "work_fs=$(df -T "$WORK" | awk 'NR==2 {print $2, $1}')"
        echo "fs_create_us=$FS_US"
        echo "rounds=$ROUNDS targets=$TARGETS n100=$N100 n1k=$N1K lat=${LAT_MBPS}MB/s*${LAT_S}s e2e=${E2E_MBPS}MB/s*${E2E_S}s cost=${COST_MBPS}MB/s*${COST_S}s warmup=${WARMUP_S}s partitions=$PARTITIONS"
} > "$OUT/machine.txt"
say "results in $OUT (work dir $WORK)"
sed 's/^/    /' "$OUT/machine.txt" >&2

read -r -a TLIST <<< "$TARGETS"
START=$(date +%s)
for ((round = 1; round <= ROUNDS; round++)); do
        n=${#TLIST[@]}
        for ((i = 0; i < n; i++)); do
                run_target "$round" "${TLIST[$(( (i + round - 1) % n ))]}"
        done
done
say "all rounds done in $(( $(date +%s) - START )) s"

"$PYTHON" "$BENCH_DIR/report.py" "$OUT" > "$OUT/summary.md" || die "report.py failed"
cat "$OUT/summary.md"
say "table: $OUT/summary.md; raw results: $RESULTS"
