//! The inspector: summaries, issue detection, per-request analysis,
//! timelines and status counts over one or more capture files. Output is
//! built as text or JSON; the binary only prints it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value as Json, json};

use crate::files::capture_files;
use crate::format::{Direction, Entry};
use crate::reader::{self, Damage, ReadError};

/// Issue types, named as the original inspector named them.
pub mod kind {
    /// A gap within a session over the threshold while waiting on a response.
    pub const SLOW_RESPONSE: &str = "slow_response";
    /// HTTP 429, or an SSE error event whose type mentions rate or quota.
    pub const RATE_LIMIT: &str = "rate_limit";
    /// HTTP 5xx, a failed attempt, or any other SSE error event.
    pub const BACKEND_ERROR: &str = "backend_error";
    /// A request never forwarded or never answered, or a stream without its end marker.
    pub const MISSING_RESPONSE: &str = "missing_response";
}

/// Which entries to look at.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only these legs (all when empty).
    pub directions: Vec<Direction>,
    /// Only requests served (or attempted) by this backend.
    pub backend: Option<String>,
    /// Only this session.
    pub session: Option<String>,
    /// Only entries at or after this epoch second.
    pub since: Option<f64>,
    /// Only entries at or before this epoch second.
    pub until: Option<f64>,
}

/// What to report.
#[derive(Debug, Clone)]
pub struct InspectOptions {
    /// List issues.
    pub detect_issues: bool,
    /// Per-request analysis.
    pub analyze: bool,
    /// Every entry in time order.
    pub timeline: bool,
    /// Status code counts per leg.
    pub status_summary: bool,
    /// Every entry of one request, with payloads.
    pub track_request: Option<String>,
    /// JSON instead of text.
    pub json: bool,
    /// Gaps longer than this are `slow_response`.
    pub slow_threshold: Duration,
    /// Entry selection.
    pub filter: Filter,
}

impl Default for InspectOptions {
    fn default() -> Self {
        InspectOptions {
            detect_issues: false,
            analyze: false,
            timeline: false,
            status_summary: false,
            track_request: None,
            json: false,
            slow_threshold: Duration::from_secs(10),
            filter: Filter::default(),
        }
    }
}

/// Entries of one or more files, merged in time order.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The files read.
    pub files: Vec<PathBuf>,
    /// All entries, by time then sequence.
    pub entries: Vec<Entry>,
    /// Damage per file.
    pub damage: Vec<(PathBuf, Damage)>,
    /// Encoded size of the files.
    pub bytes: u64,
}

/// Reads `paths` (files, or directories of capture files).
pub fn load(paths: &[PathBuf]) -> Result<Loaded, ReadError> {
    let mut out = Loaded::default();
    for p in paths {
        let files = if p.is_dir() {
            capture_files(p)
                .map_err(|source| ReadError::Io {
                    path: p.display().to_string(),
                    source,
                })?
                .into_iter()
                .map(|(f, _)| f)
                .collect()
        } else {
            vec![p.clone()]
        };
        let in_dir = p.is_dir();
        for f in files {
            let c = match reader::read_file(&f) {
                Ok(c) => c,
                // A directory member that cannot be read (a file just
                // rotated in, or one pruned meanwhile) is damage, not the
                // end of the whole run.
                Err(e) if in_dir => {
                    out.damage.push((
                        f.clone(),
                        Damage {
                            offset: 0,
                            entries_read: 0,
                            bytes_skipped: std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0),
                            reason: e.to_string(),
                        },
                    ));
                    continue;
                }
                Err(e) => return Err(e),
            };
            out.bytes += std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
            if let Some(d) = c.damage {
                out.damage.push((f.clone(), d));
            }
            out.entries.extend(c.entries);
            out.files.push(f);
        }
    }
    out.entries
        .sort_by(|a, b| a.ts.total_cmp(&b.ts).then(a.seq.cmp(&b.seq)));
    Ok(out)
}

/// Keeps the entries `filter` selects.
pub fn apply_filter(entries: Vec<Entry>, filter: &Filter) -> Vec<Entry> {
    let backend_rids: Option<BTreeSet<String>> = filter.backend.as_ref().map(|be| {
        entries
            .iter()
            .filter(|e| e.meta.text("be") == Some(be.as_str()))
            .map(|e| e.rid().to_owned())
            .collect()
    });
    entries
        .into_iter()
        .filter(|e| filter.directions.is_empty() || filter.directions.contains(&e.dir))
        .filter(|e| filter.session.as_deref().is_none_or(|s| e.sid() == s))
        .filter(|e| backend_rids.as_ref().is_none_or(|r| r.contains(e.rid())))
        .filter(|e| filter.since.is_none_or(|t| e.ts >= t))
        .filter(|e| filter.until.is_none_or(|t| e.ts <= t))
        .collect()
}

/// One problem found in a capture.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    /// One of [`kind`].
    pub kind: &'static str,
    /// When (epoch seconds).
    pub ts: f64,
    /// Request id.
    pub rid: String,
    /// Session id.
    pub sid: String,
    /// Backend, when known.
    pub backend: Option<String>,
    /// What was seen.
    pub detail: String,
}

/// `2026-11-28T03:04:05.678Z` for epoch seconds.
pub fn format_ts(ts: f64) -> String {
    // Up to 9999-12-31 (damaged entries can hold any float).
    const LAST: f64 = 253_402_300_799.0;
    let us = if ts.is_finite() && ts > 0.0 {
        (ts.min(LAST) * 1e6).round() as i64
    } else {
        0
    };
    llm_proxy_core::time::format_rfc3339_us(us)
}

/// Entries grouped by request id, each group in writer order.
pub(crate) fn by_request(entries: &[Entry]) -> BTreeMap<&str, Vec<&Entry>> {
    let mut map: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for e in entries {
        map.entry(e.rid()).or_default().push(e);
    }
    for v in map.values_mut() {
        v.sort_by(|a, b| a.seq.cmp(&b.seq).then(a.ts.total_cmp(&b.ts)));
    }
    map
}

/// The body after an HTTP head, or the whole payload for chunks.
fn body_of(e: &Entry) -> &[u8] {
    let d = &e.data[..];
    if d.starts_with(b"HTTP/")
        || e.dir == Direction::ClientToProxy
        || e.dir == Direction::ProxyToBackend
    {
        match d.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(i) => &d[i + 4..],
            None => &[],
        }
    } else {
        d
    }
}

fn status_of(e: &Entry) -> Option<i64> {
    e.meta.int("sc")
}

/// SSE `data:` payloads that are error events, with their type text.
fn sse_error_types(data: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let mut found = Vec::new();
    for line in text.lines() {
        let Some(payload) = line.strip_prefix("data:") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Json>(payload.trim()) else {
            continue;
        };
        let is_error = v.get("type").and_then(Json::as_str) == Some("error")
            || v.get("error").is_some_and(|e| !e.is_null());
        if !is_error {
            continue;
        }
        let err = v.get("error").unwrap_or(&v);
        let kind = ["type", "code"]
            .iter()
            .filter_map(|k| err.get(k).and_then(Json::as_str))
            .find(|s| *s != "error")
            .unwrap_or("error");
        found.push(kind.to_owned());
    }
    found
}

/// Finds the issues in `entries` (see [`kind`]).
pub fn detect_issues(entries: &[Entry], slow_threshold: Duration) -> Vec<Issue> {
    let mut issues = Vec::new();
    let mut seen: BTreeSet<(String, &'static str)> = BTreeSet::new();
    let mut add = |issues: &mut Vec<Issue>,
                   kind: &'static str,
                   e: &Entry,
                   backend: Option<&str>,
                   detail: String| {
        if seen.insert((e.rid().to_owned(), kind)) {
            issues.push(Issue {
                kind,
                ts: e.ts,
                rid: e.rid().to_owned(),
                sid: e.sid().to_owned(),
                backend: backend.map(str::to_owned),
                detail,
            });
        }
    };
    for (_, es) in by_request(entries) {
        let backend = es.iter().find_map(|e| e.meta.text("be"));
        // Backend leg: statuses, failures, error events, missing answers.
        let mut attempt_open: Option<&Entry> = None;
        let mut stream_open: Option<&Entry> = None;
        for e in &es {
            match e.dir {
                Direction::ProxyToBackend => {
                    if let Some(req) = attempt_open.take() {
                        add(
                            &mut issues,
                            kind::MISSING_RESPONSE,
                            req,
                            backend,
                            "backend request never answered".into(),
                        );
                    }
                    attempt_open = Some(e);
                    stream_open = None;
                }
                Direction::BackendToProxy => {
                    attempt_open = None;
                    let be = e.meta.text("be").or(backend);
                    match status_of(e) {
                        Some(429) => add(
                            &mut issues,
                            kind::RATE_LIMIT,
                            e,
                            be,
                            "HTTP 429 from the backend".into(),
                        ),
                        Some(sc) if sc >= 500 => add(
                            &mut issues,
                            kind::BACKEND_ERROR,
                            e,
                            be,
                            format!("HTTP {sc} from the backend"),
                        ),
                        _ => {}
                    }
                    if e.meta.flag("ss") {
                        stream_open = Some(e);
                    }
                    if e.meta.flag("se") {
                        stream_open = None;
                    }
                    if let Some(err) = e.meta.text("err") {
                        match stream_open.take() {
                            Some(_) => add(
                                &mut issues,
                                kind::MISSING_RESPONSE,
                                e,
                                be,
                                format!("backend stream ended without end marker: {err}"),
                            ),
                            None if status_of(e).is_none() => add(
                                &mut issues,
                                kind::BACKEND_ERROR,
                                e,
                                be,
                                format!("backend attempt failed: {err}"),
                            ),
                            None => add(
                                &mut issues,
                                kind::MISSING_RESPONSE,
                                e,
                                be,
                                format!("backend response broken off: {err}"),
                            ),
                        }
                    }
                    for t in sse_error_types(body_of(e)) {
                        error_event(&mut issues, &mut add, e, be, &t, "backend");
                    }
                }
                _ => {}
            }
        }
        if let Some(req) = attempt_open {
            add(
                &mut issues,
                kind::MISSING_RESPONSE,
                req,
                backend,
                "backend request never answered".into(),
            );
        }
        if let Some(s) = stream_open {
            add(
                &mut issues,
                kind::MISSING_RESPONSE,
                s,
                backend,
                "backend stream without end marker".into(),
            );
        }
        // Client leg.
        let mut client_stream: Option<&Entry> = None;
        let mut answered = false;
        for e in es.iter().filter(|e| e.dir == Direction::ProxyToClient) {
            answered = true;
            match status_of(e) {
                Some(429) => add(
                    &mut issues,
                    kind::RATE_LIMIT,
                    e,
                    backend,
                    "HTTP 429 to the client".into(),
                ),
                Some(sc) if sc >= 500 => add(
                    &mut issues,
                    kind::BACKEND_ERROR,
                    e,
                    backend,
                    format!("HTTP {sc} to the client"),
                ),
                _ => {}
            }
            if e.meta.flag("ss") {
                client_stream = Some(e);
            }
            if e.meta.flag("se") {
                client_stream = None;
            }
            for t in sse_error_types(body_of(e)) {
                error_event(&mut issues, &mut add, e, backend, &t, "client");
            }
        }
        if let Some(s) = client_stream {
            add(
                &mut issues,
                kind::MISSING_RESPONSE,
                s,
                backend,
                "client stream without end marker".into(),
            );
        }
        if let Some(req) = es.iter().find(|e| e.dir == Direction::ClientToProxy) {
            let forwarded = es.iter().any(|e| e.dir == Direction::ProxyToBackend);
            let client_status = es
                .iter()
                .filter(|e| e.dir == Direction::ProxyToClient)
                .find_map(|e| status_of(e));
            if !answered {
                add(
                    &mut issues,
                    kind::MISSING_RESPONSE,
                    req,
                    backend,
                    "client request never answered".into(),
                );
            } else if !forwarded && !client_status.is_some_and(|s| (400..500).contains(&s)) {
                add(
                    &mut issues,
                    kind::MISSING_RESPONSE,
                    req,
                    backend,
                    "client request never forwarded".into(),
                );
            }
        }
    }
    // Slow gaps within a session while a response was awaited.
    let mut last: HashMap<&str, &Entry> = HashMap::new();
    let threshold = slow_threshold.as_secs_f64();
    for e in entries {
        if let Some(prev) = last.get(e.sid())
            && e.dir != Direction::ClientToProxy
            && e.ts - prev.ts > threshold
        {
            let backend = e.meta.text("be");
            add(
                &mut issues,
                kind::SLOW_RESPONSE,
                e,
                backend,
                format!(
                    "{:.3} s gap before {} (after {}), over {:.3} s",
                    e.ts - prev.ts,
                    e.dir.name(),
                    prev.dir.name(),
                    threshold
                ),
            );
        }
        last.insert(e.sid(), e);
    }
    issues.sort_by(|a, b| a.ts.total_cmp(&b.ts).then(a.kind.cmp(b.kind)));
    issues
}

type AddIssue<'a> = dyn FnMut(&mut Vec<Issue>, &'static str, &Entry, Option<&str>, String) + 'a;

fn error_event(
    issues: &mut Vec<Issue>,
    add: &mut AddIssue<'_>,
    e: &Entry,
    be: Option<&str>,
    t: &str,
    leg: &str,
) {
    let lower = t.to_ascii_lowercase();
    let kind = if lower.contains("rate") || lower.contains("quota") {
        kind::RATE_LIMIT
    } else {
        kind::BACKEND_ERROR
    };
    add(
        issues,
        kind,
        e,
        be,
        format!("SSE error event `{t}` on the {leg} stream"),
    );
}

/// What the client received for one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestAnalysis {
    /// Request id.
    pub rid: String,
    /// Session id.
    pub sid: String,
    /// Request line (`POST /v1/chat/completions`).
    pub request: String,
    /// Model the client asked for.
    pub model: String,
    /// Backend that answered (last attempt).
    pub backend: Option<String>,
    /// Status sent to the client.
    pub status: Option<i64>,
    /// Streamed.
    pub stream: bool,
    /// Receipt → first body byte to the client (ms).
    pub ttft_ms: Option<f64>,
    /// Receipt → last entry (ms).
    pub duration_ms: f64,
    /// Characters of generated text.
    pub content_length: usize,
    /// Tool calls in the answer.
    pub tool_calls: usize,
    /// Finish / stop reason.
    pub finish_reason: Option<String>,
}

fn json_events(data: &[u8], stream: bool) -> Vec<Json> {
    if !stream {
        return serde_json::from_slice::<Json>(data).into_iter().collect();
    }
    String::from_utf8_lossy(data)
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|p| serde_json::from_str::<Json>(p.trim()).ok())
        .collect()
}

fn str_at<'a>(v: &'a Json, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

/// Reads model, timing, content, tool calls and finish reason per request.
pub fn analyze(entries: &[Entry]) -> Vec<RequestAnalysis> {
    let mut out = Vec::new();
    for (rid, es) in by_request(entries) {
        let Some(req) = es.iter().find(|e| e.dir == Direction::ClientToProxy) else {
            continue;
        };
        let request_line =
            String::from_utf8_lossy(req.data.split(|b| *b == b'\r').next().unwrap_or(&[]))
                .trim_end_matches(" HTTP/1.1")
                .to_owned();
        let body: Json = serde_json::from_slice(body_of(req)).unwrap_or(Json::Null);
        let client: Vec<&&Entry> = es
            .iter()
            .filter(|e| e.dir == Direction::ProxyToClient)
            .collect();
        let stream = client.iter().any(|e| e.meta.flag("ss"));
        let mut payload = Vec::new();
        for e in &client {
            payload.extend_from_slice(body_of(e));
        }
        let mut a = RequestAnalysis {
            rid: rid.to_owned(),
            sid: req.sid().to_owned(),
            request: request_line,
            model: body
                .get("model")
                .and_then(Json::as_str)
                .unwrap_or("")
                .to_owned(),
            backend: es
                .iter()
                .rev()
                .find_map(|e| e.meta.text("be"))
                .map(str::to_owned),
            status: client.iter().find_map(|e| status_of(e)),
            stream,
            ttft_ms: None,
            duration_ms: es
                .iter()
                .map(|e| e.ts)
                .fold(req.ts, f64::max)
                .sub_ms(req.ts),
            ..RequestAnalysis::default()
        };
        a.ttft_ms = if stream {
            client
                .iter()
                .find(|e| e.meta.int("ci") == Some(1))
                .map(|e| e.ts.sub_ms(req.ts))
        } else {
            client.iter().find_map(|e| e.meta.float("ttfb"))
        };
        let mut tool_ids = BTreeSet::new();
        for v in json_events(&payload, stream) {
            // OpenAI chat.
            for c in v
                .get("choices")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
            {
                for part in [c.get("delta"), c.get("message")].into_iter().flatten() {
                    a.content_length += part
                        .get("content")
                        .and_then(Json::as_str)
                        .map_or(0, |s| s.chars().count());
                    for t in part
                        .get("tool_calls")
                        .and_then(Json::as_array)
                        .into_iter()
                        .flatten()
                    {
                        let id = t
                            .get("id")
                            .and_then(Json::as_str)
                            .map(str::to_owned)
                            .unwrap_or_else(|| {
                                format!("#{}", t.get("index").and_then(Json::as_u64).unwrap_or(0))
                            });
                        tool_ids.insert(id);
                    }
                }
                if let Some(f) = c.get("finish_reason").and_then(Json::as_str) {
                    a.finish_reason = Some(f.to_owned());
                }
            }
            // Anthropic messages.
            match v.get("type").and_then(Json::as_str) {
                Some("content_block_delta") => {
                    a.content_length +=
                        str_at(&v, &["delta", "text"]).map_or(0, |s| s.chars().count());
                }
                Some("content_block_start")
                    if str_at(&v, &["content_block", "type"]) == Some("tool_use") =>
                {
                    tool_ids.insert(
                        str_at(&v, &["content_block", "id"])
                            .unwrap_or("tool")
                            .to_owned(),
                    );
                }
                Some("message_delta") => {
                    if let Some(r) = str_at(&v, &["delta", "stop_reason"]) {
                        a.finish_reason = Some(r.to_owned());
                    }
                }
                Some("message") => {
                    for b in v
                        .get("content")
                        .and_then(Json::as_array)
                        .into_iter()
                        .flatten()
                    {
                        match b.get("type").and_then(Json::as_str) {
                            Some("text") => {
                                a.content_length += b
                                    .get("text")
                                    .and_then(Json::as_str)
                                    .map_or(0, |s| s.chars().count())
                            }
                            Some("tool_use") => {
                                tool_ids.insert(
                                    b.get("id")
                                        .and_then(Json::as_str)
                                        .unwrap_or("tool")
                                        .to_owned(),
                                );
                            }
                            _ => {}
                        }
                    }
                    if let Some(r) = v.get("stop_reason").and_then(Json::as_str) {
                        a.finish_reason = Some(r.to_owned());
                    }
                }
                // OpenAI responses.
                Some("response.output_text.delta") => {
                    a.content_length += v
                        .get("delta")
                        .and_then(Json::as_str)
                        .map_or(0, |s| s.chars().count());
                }
                Some("response.output_item.added")
                    if str_at(&v, &["item", "type"]) == Some("function_call") =>
                {
                    tool_ids.insert(str_at(&v, &["item", "id"]).unwrap_or("call").to_owned());
                }
                Some("response.completed") => {
                    if let Some(s) = str_at(&v, &["response", "status"]) {
                        a.finish_reason = Some(s.to_owned());
                    }
                }
                _ => {}
            }
            if v.get("object").and_then(Json::as_str) == Some("response") {
                for item in v
                    .get("output")
                    .and_then(Json::as_array)
                    .into_iter()
                    .flatten()
                {
                    if item.get("type").and_then(Json::as_str) == Some("function_call") {
                        tool_ids.insert(
                            item.get("id")
                                .and_then(Json::as_str)
                                .unwrap_or("call")
                                .to_owned(),
                        );
                    }
                    for c in item
                        .get("content")
                        .and_then(Json::as_array)
                        .into_iter()
                        .flatten()
                    {
                        a.content_length += c
                            .get("text")
                            .and_then(Json::as_str)
                            .map_or(0, |s| s.chars().count());
                    }
                }
                if let Some(s) = v.get("status").and_then(Json::as_str) {
                    a.finish_reason = Some(s.to_owned());
                }
            }
        }
        a.tool_calls = tool_ids.len();
        out.push(a);
    }
    out.sort_by(|a, b| a.rid.cmp(&b.rid));
    out
}

trait SubMs {
    fn sub_ms(self, start: f64) -> f64;
}

impl SubMs for f64 {
    fn sub_ms(self, start: f64) -> f64 {
        ((self - start) * 1e6).round() / 1e3
    }
}

fn meta_json(e: &Entry) -> Json {
    let mut m = serde_json::Map::new();
    for (k, v) in &e.meta.0 {
        let v = match v {
            crate::MetaValue::Text(s) => json!(s),
            crate::MetaValue::Int(i) => json!(i),
            crate::MetaValue::Float(f) => json!(f),
            crate::MetaValue::Bool(b) => json!(b),
        };
        m.insert(k.clone(), v);
    }
    Json::Object(m)
}

fn meta_text(e: &Entry) -> String {
    e.meta
        .0
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "rid" | "sid"))
        .map(|(k, v)| match v {
            crate::MetaValue::Text(s) => format!("{k}={s}"),
            crate::MetaValue::Int(i) => format!("{k}={i}"),
            crate::MetaValue::Float(f) => format!("{k}={f}"),
            crate::MetaValue::Bool(b) => format!("{k}={b}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn preview(data: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&data[..data.len().min(max)]);
    let mut s = text.replace('\r', "").replace('\n', "\\n");
    if data.len() > max {
        s.push('…');
    }
    s
}

/// The report for `loaded` and whether `--detect-issues` found any.
pub fn report(loaded: &Loaded, opts: &InspectOptions) -> (String, bool) {
    let entries = apply_filter(loaded.entries.clone(), &opts.filter);
    // Detect on whole exchanges (a direction filter or a window edge must
    // not make answered requests look unanswered), then keep the issues of
    // the requests the filter selects.
    let issues = if opts.detect_issues {
        let selected: BTreeSet<&str> = entries.iter().map(Entry::rid).collect();
        detect_issues(&loaded.entries, opts.slow_threshold)
            .into_iter()
            .filter(|i| selected.contains(i.rid.as_str()))
            .collect()
    } else {
        Vec::new()
    };
    let found = !issues.is_empty();
    let text = if opts.json {
        report_json(loaded, &entries, &issues, opts)
    } else {
        report_text(loaded, &entries, &issues, opts)
    };
    (text, found)
}

fn summary_counts(entries: &[Entry]) -> (BTreeMap<&'static str, usize>, usize, usize, usize, f64) {
    let mut per_dir = BTreeMap::new();
    for d in Direction::ALL {
        per_dir.insert(d.name(), entries.iter().filter(|e| e.dir == d).count());
    }
    let bytes = entries.iter().map(|e| e.data.len()).sum();
    let sessions = entries
        .iter()
        .map(Entry::sid)
        .collect::<BTreeSet<_>>()
        .len();
    let requests = entries
        .iter()
        .map(Entry::rid)
        .collect::<BTreeSet<_>>()
        .len();
    let duration = match (entries.first(), entries.last()) {
        (Some(a), Some(b)) => b.ts - a.ts,
        _ => 0.0,
    };
    (per_dir, bytes, sessions, requests, duration)
}

fn status_counts(entries: &[Entry]) -> BTreeMap<&'static str, BTreeMap<i64, usize>> {
    let mut out: BTreeMap<&'static str, BTreeMap<i64, usize>> = BTreeMap::new();
    for (_, es) in by_request(entries) {
        for dir in [Direction::ProxyToClient, Direction::BackendToProxy] {
            let leg = if dir == Direction::ProxyToClient {
                "client"
            } else {
                "backend"
            };
            let statuses: BTreeSet<(u64, i64)> = es
                .iter()
                .filter(|e| e.dir == dir)
                .filter_map(|e| status_of(e).map(|s| (e.seq, s)))
                .collect();
            // One status per response: the head and the final entry repeat it.
            let mut last = None;
            for (_, s) in statuses {
                if last != Some(s) {
                    *out.entry(leg).or_default().entry(s).or_default() += 1;
                }
                last = Some(s);
            }
        }
    }
    out
}

fn report_text(
    loaded: &Loaded,
    entries: &[Entry],
    issues: &[Issue],
    opts: &InspectOptions,
) -> String {
    let mut s = String::new();
    let (per_dir, bytes, sessions, requests, duration) = summary_counts(entries);
    for f in &loaded.files {
        let _ = writeln!(s, "File: {}", f.display());
    }
    let _ = writeln!(s, "Entries: {}", entries.len());
    for (name, n) in &per_dir {
        let _ = writeln!(s, "  {name:<17} {n}");
    }
    let _ = writeln!(s, "Payload bytes: {bytes} (files: {} bytes)", loaded.bytes);
    if let (Some(a), Some(b)) = (entries.first(), entries.last()) {
        let _ = writeln!(s, "Time: {} .. {}", format_ts(a.ts), format_ts(b.ts));
    }
    let _ = writeln!(s, "Duration: {duration:.3} s");
    let _ = writeln!(s, "Sessions: {sessions}");
    let _ = writeln!(s, "Requests: {requests}");
    for (f, d) in &loaded.damage {
        let _ = writeln!(s, "DAMAGE in {}: {d}", f.display());
    }
    if opts.status_summary {
        let _ = writeln!(s, "\nStatus codes:");
        for (leg, counts) in status_counts(entries) {
            let list: Vec<String> = counts.iter().map(|(c, n)| format!("{c}: {n}")).collect();
            let _ = writeln!(s, "  {leg:<8} {}", list.join(", "));
        }
    }
    if opts.detect_issues {
        let _ = writeln!(s);
        if issues.is_empty() {
            let _ = writeln!(s, "No issues detected");
        } else {
            let _ = writeln!(s, "Issues: {}", issues.len());
            for i in issues {
                let _ = writeln!(
                    s,
                    "  [{}] {} rid={} sid={}{}: {}",
                    i.kind,
                    format_ts(i.ts),
                    i.rid,
                    i.sid,
                    i.backend
                        .as_deref()
                        .map(|b| format!(" backend={b}"))
                        .unwrap_or_default(),
                    i.detail
                );
            }
        }
    }
    if opts.analyze {
        let _ = writeln!(s, "\nRequests:");
        for a in analyze(entries) {
            let _ = writeln!(
                s,
                "  {} {} model={} backend={} status={} stream={} ttft_ms={} duration_ms={:.3} content_chars={} tool_calls={} finish={}",
                a.rid,
                a.request,
                a.model,
                a.backend.as_deref().unwrap_or("-"),
                a.status.map_or("-".to_owned(), |s| s.to_string()),
                a.stream,
                a.ttft_ms.map_or("-".to_owned(), |t| format!("{t:.3}")),
                a.duration_ms,
                a.content_length,
                a.tool_calls,
                a.finish_reason.as_deref().unwrap_or("-"),
            );
        }
    }
    if opts.timeline {
        let _ = writeln!(s, "\nTimeline:");
        let t0 = entries.first().map_or(0.0, |e| e.ts);
        for e in entries {
            let _ = writeln!(
                s,
                "  +{:>9.3}s #{:<5} {:<16} rid={} {:>6} B {} {}",
                e.ts - t0,
                e.seq,
                e.dir.name(),
                e.rid(),
                e.data.len(),
                meta_text(e),
                preview(&e.data, 60)
            );
        }
    }
    if let Some(rid) = &opts.track_request {
        let _ = writeln!(s, "\nRequest {rid}:");
        let mine: Vec<&Entry> = entries.iter().filter(|e| e.rid() == rid).collect();
        if mine.is_empty() {
            let _ = writeln!(s, "  not found");
        }
        let t0 = mine.first().map_or(0.0, |e| e.ts);
        for e in mine {
            let _ = writeln!(
                s,
                "  +{:>9.3}s {:<16} {} B {}",
                e.ts - t0,
                e.dir.name(),
                e.data.len(),
                meta_text(e)
            );
            if !e.data.is_empty() {
                let _ = writeln!(s, "      {}", preview(&e.data, 400));
            }
        }
    }
    s
}

fn report_json(
    loaded: &Loaded,
    entries: &[Entry],
    issues: &[Issue],
    opts: &InspectOptions,
) -> String {
    let (per_dir, bytes, sessions, requests, duration) = summary_counts(entries);
    let mut out = json!({
        "files": loaded.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "summary": {
            "entries": entries.len(),
            "per_direction": per_dir,
            "payload_bytes": bytes,
            "file_bytes": loaded.bytes,
            "duration_seconds": duration,
            "sessions": sessions,
            "requests": requests,
            "first_ts": entries.first().map(|e| e.ts),
            "last_ts": entries.last().map(|e| e.ts),
        },
        "damage": loaded.damage.iter().map(|(f, d)| json!({
            "file": f.display().to_string(),
            "offset": d.offset,
            "entries_read": d.entries_read,
            "bytes_skipped": d.bytes_skipped,
            "reason": d.reason,
        })).collect::<Vec<_>>(),
    });
    if opts.detect_issues {
        out["issues"] = issues
            .iter()
            .map(|i| json!({"type": i.kind, "ts": i.ts, "rid": i.rid, "sid": i.sid, "backend": i.backend, "detail": i.detail}))
            .collect();
    }
    if opts.status_summary {
        out["status"] = json!(
            status_counts(entries)
                .into_iter()
                .map(|(leg, c)| (
                    leg,
                    c.into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<BTreeMap<_, _>>()
                ))
                .collect::<BTreeMap<_, _>>()
        );
    }
    if opts.analyze {
        out["requests"] = analyze(entries)
            .into_iter()
            .map(|a| {
                json!({
                    "rid": a.rid, "sid": a.sid, "request": a.request, "model": a.model,
                    "backend": a.backend, "status": a.status, "stream": a.stream,
                    "ttft_ms": a.ttft_ms, "duration_ms": a.duration_ms,
                    "content_length": a.content_length, "tool_calls": a.tool_calls,
                    "finish_reason": a.finish_reason,
                })
            })
            .collect();
    }
    let entry_json = |e: &Entry| json!({"ts": e.ts, "seq": e.seq, "dir": e.dir.code(), "direction": e.dir.name(), "bytes": e.data.len(), "meta": meta_json(e)});
    if opts.timeline {
        out["timeline"] = entries.iter().map(entry_json).collect();
    }
    if let Some(rid) = &opts.track_request {
        out["track"] = entries
            .iter()
            .filter(|e| e.rid() == rid)
            .map(|e| {
                let mut j = entry_json(e);
                j["data"] = json!(String::from_utf8_lossy(&e.data));
                j
            })
            .collect();
    }
    serde_json::to_string_pretty(&out).unwrap_or_default() + "\n"
}

/// Convenience for tools: load `paths` and report.
pub fn inspect_paths(
    paths: &[PathBuf],
    opts: &InspectOptions,
) -> Result<(String, bool), ReadError> {
    let loaded = load(paths)?;
    Ok(report(&loaded, opts))
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] rid={}: {}", self.kind, self.rid, self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::RotatingFiles;
    use crate::format::Meta;

    #[test]
    fn an_empty_directory_member_is_damage_and_the_rest_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = RotatingFiles::new(dir.path(), 1 << 20, 1 << 22, "s".into());
        files
            .append(&Entry {
                ts: 1.0,
                dir: Direction::ClientToProxy,
                seq: 1,
                data: b"POST / HTTP/1.1\r\n\r\n{}".to_vec(),
                meta: Meta::default(),
            })
            .unwrap();
        files.close_current().unwrap();
        // A file just created by another rotation, nothing in it yet.
        let empty = dir.path().join("capture-9999999999999-1-00001.cbor");
        std::fs::write(&empty, b"").unwrap();
        let loaded = load(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(loaded.entries.len(), 1);
        assert_eq!(loaded.damage.len(), 1, "{:?}", loaded.damage);
        assert_eq!(loaded.damage[0].0, empty);
        // Named directly, the same file is still an error.
        assert!(load(&[empty]).is_err());
    }
}
