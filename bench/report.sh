#!/usr/bin/env bash
# Renders a bench/results/proxy-<date>.json (written by bench/run.sh) as
# markdown on stdout.
#
#   bench/report.sh bench/results/proxy-2026-11-28.json > bench/results/proxy-2026-11-28.md
set -euo pipefail
IN=${1:?usage: report.sh RESULT.json}
command -v jq >/dev/null || {
    echo "jq is required" >&2
    exit 1
}

jq -r '
def f1: if . == null then "–" else (. * 10 | round / 10 | tostring) end;
def int: if . == null then "–" else (round | tostring) end;
def pct: if . == null then "–" else ((. * 1000 | round / 10 | tostring) + " %") end;
.meta as $m | .figures as $f |
"# Proxy benchmark: direct vs proxied\n",
"Issue 8 (and issue 3, acceptance 7). Produced by `bench/run.sh`; raw figures and every run in the `.json` next to this file. How it is measured: `bench/README.md`.\n",
"- git `\($m.git_sha[0:12])`\(if $m.git_dirty then " (+ uncommitted changes)" else "" end), \($m.date)",
"- \($m.machine.nproc) × \($m.machine.cpu_model), \($m.machine.memory), \($m.machine.kernel); load average at the end \($m.machine.loadavg_at_end)",
"- \([$m.tools.rustc, $m.tools.load_tool, $m.tools.open_loop] | map(select(. != null and . != "")) | join(", "))",
"- Noise: seconds during which cargo/rustc ran, summed over all runs: **\([.runs[].seconds_with_cargo_running] | add)** of \([.runs[] | .load.duration_s] | add | round) measured seconds\(if $m.runs_started_while_compiling > 0 then "; started while compiling" else "" end)",
"",
"## Goals\n",
"| figure | goal | measured | result |",
"|---|---|---|---|",
(.goals[] | "| \(.goal) | ≤ \(.limit) \(.unit) | \(.measured | f1) \(.unit) | \(if .pass then "pass" else "**MISS** by \(.missed_by) \(.unit)" end) |"),
"",
(if any(.goals[]; .why != null) then
  "### Why the misses\n", (.goals[] | select(.why != null) | "- **\(.goal)**: \(.why)"), "" else empty end),
"## Direct vs proxied (medians over \(.setup.rounds) round(s))\n",
"| variant | side | req/s | p50 µs | p99 µs | p99.9 µs | TTFB p50 µs | TTFB p99 µs | proxy CPU µs/req | errors |",
"|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
(["rate", "saturation", "stream"][] as $v | ["direct", "proxied"][] as $s | $f[$v][$s] |
  "| \($v) | \($s) | \(.rps | int) | \(.p50_us | int) | \(.p99_us | int) | \(.p999_us | int) | \(.ttfb_p50_us | int) | \(.ttfb_p99_us | int) | \(.proxy_cpu_us_per_request | f1) | \((if (.errors | type) == "number" then .errors else 0 end) + .non_2xx) |"),
"",
"- rate: \($f.rate.direct.runs) × \(.setup.rate_seconds) s at \(.setup.rate_rps) req/s (open loop, latency from the intended send time); added p50 **\($f.rate.added_p50_us | int) µs**, p99 **\($f.rate.added_p99_us | int) µs**; proxied/direct p50 \($f.rate.ratio_p50_proxied_direct), p99 \($f.rate.ratio_p99_proxied_direct)",
"- saturation: proxied/direct throughput **\($f.saturation.ratio_rps_proxied_direct)** (64 connections, wrk; proxy, mock and wrk share the machine)",
"- stream: added TTFB p50 \($f.stream.added_ttfb_p50_us | int) µs, p99 **\($f.stream.added_ttfb_p99_us | int) µs**; SSE events per response direct \($f.stream.direct.events_per_response), proxied \($f.stream.proxied.events_per_response)",
"",
"## Usage tracking (and wire capture) at saturation\n",
"| body | tracking | req/s | p50 µs | p99 µs | proxy CPU µs/req | throughput cost |",
"|---|---|---:|---:|---:|---:|---:|",
($f.tracking | to_entries[] | .key as $k | .value as $t | (["off", "on", "capture"][] as $s | $t[$s] | select(. != null) |
  "| \($k) | \($s) | \(.rps | int) | \(.p50_us | int) | \(.p99_us | int) | \(.proxy_cpu_us_per_request | f1) | \(if $s == "on" then "**\($t.throughput_cost_pct) %**" elif $s == "capture" then "\($t.capture_throughput_cost_pct) %" else "–" end) |")),
"",
"Capture: \(.setup.capture)",
"",
"## Memory\n",
"| figure | MB |",
"|---|---:|",
"| idle RSS (started, one request served), tracking on as shipped | \($f.memory.idle_rss_mb) |",
"| idle RSS, tracking off | \($f.memory.idle_rss_mb_tracking_off) |",
"| peak RSS with \($f.memory.streams) streams (\($f.memory.peak_in_flight) in flight at once) | \($f.memory.rss_mb_with_streams) |",
"| RSS 2 s after they ended | \($f.memory.rss_mb_after_streams) |",
"",
"Streams: \($f.memory.stream_errors) errors, \($f.memory.stream_non_2xx) non-2xx, \($f.memory.events_per_stream) SSE events each."
' "$IN"
