#!/usr/bin/env bash
# A/B of proxy builds or settings at JSON saturation, the modes alternated
# round by round in one run (on this VM, runs an hour apart differ by more
# than most changes: compare within a run). Diagnostic, not a goal figure.
#
#   bench/usage_ab.sh [--rounds 4] [--seconds 10] [--connections 64] MODE...
#
# MODE is a name; the order rotates every round. `off` runs with usage tracking off; any other name runs
# with tracking on (SQLite in a temp dir, flush every 1 s), plus
#   AB_ENV_<name>="VAR=value ..."   extra environment for the proxy
#   AB_BIN_<name>=/path/llm-proxy   another proxy binary (default: this build)
# e.g. compare a stash of the last release binary with the current build:
#   cp target/release/llm-proxy /tmp/before && <change, rebuild> &&
#   AB_BIN_before=/tmp/before bench/usage_ab.sh off before on
# Each run: fresh mock-llm and proxy, 2 s warm-up, deferred records indexed,
# then the load. Prints one JSON line per run (req/s, non-2xx responses,
# proxy CPU µs per request, CPU seconds by thread, records dropped) and
# the median req/s of each mode against the first. Writes nothing under
# bench/results.
source "$(dirname "$0")/lib.sh"

ROUNDS=4 SECS=10 CONNS=64 MODES=()
while (($#)); do
    case $1 in
    --rounds) ROUNDS=$2 && shift ;;
    --seconds) SECS=$2 && shift ;;
    --connections) CONNS=$2 && shift ;;
    -h | --help) sed -n '2,19p' "$0" && exit 0 ;;
    -*) die "unknown argument $1" ;;
    *)
        [[ $1 =~ ^[A-Za-z0-9_]+$ ]] || die "a mode is a name ([A-Za-z0-9_]): $1"
        MODES+=("$1")
        ;;
    esac
    shift
done
((${#MODES[@]} >= 2)) || die "give at least two modes, e.g. off on"

build_release
ensure_load_tool
export BENCH_UNIQUE_BODY=1
CONFIG=$BENCH_WORK/proxy.toml
wait_for_quiet
start_mock_backend "$CONFIG"
make_chat_body 1024 up:gpt-4o-mini false >"$BENCH_WORK/chat.json"
RUNS=$BENCH_WORK/ab.jsonl
: >"$RUNS"
for ((round = 1; round <= ROUNDS; round++)); do
    # The order rotates every round (a, b, c; b, c, a; …): no mode always
    # runs first or right after another.
    shift_by=$(((round - 1) % ${#MODES[@]}))
    order=("${MODES[@]:shift_by}" "${MODES[@]:0:shift_by}")
    for mode in "${order[@]}"; do
        env=(USAGE_TRACKING_ENABLED=false)
        if [[ $mode != off ]]; then
            mkdir -p "$BENCH_WORK/store-$mode-$round"
            env=(USAGE_TRACKING_ENABLED=true USAGE_TRACKING_FLUSH_INTERVAL_SECONDS=1
                USAGE_TRACKING_PERSISTENCE_PATH="$BENCH_WORK/store-$mode-$round/usage.sqlite3")
        fi
        extra_env=AB_ENV_$mode bin=AB_BIN_$mode
        read -r -a extra <<<"${!extra_env:-}"
        env+=("${extra[@]}")
        stop_process "$MOCK_PID" >/dev/null
        start_mock_backend "$CONFIG" 2>/dev/null
        PROXY_BIN=${!bin:-$BENCH_WORK/bin/llm-proxy}
        [[ -x $PROXY_BIN ]] || die "not an executable: $PROXY_BIN"
        start_proxy "$CONFIG" "${env[@]}" 2>/dev/null
        url=$PROXY_URL/v1/chat/completions
        run_load "$url" "$BENCH_WORK/chat.json" 2 "$CONNS" >/dev/null
        if [[ $mode != off ]]; then
            sleep 2
            wait_indexed "$PROXY_URL" >/dev/null
        else
            sleep 1.5
        fi
        cpu0=$(proxy_cpu_seconds "$PROXY_PID")
        threads0=$(thread_cpu_json "$PROXY_PID")
        load=$(run_load "$url" "$BENCH_WORK/chat.json" "$SECS" "$CONNS")
        cpu1=$(proxy_cpu_seconds "$PROXY_PID")
        threads1=$(thread_cpu_json "$PROXY_PID")
        dropped=null
        [[ $mode == off ]] || dropped=$(metric_sum "$PROXY_URL" llm_proxy_usage_records_dropped_total)
        stop_process "$PROXY_PID" >/dev/null
        jq -c -n --arg mode "$mode" --argjson round "$round" --argjson load "$load" \
            --argjson cpu0 "$cpu0" --argjson cpu1 "$cpu1" --argjson t0 "$threads0" \
            --argjson t1 "$threads1" --argjson dropped "$dropped" '
            {mode:$mode, round:$round, rps:($load.rps | round), non_2xx:$load.non_2xx,
             cpu_us_per_request:((($cpu1 - $cpu0) / $load.requests * 1e6 * 10 | round) / 10),
             thread_cpu_s:($t1 | with_entries(.value = ((.value - ($t0[.key] // 0)) * 100 | round / 100))
                              | with_entries(select(.value > 0))),
             dropped:$dropped}' | tee -a "$RUNS"
    done
done
jq -s -r '
    def med: sort | if length % 2 == 1 then .[length / 2 | floor]
                    else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    (group_by(.mode) | map({key: .[0].mode, value: (map(.rps) | med)}) | from_entries) as $m
    | .[0].mode as $first
    | "median req/s: " + ([.[] | .mode] | unique | map(. + " " + ($m[.] | round | tostring)
        + (if . == $first then "" else " (" + ((1 - $m[.] / $m[$first]) * 1000 | round / 10 | tostring)
           + " % below " + $first + ")" end)) | join(", "))' "$RUNS"
