#!/usr/bin/env bash
# Where the proxy's CPU goes with usage tracking on: `perf record` (flat,
# every thread) on the proxy while wrk saturates it, then the top symbols per
# thread. Diagnostic, not a goal figure; needs perf (linux-perf).
#
#   bench/usage_profile.sh [--tracking on|off] [--stream] [--seconds 10] [--connections 64]
#                          [--thread usage-builder]
#
# Prints `perf report` sorted by thread name and symbol; writes the report to
# bench/results/usage-profile-<tracking>-<json|stream>-<date>.txt. With
# --thread NAME, also records that thread alone with DWARF call graphs for
# 3 s and appends its hot call chains (who calls the hot symbols).
source "$(dirname "$0")/lib.sh"

TRACKING=on STREAM=false SECS=10 CONNS=64 THREAD=""
while (($#)); do
    case $1 in
    --tracking) TRACKING=$2 && shift ;;
    --stream) STREAM=true ;;
    --seconds) SECS=$2 && shift ;;
    --connections) CONNS=$2 && shift ;;
    --thread) THREAD=$2 && shift ;;
    -h | --help) sed -n '2,13p' "$0" && exit 0 ;;
    *) die "unknown argument $1" ;;
    esac
    shift
done
need perf

build_release
ensure_load_tool
wait_for_quiet
CONFIG=$BENCH_WORK/proxy.toml
start_mock_backend "$CONFIG"
make_chat_body 1024 up:gpt-4o-mini "$STREAM" >"$BENCH_WORK/body.json"
env=(USAGE_TRACKING_ENABLED=false)
[[ $TRACKING == on ]] && env=(USAGE_TRACKING_ENABLED=true
    USAGE_TRACKING_PERSISTENCE_PATH="$BENCH_WORK/usage.sqlite3" USAGE_TRACKING_FLUSH_INTERVAL_SECONDS=1)
start_proxy "$CONFIG" "${env[@]}"
url=$PROXY_URL/v1/chat/completions
run_load "$url" "$BENCH_WORK/body.json" 2 "$CONNS" >/dev/null
extra=0
[[ -z $THREAD ]] || extra=4 # the thread's own recording follows the main one
run_load "$url" "$BENCH_WORK/body.json" $((SECS + 2 + extra)) "$CONNS" >"$BENCH_WORK/load.json" &
load_pid=$!
sleep 1
perf record -F 499 -p "$PROXY_PID" -o "$BENCH_WORK/perf.data" -- sleep "$SECS" 2>/dev/null >&2
if [[ -n $THREAD ]]; then
    tid=$(grep -lx "$THREAD" /proc/"$PROXY_PID"/task/*/comm | head -1 | cut -d/ -f5)
    [[ -n $tid ]] || die "no thread named $THREAD"
    perf record --call-graph dwarf,16384 -F 200 -t "$tid" -o "$BENCH_WORK/perf-thread.data" -- sleep 3 2>/dev/null >&2
fi
wait "$load_pid"
kind=json
[[ $STREAM == true ]] && kind=stream
mkdir -p "$RESULTS_DIR"
out=$RESULTS_DIR/usage-profile-$TRACKING-$kind-$(date -u +%Y-%m-%d).txt
{
    echo "# perf record -F 499 -p <llm-proxy>, ${SECS}s, tracking $TRACKING, $kind 1 KB chat, $CONNS connections"
    echo "# load: $(jq -c '{requests, rps: (.rps | round), latency_ms: {p50: .latency_ms.p50, p99: .latency_ms.p99}}' "$BENCH_WORK/load.json")"
    echo "# by thread:"
    perf report -i "$BENCH_WORK/perf.data" --no-children --sort comm --stdio 2>/dev/null | grep -v '^#' | grep -v '^$'
    echo "# top symbols (by thread):"
    perf report -i "$BENCH_WORK/perf.data" --no-children --sort comm,dso,symbol --stdio 2>/dev/null |
        grep -v '^#' | grep -v '^$' | sed -n '1,80p'
    if [[ -n $THREAD ]]; then
        echo "# thread $THREAD alone, DWARF call graphs, 3 s (symbols ≥ 3 %, callers innermost first):"
        perf report -i "$BENCH_WORK/perf-thread.data" --no-children --stdio --percent-limit 3 2>/dev/null |
            grep -v '^#' | grep -v '^$' | grep -Ev '^[[:space:]|-]*(std::|<std::|core::ops|<alloc::boxed::Box<dyn|catch_unwind|do_call|call_once|__rust_begin|\{closure|thread_start|start_thread|clone3)' |
            sed -n '1,60p'
    fi
} | sed -E "s/ +- +- *$//; s/ +$//" | tee "$out"
log "wrote $out"
