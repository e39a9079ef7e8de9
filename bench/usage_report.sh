#!/usr/bin/env bash
# Renders a bench/results/usage-<date>.json (written by usage_overhead.sh and
# usage_stats.sh) as markdown on stdout. Either part may be missing.
#
#   bench/usage_report.sh bench/results/usage-2026-11-28.json > bench/results/usage-2026-11-28.md
set -euo pipefail
IN=${1:?usage: usage_report.sh RESULT.json}
command -v jq >/dev/null || {
    echo "jq is required" >&2
    exit 1
}

jq -r '
def f1: if . == null then "–" else (. * 10 | round / 10 | tostring) end;
def f2: if . == null then "–" else (. * 100 | round / 100 | tostring) end;
def int: if . == null then "–" else (round | tostring) end;
def pf(ok): if ok then "**pass**" else "**FAIL**" end;
def paired($p): if $p == null then "" else
  "; paired by round: median \($p.median_cost_pct | f1) %\(if $p.interval_90 == null then " (too few rounds for an interval)" else
  ", \($p.interval_90.coverage * 100 | round) % interval \($p.interval_90.low | f1)–\($p.interval_90.high | f1) %" end)" end;
def meta_line: "git `\(.git_sha[0:12])`\(if .git_dirty then " (+ uncommitted changes)" else "" end), \(.date), \(.machine.nproc) × \(.machine.cpu_model), \(.machine.memory), \([.tools.load_tool, .tools.rustc] | map(select(. != "")) | join(", "))\(if .runs_started_while_compiling > 0 then ", **\(.runs_started_while_compiling) run(s) started while cargo was compiling**" else "" end)";
def q($size; $case): (.stats.sizes[]? | select(.records == $size) | .http.queries[] | select(.case == $case)) // null;
def inproc($size; $case): (.stats.sizes[]? | select(.records == $size) | .stats_bench.aggregate[] | select(.case == $case)) // null;

. as $r |
"# Usage tracking benchmark\n",
"Issue 3, acceptance 7. Produced by `bench/usage_overhead.sh` and `bench/usage_stats.sh`; raw figures in the `.json` next to this file. How it is measured: `bench/README.md`.\n",
(if .overhead then "- Overhead run: " + (.overhead.meta | meta_line) else empty end),
(if .stats then "- Stats run: " + (.stats.meta | meta_line) else empty end),
"",
"## Goals\n",
"| figure | goal | measured | result |",
"|---|---|---|---|",
(.overhead.summary // {} | to_entries[] | select(.key != "json_paced") |
  .key as $v | .value as $s |
  "| throughput cost of tracking, \(if $v == "json" then "1 KB chat, non-streaming" else "1 KB chat, streaming (20 chunks)" end), \($r.overhead.setup.connections[$v]) connections | ≤ 5 % | \($s.throughput_cost_pct | f1) % (off \($s.off.rps_median | int) req/s → on \($s.on.rps_median | int) req/s, medians of \($s.on.runs))\(paired($s.paired_by_round)) | \(pf($s.throughput_cost_pct <= 5)) |"),
(.overhead.summary.json_paced // null | select(. != null) | . as $s |
  "| proxy CPU per request with every token counted (1 KB chat at ~\($r.overhead.setup.paced_target_rps) req/s, tracker keeps up) | (none; context for the 5 %) | off \($s.off.cpu_us_per_request_median | f1) µs → on \($s.on.cpu_us_per_request_median | f1) µs (incl. drain \($s.on.cpu_us_per_request_incl_drain_median | f1) µs) = \($s.cpu_ratio_on_off | f2)×; p50 \($s.off.p50_ms_median | f2) → \($s.on.p50_ms_median | f2) ms, p99 \($s.off.p99_ms_median | f2) → \($s.on.p99_ms_median | f2) ms | info |"),
(.overhead.summary // {} | to_entries[] | .key as $v | .value.records | select(.stored != null) |
  "| records stored = responses served (\($v)) | equal (± requests in flight when wrk stops) | stored \(.stored) vs wrk \(.wrk_responses) (\(.stored - .wrk_responses)); dropped \(.dropped_total), token estimates \(.estimated_total) | \(pf(.dropped_total == 0 and ((.stored_minus_wrk_per_run | map(fabs) | max) <= $r.overhead.setup.connections[$v]))) |"),
(.stats.sizes // [] | .[0].records as $small |
  ( $r | q($small; "unfiltered")) as $u1 | ($r | q($small; "backend+model+30 days")) as $f1 |
  (.[] | .records as $n |
    ($r | q($n; "unfiltered")) as $u | ($r | q($n; "backend+model+30 days")) as $f |
    ($r | inproc($n; "unfiltered")) as $inu | ($r | inproc($n; "backend+model+30 days")) as $inf |
    (if $n == $small then 20 else 40 end) as $goal |
    "| `/v1/usage/stats` over \($n / 1e6) M records, unfiltered (HTTP median) | ≤ \($goal) ms\(if $n != $small then " (2 × 20 ms)" else "" end) | \($u.median_ms | f2) ms (in process \($inu.median_ms | f2) ms)\(if $n != $small and $u1 != null then "; \($u.median_ms / $u1.median_ms | f2)× the \($small / 1e6) M figure" else "" end) | \(pf($u.median_ms <= $goal)) |",
    "| `/v1/usage/stats` over \($n / 1e6) M records, backend + model + 30 days (HTTP median) | ≤ \($goal) ms\(if $n != $small then " (2 × 20 ms)" else "" end) | \($f.median_ms | f2) ms (in process \($inf.median_ms | f2) ms)\(if $n != $small and $f1 != null then "; \($f.median_ms / $f1.median_ms | f2)× the \($small / 1e6) M figure" else "" end) | \(pf($f.median_ms <= $goal)) |"
  )),
"",
(if .overhead then
  "## Tracking off vs on\n",
  "Closed loop with \(.overhead.meta.tools.load_tool), \(.overhead.setup.seconds_per_run) s per run after a \(.overhead.setup.warmup_seconds) s warm-up, \(.overhead.setup.order // "a fresh proxy per run, off and on alternated"). Upstream: \(.overhead.setup.upstream). Tracking on: \(.overhead.setup.tracking_on). CPU is the proxy process’s user + system time (`/proc/PID/stat`) during the run ÷ responses; “incl. drain” adds the seconds after the run while the tracker finishes building and writing.\n",
  "| variant | tracking | round | req/s | p50 ms | p99 ms | proxy CPU µs/req | incl. drain | stored − wrk responses | estimated tokens | dropped | s with cargo running |",
  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  (.overhead.runs[] | "| \(.variant) | \(.tracking) | \(.round) | \(.load.rps | int) | \(.load.latency_ms.p50 | f2) | \(.load.latency_ms.p99 | f2) | \(.proxy_cpu_us_per_request | f1) | \(.proxy_cpu_us_per_request_incl_drain | f1) | \(.records.minus_wrk_responses // "–") | \(.records.estimated_total // "–") | \(.records.dropped_total // "–") | \(.seconds_with_cargo_running // "–") |"),
  "",
  "| variant | tracking | median req/s | median p50 ms | median p99 ms | median CPU µs/req | incl. drain | non-2xx | socket errors |",
  "|---|---|---:|---:|---:|---:|---:|---:|---:|",
  (.overhead.summary | to_entries[] | .key as $v | .value | (.off, .on) as $m | ["off", "on"][if $m == .off then 0 else 1 end] as $mode |
    "| \($v) | \($mode) | \($m.rps_median | int) | \($m.p50_ms_median | f2) | \($m.p99_ms_median | f2) | \($m.cpu_us_per_request_median | f1) | \($m.cpu_us_per_request_incl_drain_median | f1) | \($m.non_2xx) | \($m.socket_errors) |"),
  "",
  "Proxy CPU by thread, tracking on (seconds during the run, summed over rounds):\n",
  "| variant | thread | CPU s |",
  "|---|---|---:|",
  (.overhead.runs | map(select(.tracking == "on")) | group_by(.variant)[] | .[0].variant as $v |
    (map(.thread_cpu_s | to_entries[]) | group_by(.key) | map({key: .[0].key, value: (map(.value) | add)}) | sort_by(-.value)[] |
      "| \($v) | `\(.key)` | \(.value | f2) |")),
  "",
  "Records (tracking on): stored (request_count after the run minus before it) vs responses counted by wrk:\n",
  (.overhead.summary | to_entries[] | "- \(.key): wrk \(.value.records.wrk_responses), stored \(.value.records.stored), per run stored − wrk = \(.value.records.stored_minus_wrk_per_run | map(tostring) | join(", ")); dropped \(.value.records.dropped_total), estimated (tokenizer behind) \(.value.records.estimated_total), store errors \(.value.records.store_errors_total); stored packed during the load (indexed afterwards) per run: \(.value.records.deferred_after_load_per_run // [] | map(tostring) | join(", ")), seconds to index them: \(.value.records.seconds_to_index_them_per_run // [] | map(tostring) | join(", "))"),
  ""
else empty end),
(if .stats then
  "## `/v1/usage/stats` over large stores\n",
  "In process: `stats_bench` (aggregate + finish_stats on the SQLite store, median of \(.stats.setup.runs)). HTTP: curl against `llm-proxy` opened on the same file (`time_total`, new connection each, median of \(.stats.setup.runs) after 2 warm-ups).\n",
  (.stats.sizes[] |
    "### \(.records / 1e6) M records (\(.store_bytes / 1e6 | round) MB)\n",
    "- \(.stats_bench.insert)",
    "- \(.stats_bench.open)",
    "- proxy start-up on this store: \(.http.proxy_startup_s) s; RSS after the queries \(.http.rss_mb_after | round) MB; newest record \(.http.newest_record)",
    "",
    "| case | in process median ms | min | max | HTTP median ms | HTTP p90 | HTTP min | HTTP max | records matched |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    (. as $s | (.stats_bench.aggregate | map(.case)) + (.http.queries | map(.case)) | unique[] as $c |
      ($s.stats_bench.aggregate | map(select(.case == $c))[0]) as $i | ($s.http.queries | map(select(.case == $c))[0]) as $h |
      "| \($c) | \($i.median_ms | f2) | \($i.min_ms | f2) | \($i.max_ms | f2) | \($h.median_ms | f2) | \($h.p90_ms | f2) | \($h.min_ms | f2) | \($h.max_ms | f2) | \($h.request_count // $i.matched // "–") |"),
    "",
    "HTTP queries: " + ([.http.queries[] | "`\(.query)`"] | join(", ")),
    ""
  )
else empty end)
' "$IN"
