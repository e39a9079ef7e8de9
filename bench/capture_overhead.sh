#!/usr/bin/env bash
# What wire capture costs the proxy (issue 5, acceptance 6: ≤ 20 % of
# throughput with 4 KB bodies, ≤ 100 µs added at p99).
#
#   bench/capture_overhead.sh [--rounds 3] [--seconds 15] [--connections 64] [--stream]
#
# mock-llm (zero delay) ← openai-type backend ← llm-proxy ← wrk, 4 KB chat
# bodies. A fresh proxy per run, capture off and on alternated:
#   off: WIRE_CAPTURE_ENABLED=false
#   on:  WIRE_CAPTURE_ENABLED=true, output in a temp dir (rotating at 64 MiB)
# Each run: 2 s warm-up, then SECONDS of closed-loop saturation, and a paced
# run at ~500 req/s (10 connections) for the latency figure. With capture
# on, entries written and dropped come from /metrics.
#
# Writes bench/results/capture-<date>.json.
source "$(dirname "$0")/lib.sh"

ROUNDS=3 SECS=15 CONNS=64 WARMUP=2 BODY_BYTES=4096 STREAM=false PACED_RATE=500 PACED_CONNS=10
while (($#)); do
    case $1 in
    --rounds) ROUNDS=$2 && shift ;;
    --seconds) SECS=$2 && shift ;;
    --connections) CONNS=$2 && shift ;;
    --stream) STREAM=true ;;
    -h | --help) sed -n '2,16p' "$0" && exit 0 ;;
    *) die "unknown argument $1" ;;
    esac
    shift
done

build_release
ensure_load_tool
CONFIG=$BENCH_WORK/proxy.toml
wait_for_quiet
start_mock_backend "$CONFIG"
make_chat_body "$BODY_BYTES" up:gpt-4o-mini "$STREAM" >"$BENCH_WORK/chat.json"

RUNS=$BENCH_WORK/runs.jsonl
: >"$RUNS"
for ((r = 1; r <= ROUNDS; r++)); do
    for mode in off on; do
        env=(WIRE_CAPTURE_ENABLED=false)
        if [[ $mode == on ]]; then
            env=(WIRE_CAPTURE_ENABLED=true WIRE_CAPTURE_OUTPUT_DIR="$BENCH_WORK/captures-$r")
        fi
        wait_for_quiet
        start_proxy "$CONFIG" "${env[@]}"
        url=$PROXY_URL/v1/chat/completions
        curl -sf "$url" -d @"$BENCH_WORK/chat.json" >/dev/null || die "proxy does not answer"
        run_load "$url" "$BENCH_WORK/chat.json" "$WARMUP" "$CONNS" >/dev/null
        sat=$(run_load "$url" "$BENCH_WORK/chat.json" "$SECS" "$CONNS")
        paced=$(run_load_paced "$url" "$BENCH_WORK/chat.json" "$SECS" "$PACED_RATE" "$PACED_CONNS")
        entries=$(metric_sum "$PROXY_URL" llm_proxy_wire_capture_entries_total)
        dropped=$(metric_sum "$PROXY_URL" llm_proxy_wire_capture_dropped_total)
        stop_process "$PROXY_PID"
        jq -c -n --arg mode "$mode" --argjson round "$r" --argjson sat "$sat" --argjson paced "$paced" \
            --argjson entries "${entries:-null}" --argjson dropped "${dropped:-null}" \
            '{capture:$mode, round:$round, saturation:$sat, paced:$paced, entries:$entries, dropped:$dropped}' |
            tee -a "$RUNS" | jq -c '{capture, round, rps:(.saturation.rps|round), paced_p99:.paced.latency_ms.p99, entries, dropped}' >&2
    done
done

SUMMARY=$(jq -s '
    def med: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
             else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    (map(select(.capture == "off"))) as $off | (map(select(.capture == "on"))) as $on |
    {off: {rps_median: ($off | map(.saturation.rps) | med), paced_p99_ms_median: ($off | map(.paced.latency_ms.p99) | med)},
     on:  {rps_median: ($on | map(.saturation.rps) | med), paced_p99_ms_median: ($on | map(.paced.latency_ms.p99) | med),
           dropped_total: ($on | map(.dropped // 0) | add)}}
    | . + {throughput_cost_pct: ((1 - .on.rps_median / .off.rps_median) * 100),
           p99_added_us: ((.on.paced_p99_ms_median - .off.paced_p99_ms_median) * 1000)}' "$RUNS")
OUT=$RESULTS_DIR/capture-$(date -u +%Y-%m-%d).json
jq -n --argjson meta "$(bench_meta_json)" --argjson summary "$SUMMARY" --slurpfile runs "$RUNS" \
    '{meta:$meta, body_bytes:'"$BODY_BYTES"', stream:'"$STREAM"', summary:$summary, runs:$runs}' >"$OUT"
log "wrote $OUT"
jq . <<<"$SUMMARY"
