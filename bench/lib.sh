# shellcheck shell=bash
# Shared helpers for the load benchmarks in bench/. Source it:
#
#   source "$(dirname "$0")/lib.sh"
#
# What it gives a benchmark script:
#   build_release                      release binaries + examples (incl. loadgen → LOADGEN_BIN), once
#                                      (BENCH_SKIP_BUILD=1 skips)
#   ensure_load_tool                   wrk (apt-get), else hey; sets LOAD_TOOL
#   wait_for_quiet                     waits while cargo/rustc run (other builds skew the numbers)
#   noise_watch_start/noise_watch_stop seconds during which cargo/rustc ran in between
#   start_mock [ARGS...]               mock-llm on 127.0.0.1:0 → MOCK_PID, MOCK_URL
#   start_proxy CONFIG [VAR=VAL...]    llm-proxy --config CONFIG --port 0 → PROXY_PID, PROXY_URL, PROXY_LOG
#   stop_process PID                   SIGTERM, then SIGKILL after BENCH_STOP_TIMEOUT s
#   make_chat_body BYTES MODEL [STREAM] an OpenAI chat body of exactly BYTES bytes
#   run_load URL BODY_FILE SECONDS CONNECTIONS [THREADS]
#                                      POSTs BODY_FILE for SECONDS; prints one JSON object
#   run_load_paced URL BODY_FILE SECONDS RATE [CONNECTIONS]
#                                      the same at about RATE requests/s
#   proxy_cpu_seconds PID              user+system CPU of a process (all threads), /proc/PID/stat
#   thread_cpu_json PID                {"thread name": cpu seconds} summed over same-named threads
#   rss_kb PID                         resident set size, /proc/PID/status
#   metric_sum URL NAME                sum of a Prometheus metric's samples at URL/metrics
#   median / percentile P              of numbers on stdin
#   bench_meta_json                    git sha, date, machine, tool versions (JSON)
#   start_postgres                     a private PostgreSQL cluster on 127.0.0.1 → PG_PORT, PG_DIR;
#                                      pg_createdb NAME prints its URL; stopped on exit
#
# Everything started here is stopped on exit (trap). Scratch files live in
# BENCH_WORK (a fresh temp dir, removed on exit unless BENCH_KEEP_WORK=1).
# Network: loopback only.

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
RESULTS_DIR=${BENCH_RESULTS_DIR:-$BENCH_DIR/results}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
RELEASE_DIR=$TARGET_DIR/release
PROXY_BIN=$RELEASE_DIR/llm-proxy
MOCK_BIN=$RELEASE_DIR/mock-llm
STATS_BENCH_BIN=$RELEASE_DIR/examples/stats_bench
LOADGEN_BIN=$RELEASE_DIR/examples/loadgen
BENCH_STOP_TIMEOUT=${BENCH_STOP_TIMEOUT:-60}
BENCH_START_TIMEOUT=${BENCH_START_TIMEOUT:-300}
BENCH_WORK=$(mktemp -d "${TMPDIR:-/tmp}/llm-proxy-bench.XXXXXX")
LOAD_TOOL=""
BENCH_NOISY_RUNS=0
_BENCH_PIDS=()
_BENCH_PG_DIRS=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

_bench_cleanup() {
    local rc=$?
    local pid
    for pid in "${_BENCH_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for pid in "${_BENCH_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    local pg
    for pg in "${_BENCH_PG_DIRS[@]}"; do
        _pg_as "$PG_BIN/pg_ctl" -D "$pg/data" -m fast -w stop >/dev/null 2>&1 || true
    done
    if [[ ${BENCH_KEEP_WORK:-0} == 1 ]]; then
        log "scratch files kept in $BENCH_WORK"
    else
        rm -rf "$BENCH_WORK"
    fi
    return "$rc"
}
trap _bench_cleanup EXIT
trap 'exit 130' INT TERM

need() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null || die "$c is required (apt-get install -y $c)"
    done
}
need curl jq awk getconf

# --- PostgreSQL -----------------------------------------------------------------

# Runs a PostgreSQL tool as user postgres when we are root (initdb refuses root).
_pg_as() {
    if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi
}

# A private cluster in BENCH_WORK on a free loopback port (trust auth).
start_postgres() {
    PG_BIN=$(compgen -G '/usr/lib/postgresql/*/bin' | sort -V | tail -1)
    [[ -x $PG_BIN/initdb ]] || die "PostgreSQL is not installed (apt-get install postgresql)"
    PG_DIR=$BENCH_WORK/pg
    mkdir -p "$PG_DIR"
    if ((EUID == 0)); then chown postgres: "$PG_DIR" && chmod o+x "$BENCH_WORK"; fi
    PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    _pg_as "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U postgres -E UTF8 --no-sync >/dev/null
    _pg_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w \
        -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c shared_buffers=256MB" start >/dev/null
    _BENCH_PG_DIRS+=("$PG_DIR")
    log "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT"
}

# pg_createdb NAME → prints postgres://postgres@127.0.0.1:PORT/NAME
pg_createdb() {
    "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
        -c "CREATE DATABASE \"$1\"" >/dev/null
    echo "postgres://postgres@127.0.0.1:$PG_PORT/$1"
}

# pg_sql DB SQL → the unaligned answer
pg_sql() {
    "$PG_BIN/psql" -X -q -A -t -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$1" -c "$2"
}

# --- Build and tools ----------------------------------------------------------

# Builds the proxy, the mock upstream and the usage examples in release mode.
build_release() {
    if [[ ${BENCH_SKIP_BUILD:-0} == 1 ]]; then
        log "BENCH_SKIP_BUILD=1: using the binaries in $RELEASE_DIR"
    else
        log "building release binaries (cargo build --release)"
        (cd "$REPO_ROOT" && cargo build --release -p llm-proxy -p mock-llm -p llm-proxy-usage \
            -p llm-proxy-testkit --bins --examples) >&2
    fi
    local b
    for b in "$PROXY_BIN" "$MOCK_BIN" "$STATS_BENCH_BIN" "$LOADGEN_BIN"; do
        [[ -x $b ]] || die "missing $b (build failed?)"
    done
    # Snapshot: other builds on this machine may replace target/release/*
    # while a benchmark runs; every run of one session uses the same binaries.
    mkdir -p "$BENCH_WORK/bin"
    cp "$PROXY_BIN" "$MOCK_BIN" "$STATS_BENCH_BIN" "$LOADGEN_BIN" "$BENCH_WORK/bin/"
    PROXY_BIN=$BENCH_WORK/bin/llm-proxy
    MOCK_BIN=$BENCH_WORK/bin/mock-llm
    STATS_BENCH_BIN=$BENCH_WORK/bin/stats_bench
    LOADGEN_BIN=$BENCH_WORK/bin/loadgen
}

_apt_install() {
    local pkg=$1
    command -v apt-get >/dev/null || return 1
    local sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo -n)
    "${sudo[@]}" apt-get install -y "$pkg" >&2 ||
        { "${sudo[@]}" apt-get update >&2 && "${sudo[@]}" apt-get install -y "$pkg" >&2; }
}

# Sets LOAD_TOOL to wrk (preferred: Lua hook gives exact percentiles) or hey.
ensure_load_tool() {
    if [[ -n ${BENCH_LOAD_TOOL:-} ]]; then
        LOAD_TOOL=$BENCH_LOAD_TOOL
    elif command -v wrk >/dev/null || _apt_install wrk; then
        LOAD_TOOL=wrk
    elif command -v hey >/dev/null || _apt_install hey; then
        LOAD_TOOL=hey
    else
        die "no load tool: install wrk or hey"
    fi
    command -v "$LOAD_TOOL" >/dev/null || die "$LOAD_TOOL not found"
    log "load tool: $LOAD_TOOL"
}

load_tool_version() {
    case $LOAD_TOOL in
    wrk) wrk --version 2>&1 | head -1 | awk '{print $1, $2}' ;;
    hey) dpkg-query -W -f='hey ${Version}' hey 2>/dev/null || echo hey ;;
    *) echo "" ;;
    esac
}

# Waits (up to BENCH_QUIET_MAX_WAIT s, default 1800) while a cargo or rustc
# process runs: the machine is shared, and a compile next to a load test
# ruins it. Counts the runs that started anyway in BENCH_NOISY_RUNS.
wait_for_quiet() {
    local max=${BENCH_QUIET_MAX_WAIT:-1800} waited=0
    while pgrep -x cargo >/dev/null || pgrep -x rustc >/dev/null; do
        if ((waited == 0)); then log "waiting for cargo/rustc to finish (shared machine)"; fi
        if ((waited >= max)); then
            log "still compiling after ${max}s; measuring anyway (marked noisy)"
            BENCH_NOISY_RUNS=$((BENCH_NOISY_RUNS + 1))
            return 0
        fi
        sleep 5
        waited=$((waited + 5))
    done
}

# noise_watch_start / noise_watch_stop: counts the seconds in between during
# which a cargo or rustc process ran; noise_watch_stop prints that count.
noise_watch_start() {
    NOISE_FILE=$(mktemp "$BENCH_WORK/noise.XXXX")
    (while :; do
        if pgrep -x cargo >/dev/null || pgrep -x rustc >/dev/null; then echo x >>"$NOISE_FILE"; fi
        sleep 1
    done) &
    NOISE_PID=$!
    _BENCH_PIDS+=("$NOISE_PID")
}
noise_watch_stop() {
    kill "$NOISE_PID" 2>/dev/null || true
    wait "$NOISE_PID" 2>/dev/null || true
    _forget_pid "$NOISE_PID"
    wc -l <"$NOISE_FILE" | tr -d ' '
}

# --- Processes ------------------------------------------------------------------

# wait_ready_line LOG PREFIX PID TIMEOUT → prints the URL following PREFIX.
wait_ready_line() {
    local logf=$1 prefix=$2 pid=$3 timeout=$4
    local deadline=$((SECONDS + timeout)) url
    while ((SECONDS < deadline)); do
        url=$(grep -m1 -o "${prefix}http://[^ ]*" "$logf" 2>/dev/null | sed "s|^${prefix}||" || true)
        if [[ -n $url ]]; then
            printf '%s\n' "${url%/}"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -20 "$logf" >&2
            die "process $pid exited before printing its ready line"
        fi
        sleep 0.05
    done
    tail -20 "$logf" >&2
    die "no ready line from process $pid after ${timeout}s"
}

_forget_pid() {
    local pid=$1 keep=() p
    for p in "${_BENCH_PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    _BENCH_PIDS=("${keep[@]}")
}

# start_mock [MOCK-LLM ARGS...]: zero delay unless ARGS say otherwise.
start_mock() {
    local logf
    logf=$(mktemp "$BENCH_WORK/mock.XXXX.log")
    "$MOCK_BIN" --host 127.0.0.1 --port 0 "$@" >"$logf" 2>&1 &
    MOCK_PID=$!
    _BENCH_PIDS+=("$MOCK_PID")
    MOCK_URL=$(wait_ready_line "$logf" 'mock-llm listening on ' "$MOCK_PID" 30)
    MOCK_LOG=$logf
    log "mock-llm pid $MOCK_PID at $MOCK_URL"
}

# start_proxy CONFIG [VAR=VALUE...]: the environment assignments apply to the
# proxy only (e.g. USAGE_TRACKING_ENABLED=true).
start_proxy() {
    local config=$1
    shift
    local logf
    logf=$(mktemp "$BENCH_WORK/proxy.XXXX.log")
    env "$@" "$PROXY_BIN" --config "$config" --host 127.0.0.1 --port 0 >"$logf" 2>&1 &
    PROXY_PID=$!
    _BENCH_PIDS+=("$PROXY_PID")
    PROXY_URL=$(wait_ready_line "$logf" 'llm-proxy listening on ' "$PROXY_PID" "$BENCH_START_TIMEOUT")
    PROXY_LOG=$logf
    log "llm-proxy pid $PROXY_PID at $PROXY_URL ${*}"
}

# stop_process PID: SIGTERM, wait up to BENCH_STOP_TIMEOUT s, then SIGKILL.
# Returns the process's exit status (143 etc.), never fails the script.
stop_process() {
    local pid=$1 i rc=0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < BENCH_STOP_TIMEOUT * 10; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "process $pid ignored SIGTERM for ${BENCH_STOP_TIMEOUT}s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || rc=$?
    _forget_pid "$pid"
    return 0
}

# --- Load -------------------------------------------------------------------------

# make_chat_body BYTES MODEL [STREAM=false]: an OpenAI chat body of exactly
# BYTES bytes (English filler text in one user message).
make_chat_body() {
    local bytes=$1 model=$2 stream=${3:-false}
    local head="{\"model\":\"$model\",\"stream\":$stream,\"messages\":[{\"role\":\"user\",\"content\":\""
    local tail='"}]}'
    local n=$((bytes - ${#head} - ${#tail}))
    ((n > 0)) || die "body of $bytes bytes is too small"
    local filler="The quick brown fox jumps over the lazy dog, then reads the logs again. " content=""
    while ((${#content} < n)); do content+=$filler; done
    printf '%s%s%s' "$head" "${content:0:n}" "$tail"
}

_wrk_script() {
    local f=$BENCH_WORK/post.lua
    if [[ ! -f $f ]]; then
        cat >"$f" <<'LUA'
-- POST the file named by BENCH_BODY_FILE; print a JSON summary at the end.
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

-- BENCH_UNIQUE_BODY=1: every request's first "content" starts with a unique
-- "<thread>-<n> " (a few bytes longer), so no cache can recognise the text.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
if os.getenv("BENCH_UNIQUE_BODY") == "1" then
  local n = 0
  local body = wrk.body
  request = function()
    n = n + 1
    local b = string.gsub(body, '"content":"', '"content":"' .. tostring(tid) .. "-" .. n .. " ", 1)
    return wrk.format(nil, nil, nil, b)
  end
end

-- Pacing: each connection waits BENCH_DELAY_MS after a response before its
-- next request (wrk has no open-loop mode; run_load_paced picks the delay).
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
if pause > 0 then
  delay = function() return pause end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_s":%.6f,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_ms":{"min":%.3f,"mean":%.3f,"stdev":%.3f,"p50":%.3f,"p90":%.3f,"p99":%.3f,"p999":%.3f,"max":%.3f}}\n',
    summary.requests, summary.duration / 1e6, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min / 1e3, latency.mean / 1e3, latency.stdev / 1e3,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3,
    latency:percentile(99) / 1e3, latency:percentile(99.9) / 1e3, latency.max / 1e3))
end
LUA
    fi
    printf '%s\n' "$f"
}

# run_load URL BODY_FILE SECONDS CONNECTIONS [THREADS]: closed-loop load (each
# connection sends its next request when the previous response is complete).
# BENCH_UNIQUE_BODY=1 (wrk only) makes every request's text unique.
# Prints {"tool","requests","duration_s","rps","non_2xx","socket_errors",
# "latency_ms":{p50,p90,p99,...}}. `requests` counts every complete response,
# non-2xx included (and counted again in non_2xx); requests cut off when
# the time is up are not counted.
run_load() {
    local url=$1 body=$2 secs=$3 conns=$4 threads=${5:-}
    [[ -n $threads ]] || threads=$(($(nproc) < conns ? $(nproc) : conns))
    local out
    case $LOAD_TOOL in
    wrk)
        out=$(BENCH_BODY_FILE=$body BENCH_DELAY_MS=${BENCH_DELAY_MS:-0} BENCH_UNIQUE_BODY=${BENCH_UNIQUE_BODY:-0} wrk -t "$threads" -c "$conns" -d "${secs}s" --timeout 10s \
            -s "$(_wrk_script)" "$url") || die "wrk failed: $out"
        local j
        j=$(grep '^BENCH_JSON ' <<<"$out" | sed 's/^BENCH_JSON //')
        [[ -n $j ]] || die "no summary from wrk: $out"
        jq -c --argjson c "$conns" --argjson t "$threads" '{tool:"wrk", connections:$c, threads:$t,
            requests, duration_s, rps:(.requests / .duration_s),
            non_2xx:.errors.status,
            socket_errors:(.errors.connect + .errors.read + .errors.write + .errors.timeout),
            errors, latency_ms}' <<<"$j"
        ;;
    hey)
        local csv=$BENCH_WORK/hey.csv
        hey -z "${secs}s" -c "$conns" ${BENCH_HEY_QPS:+-q "$BENCH_HEY_QPS"} -m POST -T application/json -D "$body" -o csv "$url" >"$csv" ||
            die "hey failed"
        # columns: response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset
        local lat
        lat=$(awk -F, 'NR > 1 && $1 != "" { print $1 * 1000 }' "$csv" | sort -g)
        local n non2xx
        n=$(awk -F, 'NR > 1 && $7 != "" { n++ } END { print n + 0 }' "$csv")
        non2xx=$(awk -F, 'NR > 1 && $7 != "" && ($7 < 200 || $7 > 299) { n++ } END { print n + 0 }' "$csv")
        jq -cn --argjson c "$conns" --argjson n "$n" --argjson bad "$non2xx" --argjson s "$secs" \
            --argjson p50 "$(percentile 50 <<<"$lat")" --argjson p90 "$(percentile 90 <<<"$lat")" \
            --argjson p99 "$(percentile 99 <<<"$lat")" --argjson p999 "$(percentile 99.9 <<<"$lat")" \
            --argjson max "$(tail -1 <<<"$lat")" \
            '{tool:"hey", connections:$c, requests:$n, duration_s:$s, rps:($n / $s), non_2xx:$bad,
              socket_errors:null, latency_ms:{p50:$p50, p90:$p90, p99:$p99, p999:$p999, max:$max}}'
        ;;
    *) die "ensure_load_tool first" ;;
    esac
}

# run_load_paced URL BODY_FILE SECONDS RATE [CONNECTIONS=10]: about RATE
# requests/s. With wrk, each connection pauses CONNECTIONS/RATE s between
# requests, so the real rate is a little lower (the response time adds to the
# pause): read `rps` in the result. With hey, -q gives an exact rate.
run_load_paced() {
    local url=$1 body=$2 secs=$3 rate=$4 conns=${5:-10}
    case $LOAD_TOOL in
    wrk)
        BENCH_DELAY_MS=$(((conns * 1000 + rate / 2) / rate)) run_load "$url" "$body" "$secs" "$conns" |
            jq -c --argjson r "$rate" '. + {target_rps:$r}'
        ;;
    hey)
        BENCH_HEY_QPS=$(((rate + conns - 1) / conns)) run_load "$url" "$body" "$secs" "$conns" |
            jq -c --argjson r "$rate" '. + {target_rps:$r}'
        ;;
    *) die "ensure_load_tool first" ;;
    esac
}

# --- Measurements -------------------------------------------------------------------

# proxy_cpu_seconds PID: user + system CPU time of the whole process (every
# thread, live or finished), from /proc/PID/stat fields 14 and 15.
proxy_cpu_seconds() {
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) } # the command name may contain spaces
    local -a f
    read -r -a f <<<"$stat"
    awk -v u="${f[11]}" -v s="${f[12]}" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f\n", (u + s) / hz }'
}

# thread_cpu_json PID: {"name": seconds, ...}, threads of the same name summed
# (tokio workers share one name). Finished threads are not listed.
thread_cpu_json() {
    local pid=$1 t name stat hz
    hz=$(getconf CLK_TCK)
    for t in /proc/"$pid"/task/*; do
        name=$(<"$t/comm") || continue
        stat=$(<"$t/stat") || continue
        stat=${stat##*) }
        local -a f
        read -r -a f <<<"$stat"
        printf '%s\t%s\n' "$name" "$((f[11] + f[12]))"
    done | awk -F'\t' -v hz="$hz" '{ s[$1] += $2 } END { for (k in s) printf "%s\t%.2f\n", k, s[k] / hz }' |
        jq -Rn '[inputs | split("\t") | {key: .[0], value: (.[1] | tonumber)}] | from_entries'
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# metric_sum BASE_URL NAME: sum over every sample of NAME (any labels); 0 if absent.
metric_sum() {
    curl -sf "$1/metrics" | awk -v m="$2" '
        $1 == m || index($1, m "{") == 1 { s += $NF; found = 1 }
        END { printf "%.0f\n", found ? s : 0 }'
}

# start_mock_backend CONFIG: a fresh mock-llm (20 chunks per stream) and a
# proxy config with one openai-type backend `up` pointing at it (mock-llm
# keeps every request it served in memory: one per run).
start_mock_backend() {
    start_mock --chunks 20
    printf '[backends.up]\ntype = "openai"\napi_url = "%s/v1"\n' "$MOCK_URL" >"$1"
}

# wait_indexed URL: waits (at most 120 s) until the proxy's usage store has
# indexed every record it deferred while the machine was busy; prints the
# seconds waited.
wait_indexed() {
    local url=$1 start=$SECONDS
    while (($(metric_sum "$url" llm_proxy_usage_deferred_records) > 0)) && ((SECONDS - start < 120)); do
        sleep 0.2
    done
    printf '%s\n' $((SECONDS - start))
}

# median: of the numbers on stdin, one a line ("null" if none).
median() {
    sort -g | awk '{ a[NR] = $1 } END {
        if (NR == 0) { print "null"; exit }
        if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# percentile P: nearest-rank percentile of the numbers on stdin.
percentile() {
    sort -g | awk -v p="$1" '{ a[NR] = $1 } END {
        if (NR == 0) { print "null"; exit }
        r = int(p / 100 * NR + 0.999999); if (r < 1) r = 1; if (r > NR) r = NR; print a[r] }'
}

# --- Result metadata -------------------------------------------------------------------

bench_meta_json() {
    local sha dirty cpu mem
    sha=$(git -C "$REPO_ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
    dirty=false
    [[ -z $(git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]] || dirty=true
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    mem=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
    jq -n --arg sha "$sha" --argjson dirty "$dirty" --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        --argjson nproc "$(nproc)" --arg cpu "$cpu" --arg mem "$mem" --arg kernel "$(uname -sr)" \
        --arg rustc "$(rustc --version 2>/dev/null || echo unknown)" \
        --arg load_tool "$(load_tool_version)" --arg curl "$(curl --version | head -1 | awk '{print $1, $2}')" \
        --arg loadavg "$(cut -d' ' -f1-3 /proc/loadavg)" --argjson noisy "$BENCH_NOISY_RUNS" \
        '{git_sha:$sha, git_dirty:$dirty, date:$date,
          machine:{nproc:$nproc, cpu_model:$cpu, memory:$mem, kernel:$kernel, loadavg_at_end:$loadavg},
          tools:{rustc:$rustc, load_tool:$load_tool, curl:$curl},
          runs_started_while_compiling:$noisy}'
}
