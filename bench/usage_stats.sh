#!/usr/bin/env bash
# How fast /v1/usage/stats is over big stores (issue 3, acceptance 7:
# ≤ 20 ms over 1 M records, unfiltered and backend + model + 30 days; over
# 10 M at most 2× that).
#
#   bench/usage_stats.sh [--records "1000000 10000000"] [--runs 20]
#                        [--data-dir /tmp/llm-proxy-bench-data] [--reuse] [--postgres]
#
# --postgres: the same over the Postgres store (a private cluster started
# here, a fresh database per size; --reuse does not apply). stats_bench's
# insert line is then the store's write throughput (one writer, batches of
# 1000, as the tracker writes). Writes bench/results/usage-postgres-<date>.json.
#
# For each size N:
#  1. crates/usage/examples/stats_bench generates N synthetic records
#     (3 backends, 6 models, ~25-turn sessions, 60 days from 2026-01-01) into
#     a SQLite store and times `aggregate` + `finish_stats` in process
#     (median of --runs). --reuse keeps a store generated earlier.
#  2. llm-proxy is started on that store and GET /v1/usage/stats is timed end
#     to end with curl (%{time_total}, new connection each time; 2 warm-ups,
#     then the median of --runs): unfiltered; backend=openai&model=gpt-4o
#     with the last 30 days ending at the newest record (not hour-aligned,
#     so partial hours are scanned); the same filter on whole days; and
#     30 days grouped by backend,model.
#
# Store files (≈ 0.4 GB per million records) stay in --data-dir for reuse.
# Writes bench/results/usage-<date>.json (key "stats") and re-renders
# bench/results/usage-<date>.md.
source "$(dirname "$0")/lib.sh"

SIZES="1000000 10000000" RUNS=20 DATA_DIR=${TMPDIR:-/tmp}/llm-proxy-bench-data REUSE=0 PG=0
while (($#)); do
    case $1 in
    --records) SIZES=$2 && shift ;;
    --runs) RUNS=$2 && shift ;;
    --data-dir) DATA_DIR=$2 && shift ;;
    --reuse) REUSE=1 ;;
    --postgres) PG=1 ;;
    -h | --help) sed -n '2,30p' "$0" && exit 0 ;;
    *) die "unknown argument $1" ;;
    esac
    shift
done
mkdir -p "$DATA_DIR"

build_release
if ((PG)); then start_postgres; fi

# stats_bench's table rows → JSON array.
parse_table() {
    awk -F'|' '/^\| / && $2 !~ /aggregate/ && $3 ~ /[0-9]/ {
        gsub(/^ +| +$/, "", $2); gsub(/ /, "", $3); gsub(/ /, "", $4); gsub(/ /, "", $5); gsub(/ /, "", $6)
        printf "{\"case\":\"%s\",\"median_ms\":%s,\"min_ms\":%s,\"max_ms\":%s,\"matched\":%s}\n", $2, $3, $4, $5, $6
    }' | jq -s .
}

# time_get URL → JSON {median_ms, min_ms, max_ms, p90_ms, request_count, status}
time_get() {
    local url=$1 i t times=() code
    for ((i = 0; i < 2; i++)); do curl -s -o /dev/null "$url"; done
    for ((i = 0; i < RUNS; i++)); do
        read -r code t < <(curl -s -o "$BENCH_WORK/stats.json" -w '%{http_code} %{time_total}\n' "$url")
        [[ $code == 200 ]] || die "GET $url → $code: $(head -c 300 "$BENCH_WORK/stats.json")"
        times+=("$(awk -v t="$t" 'BEGIN { printf "%.3f", t * 1000 }')")
    done
    local all
    all=$(printf '%s\n' "${times[@]}")
    jq -n --argjson med "$(median <<<"$all")" --argjson p90 "$(percentile 90 <<<"$all")" \
        --argjson min "$(sort -g <<<"$all" | head -1)" --argjson max "$(sort -g <<<"$all" | tail -1)" \
        --argjson count "$(jq '.request_count' "$BENCH_WORK/stats.json")" \
        --argjson groups "$(jq '.groups // [] | length' "$BENCH_WORK/stats.json")" \
        '{median_ms:$med, p90_ms:$p90, min_ms:$min, max_ms:$max, request_count:$count, groups:$groups}'
}

CONFIG=$BENCH_WORK/proxy.toml
: >"$CONFIG" # no backends: the built-in mock; only the usage routes are used
SIZES_JSON=()
for n in $SIZES; do
    store=$DATA_DIR/usage-$n.sqlite3
    args=(--records "$n" --path "$store" --runs "$RUNS")
    store_env=(USAGE_TRACKING_PERSISTENCE_PATH="$store")
    if ((PG)); then
        db_url=$(pg_createdb "usage_$n")
        args+=(--database-url "$db_url")
        store_env=(USAGE_TRACKING_DATABASE_URL="$db_url"
            LLM_PROXY__USAGE_TRACKING__SPILL_PATH="$BENCH_WORK/spill-$n.jsonl")
        log "generating $n records into $db_url"
    elif ((REUSE)) && [[ -s $store ]]; then
        args+=(--reuse)
        log "reusing $store"
    else
        log "generating $n records into $store (minutes for 10 M)"
    fi
    wait_for_quiet
    out=$("$STATS_BENCH_BIN" "${args[@]}" 2>/dev/null) || die "stats_bench failed"
    printf '%s\n' "$out" >&2
    insert=$(grep -o 'insert: .*' <<<"$out" || true)
    open=$(grep -o 'open .*' <<<"$out")
    table=$(parse_table <<<"$out")

    # End to end over HTTP.
    wait_for_quiet
    t0=$(date +%s.%N)
    start_proxy "$CONFIG" USAGE_TRACKING_ENABLED=true "${store_env[@]}"
    startup_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    newest=$(curl -sf "$PROXY_URL/v1/usage/recent?limit=1" | jq -r '.records[0].timestamp')
    newest_s=$(jq -rn --arg t "$newest" '$t | sub("\\.[0-9]+"; "") | fromdateiso8601')
    start=$(jq -rn --argjson s "$newest_s" '$s - 30 * 86400 + 12 | todate')
    end=$(jq -rn --argjson s "$newest_s" '$s + 1 | todate')
    end_day=$(jq -rn --argjson s "$newest_s" '$s | strftime("%Y-%m-%d")')
    start_day=$(jq -rn --argjson s "$newest_s" '$s - 29 * 86400 | strftime("%Y-%m-%d")')
    base=$PROXY_URL/v1/usage/stats
    declare -A queries=(
        [unfiltered]="$base"
        ["backend+model+30 days"]="$base?backend=openai&model=gpt-4o&start_date=$start&end_date=$end"
        ["backend+model+30 whole days"]="$base?backend=openai&model=gpt-4o&start_date=$start_day&end_date=$end_day"
        ["30 days, group_by backend,model"]="$base?start_date=$start&end_date=$end&group_by=backend,model"
    )
    http='[]'
    for name in "unfiltered" "backend+model+30 days" "backend+model+30 whole days" "30 days, group_by backend,model"; do
        r=$(time_get "${queries[$name]}")
        http=$(jq --arg name "$name" --arg q "${queries[$name]#"$PROXY_URL"}" --argjson r "$r" \
            '. + [{case:$name, query:$q} + $r]' <<<"$http")
        log "HTTP $name: $(jq -c . <<<"$r")"
    done
    rss=$(rss_kb "$PROXY_PID")
    stop_process "$PROXY_PID"
    if ((PG)); then bytes=$(pg_sql "usage_$n" "SELECT pg_database_size('usage_$n')"); else
        bytes=$(stat -c %s "$store")
    fi
    SIZES_JSON+=("$(jq -n --argjson n "$n" --arg insert "$insert" --arg open "$open" \
        --argjson table "$table" --argjson http "$http" --argjson startup "$startup_s" \
        --argjson rss "$rss" --arg newest "$newest" \
        --argjson bytes "$bytes" '{records:$n, store_bytes:$bytes,
          stats_bench:{insert:$insert, open:$open, aggregate:$table},
          http:{proxy_startup_s:$startup, rss_mb_after:($rss / 1024), newest_record:$newest, queries:$http}}')")
done

META=$(bench_meta_json)
PART=$(printf '%s\n' "${SIZES_JSON[@]}" | jq -s --argjson meta "$META" --argjson runs "$RUNS" '{
    meta:$meta,
    setup:{generator:"llm_proxy_usage::store::conformance::synthetic_records via examples/stats_bench",
           timing:"in process: aggregate + finish_stats; HTTP: curl time_total, new connection per request",
           runs:$runs},
    store:(if $pg == 1 then "postgres" else "sqlite" end),
    sizes:.}' --argjson pg "$PG")

DATE=$(date -u +%Y-%m-%d)
mkdir -p "$RESULTS_DIR"
OUT=$RESULTS_DIR/usage-$DATE.json
if ((PG)); then OUT=$RESULTS_DIR/usage-postgres-$DATE.json; fi
if [[ -f $OUT ]]; then jq --argjson p "$PART" '.stats = $p' "$OUT" >"$OUT.tmp"; else
    jq -n --argjson p "$PART" '{stats: $p}' >"$OUT.tmp"
fi
mv "$OUT.tmp" "$OUT"
"$BENCH_DIR/usage_report.sh" "$OUT" >"${OUT%.json}.md"
log "wrote $OUT and ${OUT%.json}.md"
jq -c '.stats.sizes[] | {records, http: [.http.queries[] | {case, median_ms}]}' "$OUT"
