#!/usr/bin/env bash
# Instructions per request, by proxy thread, with usage tracking on or off:
# the release proxy runs under `valgrind --tool=callgrind --separate-threads=yes`
# while `loadgen --mode closed --unique` sends 1 KB chat requests (JSON or
# streamed) through it to mock-llm. Instruction counts do not depend on what
# else the machine is doing, so this works on a busy machine where wall-clock
# throughput does not (a diagnostic for issue 3 acceptance 7, not a goal figure).
#
#   bench/usage_instructions.sh [--tracking on|off] [--stream] [--seconds 20]
#                               [--connections 4] [--same-body]
#
# Prints one line per thread group: instructions (Ir) / responses, and the
# total. Needs valgrind (installed from Debian if missing).
source "$(dirname "$0")/lib.sh"

TRACKING=on STREAM=false SECS=20 CONNS=4 UNIQUE=--unique
while (($#)); do
    case $1 in
    --tracking) TRACKING=$2 && shift ;;
    --stream) STREAM=true ;;
    --seconds) SECS=$2 && shift ;;
    --connections) CONNS=$2 && shift ;;
    --same-body) UNIQUE="" ;;
    -h | --help) sed -n '2,13p' "$0" && exit 0 ;;
    *) die "unknown argument $1" ;;
    esac
    shift
done
command -v valgrind >/dev/null || _apt_install valgrind
need valgrind

build_release
CONFIG=$BENCH_WORK/proxy.toml
start_mock_backend "$CONFIG"
make_chat_body 1024 up:gpt-4o-mini "$STREAM" >"$BENCH_WORK/body.json"
env=(USAGE_TRACKING_ENABLED=false)
[[ $TRACKING == on ]] && env=(USAGE_TRACKING_ENABLED=true
    USAGE_TRACKING_PERSISTENCE_PATH="$BENCH_WORK/usage.sqlite3" USAGE_TRACKING_FLUSH_INTERVAL_SECONDS=1)
out=$BENCH_WORK/callgrind
mkdir -p "$out"
logf=$BENCH_WORK/proxy.log
env "${env[@]}" valgrind --tool=callgrind --separate-threads=yes --dump-instr=no \
    --callgrind-out-file="$out/cg.out" \
    "$PROXY_BIN" --config "$CONFIG" --host 127.0.0.1 --port 0 >"$logf" 2>&1 &
PROXY_PID=$!
_BENCH_PIDS+=("$PROXY_PID")
PROXY_URL=$(wait_ready_line "$logf" 'llm-proxy listening on ' "$PROXY_PID" "$BENCH_START_TIMEOUT")
url=$PROXY_URL/v1/chat/completions
# Warm-up (tokenizers, connection pools, SQLite pages), then the counters
# are zeroed: the figures are the measured part only.
warm=$("$LOADGEN_BIN" --url "$url" --body "$BENCH_WORK/body.json" --mode closed --connections 1 \
    --seconds 5 --warmup 0 $UNIQUE | jq '.completed_incl_warmup')
if [[ $TRACKING == on ]]; then
    # Under valgrind, building a tokenizer takes ~10 s: wait for every
    # warm-up record.
    for _ in $(seq 120); do
        kill -0 "$PROXY_PID" 2>/dev/null || die "the proxy exited under valgrind (see $logf)"
        (($(curl -s "$PROXY_URL/v1/usage/stats" | jq '.request_count // 0') >= warm)) && break
        sleep 1
    done
fi
sleep 2
callgrind_control -z "$PROXY_PID" >/dev/null
load=$("$LOADGEN_BIN" --url "$url" --body "$BENCH_WORK/body.json" --mode closed \
    --connections "$CONNS" --seconds "$SECS" --warmup 0 $UNIQUE)
responses=$(jq '.completed_incl_warmup' <<<"$load")
[[ $(jq '.non_2xx + .errors' <<<"$load") == 0 ]] || die "errors during the load: $load"
sleep 2 # the tracker builds, counts and stores the last records
callgrind_control -d "$PROXY_PID" >/dev/null
stop_process "$PROXY_PID" >/dev/null
log "responses: $responses (tracking $TRACKING, stream $STREAM)"
for f in "$out"/cg.out.1-*; do
    ir=$(awk '/^summary:/ {print $2}' "$f")
    name=other
    grep -q 'sqlite3VdbeExec' "$f" && name=usage-writer
    grep -q 'RecordBuilder::draft\|build_loop' "$f" && name=usage-builder
    grep -q 'TokenTally' "$f" && name=usage-counter
    grep -q 'scheduler::multi_thread::worker' "$f" && name=tokio-rt-worker
    printf '%s %s\n' "$name" "${ir:-0}"
done | awk -v n="$responses" '
    { ir[$1] += $2; all += $2 }
    END {
        for (k in ir) printf "%-16s %10.0f instructions per response\n", k, ir[k] / n
        printf "%-16s %10.0f instructions per response (%d responses)\n", "total", all / n, n
    }'
