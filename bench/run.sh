#!/usr/bin/env bash
# The whole proxy benchmark of issue 8: direct vs proxied, on one machine,
# against one mock upstream, alternated in one session so that drift and noise
# hit both sides. ~8 minutes with the defaults (plus the release build).
#
#   bench/run.sh [--rounds 2] [--rate-seconds 30] [--sat-seconds 10] [--quick]
#
# mock-llm (zero delay, 20 chunks per stream, no request history) ← llm-proxy
# (an openai-type backend; usage tracking as shipped: on, SQLite in a temp dir)
# ← the load generator. Every variant runs direct (load → mock) and proxied
# (load → proxy → mock), alternated, ROUNDS times:
#   (a) rate:       1,000 req/s for RATE_SECONDS, 1 KB non-streaming chat,
#                   `loadgen --mode rate` (open loop: latency from the intended
#                   send time, no coordinated omission); proxy CPU per request
#   (b) saturation: 64 connections, SAT_SECONDS, wrk (closed loop)
#   (c) stream:     20 chunks, 200 req/s, time to first byte (loadgen)
#   (d) tracking:   proxies with usage tracking off / on / wire capture on,
#                   JSON at 64 connections and streams at 16, saturation (wrk,
#                   a unique body per request); the capture slot runs only when
#                   the binary runs wire capture (else skipped with a note)
#   (e) memory:     idle RSS; peak RSS with 2,000 concurrent streams
#                   (`loadgen --mode hold` against a second, slow mock)
# Proxy CPU per request is user + system time from /proc/PID/stat ÷ responses.
#
# Writes bench/results/proxy-<date>.json (git sha, machine, tool versions,
# every figure, ratios proxied/direct, goals missed and by how much, with the
# notes of bench/results/explanations.json) and proxy-<date>.md.
# BENCH_SKIP_BUILD=1 reuses target/release; BENCH_QUIET_MAX_WAIT=0 measures
# at once even while something compiles (runs are then counted as noisy).
source "$(dirname "$0")/lib.sh"

ROUNDS=2 RATE_SECONDS=30 SAT_SECONDS=10 STREAM_SECONDS=15 WARMUP=2
RATE=1000 RATE_CONNS=32 SAT_CONNS=64 STREAM_RATE=200 STREAM_CONNS=16 STREAM_SAT_CONNS=16
HOLD_STREAMS=2000 BODY_BYTES=1024
while (($#)); do
    case $1 in
    --rounds) ROUNDS=$2 && shift ;;
    --rate-seconds) RATE_SECONDS=$2 && shift ;;
    --sat-seconds) SAT_SECONDS=$2 && shift ;;
    --quick) ROUNDS=1 RATE_SECONDS=10 SAT_SECONDS=5 STREAM_SECONDS=5 HOLD_STREAMS=500 ;;
    -h | --help) sed -n '2,30p' "$0" && exit 0 ;;
    *) die "unknown argument $1" ;;
    esac
    shift
done

build_release
ensure_load_tool
LOADGEN=$LOADGEN_BIN
wait_for_quiet

start_mock --chunks 20
FAST_URL=$MOCK_URL FAST_PID=$MOCK_PID
# The slow mock holds streams open for (e): 20 chunks, 400 ms apart.
start_mock --chunks 20 --inter-chunk-delay-ms 400
SLOW_URL=$MOCK_URL
CONFIG=$BENCH_WORK/proxy.toml
printf 'default_backend = "up"\n\n[backends.up]\ntype = "openai"\napi_url = "%s/v1"\n\n[backends.slow]\ntype = "openai"\napi_url = "%s/v1"\n' \
    "$FAST_URL" "$SLOW_URL" >"$CONFIG"

make_chat_body "$BODY_BYTES" gpt-4o-mini false >"$BENCH_WORK/direct.json"
make_chat_body "$BODY_BYTES" up:gpt-4o-mini false >"$BENCH_WORK/proxied.json"
make_chat_body "$BODY_BYTES" gpt-4o-mini true >"$BENCH_WORK/direct-stream.json"
make_chat_body "$BODY_BYTES" up:gpt-4o-mini true >"$BENCH_WORK/proxied-stream.json"
make_chat_body "$BODY_BYTES" slow:gpt-4o-mini true >"$BENCH_WORK/slow-stream.json"

# Proxies: the shipped default (tracking on), tracking off, capture on.
# Started once; the idle ones use no CPU while another is measured.
store() { mkdir -p "$BENCH_WORK/$1" && printf '%s/usage.sqlite3' "$BENCH_WORK/$1"; }
start_proxy "$CONFIG" USAGE_TRACKING_PERSISTENCE_PATH="$(store on)" USAGE_TRACKING_FLUSH_INTERVAL_SECONDS=1
ON_URL=$PROXY_URL ON_PID=$PROXY_PID
start_proxy "$CONFIG" USAGE_TRACKING_ENABLED=false
OFF_URL=$PROXY_URL OFF_PID=$PROXY_PID
start_proxy "$CONFIG" USAGE_TRACKING_ENABLED=false WIRE_CAPTURE_ENABLED=true \
    WIRE_CAPTURE_OUTPUT_DIR="$BENCH_WORK/capture"
CAP_URL=$PROXY_URL CAP_PID=$PROXY_PID
sleep 0.5
CAPTURE_NOTE=null
if grep 'not part of this build' "$PROXY_LOG" | grep -q wire_capture; then
    CAPTURE_NOTE='"skipped: this build accepts wire_capture.enabled but does not run wire capture yet"'
    log "wire capture is not part of this build: its slot is skipped"
fi

for u in "$FAST_URL" "$ON_URL" "$OFF_URL"; do
    b=$BENCH_WORK/proxied.json
    [[ $u == "$FAST_URL" ]] && b=$BENCH_WORK/direct.json
    curl -sf "$u/v1/chat/completions" -d @"$b" | jq -e '.usage.total_tokens > 0' >/dev/null ||
        die "$u does not answer"
done
# Idle RSS: started, one request served, nothing running.
sleep 1
IDLE_RSS_KB=$(rss_kb "$ON_PID")
IDLE_OFF_RSS_KB=$(rss_kb "$OFF_PID")

RUNS=$BENCH_WORK/runs.jsonl
: >"$RUNS"

# record VARIANT SIDE ROUND PID LOAD_JSON CPU0 CPU1 NOISE
record() {
    local cpu_s=null
    [[ $4 == - ]] || cpu_s=$(awk -v a="$6" -v b="$7" 'BEGIN { printf "%.2f", b - a }')
    jq -c -n --arg v "$1" --arg side "$2" --argjson round "$3" --argjson load "$5" \
        --argjson cpu "$cpu_s" --argjson noise "$8" '
        ($load.completed_incl_warmup // $load.requests) as $n |
        {variant:$v, side:$side, round:$round, load:$load, seconds_with_cargo_running:$noise,
         proxy_cpu_s:$cpu,
         proxy_cpu_us_per_request:(if $cpu == null or $n == 0 then null else ($cpu / $n * 1e6) end)}' |
        tee -a "$RUNS" | jq -c '{variant, side, round, rps:(.load.rps | round),
            p50:(.load.latency_us.p50 // (.load.latency_ms.p50 * 1000)),
            p99:(.load.latency_us.p99 // (.load.latency_ms.p99 * 1000)),
            ttfb_p99:.load.ttfb_us.p99, cpu_us:.proxy_cpu_us_per_request, noisy:.seconds_with_cargo_running}' >&2
}

# measure VARIANT SIDE ROUND PID|- COMMAND...: runs COMMAND (prints load JSON),
# with the proxy's CPU before and after.
measure() {
    local v=$1 side=$2 round=$3 pid=$4
    shift 4
    local c0=0 c1=0 out noise
    [[ $pid == - ]] || c0=$(proxy_cpu_seconds "$pid")
    noise_watch_start
    out=$("$@")
    noise=$(noise_watch_stop)
    [[ $pid == - ]] || c1=$(proxy_cpu_seconds "$pid")
    record "$v" "$side" "$round" "$pid" "$out" "$c0" "$c1" "$noise"
}

loadgen_rate() { # URL BODY RATE CONNS SECONDS
    "$LOADGEN" --url "$1/v1/chat/completions" --body "$2" --mode rate --rate "$3" \
        --connections "$4" --seconds "$5" --warmup "$WARMUP"
}
wrk_sat() { # URL BODY CONNS SECONDS: warm-up, then the measured run
    local warm
    warm=$(run_load "$1/v1/chat/completions" "$2" "$WARMUP" "$3" | jq '.requests')
    run_load "$1/v1/chat/completions" "$2" "$4" "$3" |
        jq -c --argjson w "$warm" '. + {completed_incl_warmup:(.requests + $w)}'
}

log "(a) $RATE req/s for ${RATE_SECONDS}s, (b) saturation at $SAT_CONNS connections, (c) streams at $STREAM_RATE req/s; $ROUNDS round(s), direct and proxied alternated"
for ((r = 1; r <= ROUNDS; r++)); do
    measure rate direct "$r" - loadgen_rate "$FAST_URL" "$BENCH_WORK/direct.json" "$RATE" "$RATE_CONNS" "$RATE_SECONDS"
    measure rate proxied "$r" "$ON_PID" loadgen_rate "$ON_URL" "$BENCH_WORK/proxied.json" "$RATE" "$RATE_CONNS" "$RATE_SECONDS"
done
for ((r = 1; r <= ROUNDS; r++)); do
    measure saturation direct "$r" - wrk_sat "$FAST_URL" "$BENCH_WORK/direct.json" "$SAT_CONNS" "$SAT_SECONDS"
    measure saturation proxied "$r" "$ON_PID" wrk_sat "$ON_URL" "$BENCH_WORK/proxied.json" "$SAT_CONNS" "$SAT_SECONDS"
done
for ((r = 1; r <= ROUNDS; r++)); do
    measure stream direct "$r" - loadgen_rate "$FAST_URL" "$BENCH_WORK/direct-stream.json" "$STREAM_RATE" "$STREAM_CONNS" "$STREAM_SECONDS"
    measure stream proxied "$r" "$ON_PID" loadgen_rate "$ON_URL" "$BENCH_WORK/proxied-stream.json" "$STREAM_RATE" "$STREAM_CONNS" "$STREAM_SECONDS"
done

log "(d) usage tracking off / on$([[ $CAPTURE_NOTE == null ]] && echo " / capture on"), saturation, unique bodies"
for ((r = 1; r <= ROUNDS; r++)); do
    for kind in json stream; do
        body=$BENCH_WORK/proxied.json conns=$SAT_CONNS
        [[ $kind == stream ]] && body=$BENCH_WORK/proxied-stream.json conns=$STREAM_SAT_CONNS
        export BENCH_UNIQUE_BODY=1
        measure "tracking_$kind" off "$r" "$OFF_PID" wrk_sat "$OFF_URL" "$body" "$conns" "$SAT_SECONDS"
        measure "tracking_$kind" on "$r" "$ON_PID" wrk_sat "$ON_URL" "$body" "$conns" "$SAT_SECONDS"
        if [[ $CAPTURE_NOTE == null ]]; then
            measure "tracking_$kind" capture "$r" "$CAP_PID" wrk_sat "$CAP_URL" "$body" "$conns" "$SAT_SECONDS"
        fi
        export BENCH_UNIQUE_BODY=0
    done
done

log "(e) memory: $HOLD_STREAMS concurrent streams through a fresh proxy (tracking on)"
# A fresh proxy: the one measured above keeps the heap the saturation runs grew.
start_proxy "$CONFIG" USAGE_TRACKING_PERSISTENCE_PATH="$(store mem)" USAGE_TRACKING_FLUSH_INTERVAL_SECONDS=1
MEM_URL=$PROXY_URL MEM_PID=$PROXY_PID
curl -sf "$MEM_URL/v1/chat/completions" -d @"$BENCH_WORK/proxied.json" >/dev/null || die "$MEM_URL does not answer"
sleep 1
MEM_IDLE_KB=$(rss_kb "$MEM_PID")
PEAK_FILE=$BENCH_WORK/rss-peak
(
    peak=0
    while kill -0 "$MEM_PID" 2>/dev/null; do
        v=$(rss_kb "$MEM_PID")
        ((v > peak)) && peak=$v && echo "$peak" >"$PEAK_FILE"
        sleep 0.2
    done
) &
SAMPLER=$!
_BENCH_PIDS+=("$SAMPLER")
HOLD=$("$LOADGEN" --url "$MEM_URL/v1/chat/completions" --body "$BENCH_WORK/slow-stream.json" \
    --mode hold --connections "$HOLD_STREAMS")
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
STREAMS_RSS_KB=$(cat "$PEAK_FILE")
sleep 2
AFTER_RSS_KB=$(rss_kb "$MEM_PID")
log "idle RSS $((IDLE_RSS_KB / 1024)) MB, peak with $HOLD_STREAMS streams $((STREAMS_RSS_KB / 1024)) MB: $(jq -c '{requests, peak_in_flight, errors, non_2xx, events_per_response}' <<<"$HOLD")"

# --- Result ---------------------------------------------------------------------
EXPLAIN=$RESULTS_DIR/explanations.json
[[ -f $EXPLAIN ]] || EXPLAIN=/dev/null
META=$(bench_meta_json | jq --arg lg "loadgen (crates/testkit/examples/loadgen.rs)" '.tools.open_loop = $lg')
RESULT=$(jq -s --argjson meta "$META" --argjson hold "$HOLD" --argjson idle "$IDLE_RSS_KB" --argjson idle_off "$IDLE_OFF_RSS_KB" --argjson mem_idle "$MEM_IDLE_KB" \
    --argjson peak "$STREAMS_RSS_KB" --argjson after "$AFTER_RSS_KB" --argjson capture "$CAPTURE_NOTE" \
    --argjson rounds "$ROUNDS" --argjson rate "$RATE" --argjson rsecs "$RATE_SECONDS" \
    --argjson ssecs "$SAT_SECONDS" --slurpfile ex <(cat "$EXPLAIN" 2>/dev/null || echo '{}') '
    def med: map(select(. != null)) | sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
             else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def r1: if . == null then null else (. * 10 | round / 10) end;
    def lat: .load.latency_us // (.load.latency_ms | map_values(. * 1000));
    def side($v; $s): map(select(.variant == $v and .side == $s));
    def summary: {runs: length, rps: (map(.load.rps) | med | r1),
        p50_us: (map(lat.p50) | med | r1), p99_us: (map(lat.p99) | med | r1),
        p999_us: (map(lat.p999) | med | r1),
        ttfb_p50_us: (map(.load.ttfb_us.p50) | med), ttfb_p99_us: (map(.load.ttfb_us.p99) | med),
        events_per_response: (map(.load.events_per_response) | med),
        send_lag_p99_us: (map(.load.send_lag_us.p99) | med),
        proxy_cpu_us_per_request: (map(.proxy_cpu_us_per_request) | med | r1),
        non_2xx: (map(.load.non_2xx) | add), errors: (map(if (.load.errors | type) == "number" then .load.errors else (.load.socket_errors // 0) end) | add),
        seconds_with_cargo_running: (map(.seconds_with_cargo_running) | add)};
    # Added latency per round (proxied minus the direct run next to it), then the median.
    def added($v; k): [range(1; $rounds + 1) as $r |
        ((side($v; "proxied") | map(select(.round == $r)) | .[0]) as $p |
         (side($v; "direct") | map(select(.round == $r)) | .[0]) as $d |
         if $p == null or $d == null or ($p | k) == null or ($d | k) == null then null
         else ($p | k) - ($d | k) end)] | med;
    . as $runs |
    {rate: {direct: (side("rate"; "direct") | summary), proxied: (side("rate"; "proxied") | summary),
            added_p50_us: added("rate"; lat.p50), added_p99_us: added("rate"; lat.p99)},
     saturation: {direct: (side("saturation"; "direct") | summary), proxied: (side("saturation"; "proxied") | summary)},
     stream: {direct: (side("stream"; "direct") | summary), proxied: (side("stream"; "proxied") | summary),
              added_ttfb_p50_us: added("stream"; .load.ttfb_us.p50), added_ttfb_p99_us: added("stream"; .load.ttfb_us.p99)},
     tracking: (["json", "stream"] | map(. as $k | {key: $k, value: (
        {off: ($runs | side("tracking_" + $k; "off") | summary), on: ($runs | side("tracking_" + $k; "on") | summary),
         capture: ($runs | side("tracking_" + $k; "capture") | if length == 0 then null else summary end)})}) | from_entries),
     memory: {idle_rss_mb: ($idle / 1024 | r1), idle_rss_mb_tracking_off: ($idle_off / 1024 | r1),
              idle_rss_mb_fresh_before_streams: ($mem_idle / 1024 | r1), streams: $hold.requests, peak_in_flight: $hold.peak_in_flight,
              stream_errors: $hold.errors, stream_non_2xx: $hold.non_2xx,
              events_per_stream: $hold.events_per_response,
              rss_mb_with_streams: ($peak / 1024 | r1), rss_mb_after_streams: ($after / 1024 | r1)}}
    | .saturation.ratio_rps_proxied_direct = ((.saturation.proxied.rps / .saturation.direct.rps) * 1000 | round / 1000)
    | .rate.ratio_p50_proxied_direct = ((.rate.proxied.p50_us / .rate.direct.p50_us) * 100 | round / 100)
    | .rate.ratio_p99_proxied_direct = ((.rate.proxied.p99_us / .rate.direct.p99_us) * 100 | round / 100)
    | .stream.ratio_ttfb_p99_proxied_direct = ((.stream.proxied.ttfb_p99_us / .stream.direct.ttfb_p99_us) * 100 | round / 100)
    | .tracking |= map_values(. + {
        throughput_cost_pct: ((1 - .on.rps / .off.rps) * 1000 | round / 10),
        capture_throughput_cost_pct: (if .capture == null then null else ((1 - .capture.rps / .off.rps) * 1000 | round / 10) end)})
    | . as $f
    | {meta: $meta,
       setup: {upstream: "mock-llm, zero delay, 20 chunks per stream, no request history; openai-type backend",
               proxy: "release build, usage tracking as shipped (on; SQLite in a temp dir, flush every 1 s) unless the variant says otherwise",
               body_bytes: 1024, rounds: $rounds, rate_rps: $rate, rate_seconds: $rsecs, saturation_seconds: $ssecs,
               order: "direct and proxied alternated per round; medians over rounds; added = proxied − direct of the same round",
               capture: ($capture // "measured")},
       figures: $f,
       goals: [
         {goal: "added latency p50 at 1,000 req/s", limit: 100, unit: "µs", measured: ($f.rate.added_p50_us | r1)},
         {goal: "added latency p99 at 1,000 req/s", limit: 500, unit: "µs", measured: ($f.rate.added_p99_us | r1)},
         {goal: "proxy CPU per non-streaming request at 1,000 req/s", limit: 50, unit: "µs", measured: $f.rate.proxied.proxy_cpu_us_per_request},
         {goal: "added time to first byte p99, streaming", limit: 1000, unit: "µs", measured: ($f.stream.added_ttfb_p99_us | r1)},
         {goal: "idle RSS", limit: 25, unit: "MB", measured: $f.memory.idle_rss_mb},
         {goal: "RSS with 2,000 concurrent streams", limit: 100, unit: "MB", measured: $f.memory.rss_mb_with_streams},
         {goal: "throughput cost of usage tracking, JSON (issue 3)", limit: 5, unit: "%", measured: $f.tracking.json.throughput_cost_pct},
         {goal: "throughput cost of usage tracking, streams (issue 3)", limit: 5, unit: "%", measured: $f.tracking.stream.throughput_cost_pct}]
         | map(. + {pass: (.measured != null and .measured <= .limit),
                    missed_by: (if .measured != null and .measured > .limit then ((.measured - .limit) * 10 | round / 10) else null end),
                    why: (if .measured != null and .measured > .limit then ($ex[0][.goal] // null) else null end)}),
       runs: $runs}' "$RUNS")

DATE=$(date -u +%Y-%m-%d)
mkdir -p "$RESULTS_DIR"
OUT=$RESULTS_DIR/proxy-$DATE.json
printf '%s\n' "$RESULT" >"$OUT"
"$BENCH_DIR/report.sh" "$OUT" >"${OUT%.json}.md"
log "wrote $OUT and ${OUT%.json}.md"
jq -r '.goals[] | "\(if .pass then "pass" else "MISS" end)  \(.goal): \(.measured) \(.unit) (goal ≤ \(.limit))"' "$OUT" >&2
