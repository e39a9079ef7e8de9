//! What usage queries ask for: filters, grouping, paging — parsed from the
//! query string of `/v1/usage/{stats,recent,export}` — and the shape of the
//! stats answer (SPEC §4, §6).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::record::UsageRecord;
use crate::time::{DateBound, parse_instant};

/// A bad query parameter, naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid query parameter `{param}`: {message}")]
pub struct QueryError {
    /// The parameter's name.
    pub param: String,
    /// What is wrong with it.
    pub message: String,
}

impl QueryError {
    fn new(param: &str, message: impl Into<String>) -> QueryError {
        QueryError {
            param: param.to_owned(),
            message: message.into(),
        }
    }
}

/// Record filters; every set field must match. Times are inclusive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UsageFilter {
    /// `backend_type` equals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_type: Option<String>,
    /// `backend` (instance name) equals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// `model` (as served) equals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `frontend_type` equals (`openai`, `anthropic`, `responses`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frontend_type: Option<String>,
    /// `session_id` equals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// `proxy_user` equals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_user: Option<String>,
    /// `user_agent` equals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// `http_status_code` equals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status_code: Option<u16>,
    /// `timestamp_us >= start_us` (echoed as `start_date`).
    #[serde(
        rename = "start_date",
        skip_serializing_if = "Option::is_none",
        serialize_with = "as_rfc3339"
    )]
    pub start_us: Option<i64>,
    /// `timestamp_us <= end_us` (echoed as `end_date`).
    #[serde(
        rename = "end_date",
        skip_serializing_if = "Option::is_none",
        serialize_with = "as_rfc3339"
    )]
    pub end_us: Option<i64>,
    /// UTC hour of the timestamp, 0–23.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hour_of_day: Option<u8>,
    /// UTC weekday of the timestamp, 0 = Monday … 6 = Sunday.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day_of_week: Option<u8>,
}

fn as_rfc3339<S: serde::Serializer>(us: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match us {
        Some(us) => s.serialize_str(&crate::time::format_rfc3339(*us)),
        None => s.serialize_none(),
    }
}

impl UsageFilter {
    /// True when `record` passes every set filter.
    pub fn matches(&self, r: &UsageRecord) -> bool {
        fn eq(want: &Option<String>, have: &str) -> bool {
            want.as_deref().is_none_or(|w| w == have)
        }
        fn eq_opt(want: &Option<String>, have: &Option<String>) -> bool {
            want.as_deref().is_none_or(|w| have.as_deref() == Some(w))
        }
        eq(&self.backend_type, &r.backend_type)
            && eq(&self.backend, &r.backend)
            && eq(&self.model, &r.model)
            && eq(&self.frontend_type, &r.frontend_type)
            && eq(&self.session_id, &r.session_id)
            && eq_opt(&self.proxy_user, &r.proxy_user)
            && eq_opt(&self.user_agent, &r.user_agent)
            && self
                .http_status_code
                .is_none_or(|s| s == r.http_status_code)
            && self.start_us.is_none_or(|s| r.timestamp_us >= s)
            && self.end_us.is_none_or(|e| r.timestamp_us <= e)
            && self
                .hour_of_day
                .is_none_or(|h| crate::time::hour_of_day(r.timestamp_us) == h)
            && self
                .day_of_week
                .is_none_or(|d| crate::time::day_of_week(r.timestamp_us) == d)
    }

    /// True when no filter is set.
    pub fn is_empty(&self) -> bool {
        *self == UsageFilter::default()
    }
}

/// A dimension stats can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupKey {
    /// Backend type.
    BackendType,
    /// Backend instance.
    Backend,
    /// Served model.
    Model,
    /// Requested model.
    RequestedModel,
    /// Front-end protocol.
    FrontendType,
    /// HTTP status.
    HttpStatusCode,
    /// Proxy key label.
    ProxyUser,
    /// Session.
    SessionId,
    /// User agent.
    UserAgent,
    /// Streaming or not.
    Streaming,
}

impl GroupKey {
    /// All keys with their names.
    pub const ALL: &'static [(&'static str, GroupKey)] = &[
        ("backend_type", GroupKey::BackendType),
        ("backend", GroupKey::Backend),
        ("model", GroupKey::Model),
        ("requested_model", GroupKey::RequestedModel),
        ("frontend_type", GroupKey::FrontendType),
        ("http_status_code", GroupKey::HttpStatusCode),
        ("proxy_user", GroupKey::ProxyUser),
        ("session_id", GroupKey::SessionId),
        ("user_agent", GroupKey::UserAgent),
        ("streaming", GroupKey::Streaming),
    ];

    /// The parameter name of this key.
    pub fn name(self) -> &'static str {
        GroupKey::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("", |(n, _)| n)
    }

    /// This key's value in `record`, as text (`null` values as the empty string).
    pub fn value_of(self, r: &UsageRecord) -> String {
        match self {
            GroupKey::BackendType => r.backend_type.clone(),
            GroupKey::Backend => r.backend.clone(),
            GroupKey::Model => r.model.clone(),
            GroupKey::RequestedModel => r.requested_model.clone(),
            GroupKey::FrontendType => r.frontend_type.clone(),
            GroupKey::HttpStatusCode => r.http_status_code.to_string(),
            GroupKey::ProxyUser => r.proxy_user.clone().unwrap_or_default(),
            GroupKey::SessionId => r.session_id.clone(),
            GroupKey::UserAgent => r.user_agent.clone().unwrap_or_default(),
            GroupKey::Streaming => r.streaming.to_string(),
        }
    }
}

/// Everything a usage route can be asked, parsed from its query string.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageQuery {
    /// Record filters.
    pub filter: UsageFilter,
    /// `group_by` for stats.
    pub group_by: Vec<GroupKey>,
    /// `limit` for recent (default 100, max 1000).
    pub limit: usize,
    /// `offset` for recent.
    pub offset: usize,
    /// `format` for export.
    pub format: ExportFormat,
}

/// Export formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExportFormat {
    /// `{version, exported_at, record_count, filters, records}`.
    #[default]
    Json,
    /// One record per line.
    Jsonl,
    /// Comma-separated with a header row.
    Csv,
}

/// Default page size of `/v1/usage/recent`.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size of `/v1/usage/recent`.
pub const MAX_LIMIT: usize = 1000;

impl UsageQuery {
    /// Parses a URL query string (`a=b&c=d`, percent-encoded). Unknown
    /// parameters and bad values are errors naming the parameter.
    pub fn parse(query: Option<&str>) -> Result<UsageQuery, QueryError> {
        let mut q = UsageQuery {
            limit: DEFAULT_LIMIT,
            ..UsageQuery::default()
        };
        let Some(query) = query else { return Ok(q) };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(raw_key).map_err(|m| QueryError::new(raw_key, m))?;
            let value = percent_decode(raw_value).map_err(|m| QueryError::new(&key, m))?;
            let f = &mut q.filter;
            let text = |v: &str| -> Result<Option<String>, QueryError> {
                if v.is_empty() {
                    Err(QueryError::new(&key, "must not be empty"))
                } else {
                    Ok(Some(v.to_owned()))
                }
            };
            match key.as_str() {
                "backend_type" => f.backend_type = text(&value)?,
                "backend" => f.backend = text(&value)?,
                "model" => f.model = text(&value)?,
                "frontend_type" => {
                    if !matches!(value.as_str(), "openai" | "anthropic" | "responses") {
                        return Err(QueryError::new(
                            &key,
                            "must be openai, anthropic or responses",
                        ));
                    }
                    f.frontend_type = text(&value)?;
                }
                "session_id" => f.session_id = text(&value)?,
                "proxy_user" => f.proxy_user = text(&value)?,
                "user_agent" => f.user_agent = text(&value)?,
                "http_status_code" => {
                    f.http_status_code = Some(
                        value
                            .parse::<u16>()
                            .ok()
                            .filter(|s| (100..=599).contains(s))
                            .ok_or_else(|| {
                                QueryError::new(&key, "must be an HTTP status code (100–599)")
                            })?,
                    );
                }
                "start_date" => {
                    f.start_us = Some(
                        parse_instant(&value, DateBound::Start)
                            .map_err(|m| QueryError::new(&key, m))?,
                    );
                }
                "end_date" => {
                    f.end_us = Some(
                        parse_instant(&value, DateBound::End)
                            .map_err(|m| QueryError::new(&key, m))?,
                    );
                }
                "hour_of_day" => {
                    f.hour_of_day = Some(
                        value
                            .parse::<u8>()
                            .ok()
                            .filter(|h| *h < 24)
                            .ok_or_else(|| {
                                QueryError::new(&key, "must be an integer 0–23 (UTC)")
                            })?,
                    );
                }
                "day_of_week" => {
                    f.day_of_week =
                        Some(value.parse::<u8>().ok().filter(|d| *d < 7).ok_or_else(|| {
                            QueryError::new(&key, "must be an integer 0–6 (0 = Monday)")
                        })?);
                }
                "group_by" => {
                    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                        let k = GroupKey::ALL
                            .iter()
                            .find(|(n, _)| *n == name)
                            .map(|(_, k)| *k)
                            .ok_or_else(|| {
                                let names: Vec<&str> =
                                    GroupKey::ALL.iter().map(|(n, _)| *n).collect();
                                QueryError::new(
                                    &key,
                                    format!("unknown key {name:?}; use {}", names.join(", ")),
                                )
                            })?;
                        if !q.group_by.contains(&k) {
                            q.group_by.push(k);
                        }
                    }
                }
                "limit" => {
                    q.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|l| (1..=MAX_LIMIT).contains(l))
                        .ok_or_else(|| {
                            QueryError::new(&key, format!("must be an integer 1–{MAX_LIMIT}"))
                        })?;
                }
                "offset" => {
                    q.offset = value
                        .parse::<usize>()
                        .map_err(|_| QueryError::new(&key, "must be a non-negative integer"))?;
                }
                "format" => {
                    q.format = match value.as_str() {
                        "json" => ExportFormat::Json,
                        "jsonl" => ExportFormat::Jsonl,
                        "csv" => ExportFormat::Csv,
                        _ => return Err(QueryError::new(&key, "must be json, jsonl or csv")),
                    };
                }
                _ => return Err(QueryError::new(&key, "unknown parameter")),
            }
        }
        if let (Some(s), Some(e)) = (q.filter.start_us, q.filter.end_us)
            && s > e
        {
            return Err(QueryError::new("start_date", "is after end_date"));
        }
        Ok(q)
    }
}

fn percent_decode(s: &str) -> Result<String, &'static str> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or("bad percent-encoding")?;
                let hex = std::str::from_utf8(hex).map_err(|_| "bad percent-encoding")?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad percent-encoding")?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "not valid UTF-8")
}

/// Latency summary over records (each field in milliseconds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyStats {
    /// Values summarized.
    pub count: u64,
    /// Smallest value.
    pub min_ms: f64,
    /// Largest value.
    pub max_ms: f64,
    /// Mean.
    pub avg_ms: f64,
    /// Median (from a sketch with 1 % relative accuracy).
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

/// The aggregates of SPEC §6.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatsBody {
    /// Records matched.
    pub request_count: u64,
    /// Records whose response reached the client completely.
    pub response_count: u64,
    /// Records with status ≥ 400 or not completed.
    pub error_count: u64,
    /// Distinct session ids.
    pub unique_sessions: u64,
    /// Turns: every request is one turn of its session.
    pub total_turns: u64,
    /// Sum of `prompt_tokens`.
    pub total_prompt_tokens: u64,
    /// Sum of `completion_tokens`.
    pub total_completion_tokens: u64,
    /// Sum of `total_tokens`.
    pub total_tokens: u64,
    /// Sum of backend-reported prompt tokens.
    pub backend_reported_prompt_tokens: u64,
    /// Sum of backend-reported completion tokens.
    pub backend_reported_completion_tokens: u64,
    /// Sum of backend-reported total tokens.
    pub backend_reported_total_tokens: u64,
    /// Sum of known costs (USD).
    pub total_cost: f64,
    /// `total_cost / request_count`.
    pub cost_per_request: f64,
    /// `total_tokens / unique_sessions`.
    pub tokens_per_session: f64,
    /// Completion tokens per second of generation time (total − TTFT).
    pub completion_tokens_per_second: f64,
    /// Total tokens per second of request time.
    pub total_tokens_per_second: f64,
    /// Sum of `tool_call_count`.
    pub total_tool_calls: u64,
    /// Calls per tool name.
    pub tool_call_counts: BTreeMap<String, u64>,
    /// Records per status code.
    pub status_code_counts: BTreeMap<String, u64>,
    /// Time to first token.
    pub ttft_stats: Option<LatencyStats>,
    /// Total duration.
    pub duration_stats: Option<LatencyStats>,
    /// Proxy overhead.
    pub proxy_processing_stats: Option<LatencyStats>,
    /// Seconds between the first and last matched record.
    pub time_window_seconds: f64,
}

/// One `group_by` group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatsGroup {
    /// The group's key values by key name.
    pub key: BTreeMap<String, String>,
    /// The group's aggregates.
    #[serde(flatten)]
    pub stats: StatsBody,
}

/// The `/v1/usage/stats` answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// Aggregates over all matched records.
    #[serde(flatten)]
    pub overall: StatsBody,
    /// The filters applied, as given.
    pub filters: UsageFilter,
    /// Present when `group_by` was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<StatsGroup>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_filters_and_names_bad_parameters() {
        let q = UsageQuery::parse(Some(
            "backend=openai&model=gpt-4o%2Bmini&http_status_code=200&group_by=backend,model&limit=5&start_date=2026-01-02T03:04:05Z",
        ))
        .unwrap();
        assert_eq!(q.filter.backend.as_deref(), Some("openai"));
        assert_eq!(q.filter.model.as_deref(), Some("gpt-4o+mini"));
        assert_eq!(q.filter.http_status_code, Some(200));
        assert_eq!(q.group_by, vec![GroupKey::Backend, GroupKey::Model]);
        assert_eq!(q.limit, 5);
        assert!(q.filter.start_us.is_some());
        for (query, param) in [
            ("hour_of_day=24", "hour_of_day"),
            ("day_of_week=x", "day_of_week"),
            ("start_date=yesterday", "start_date"),
            ("limit=1001", "limit"),
            ("group_by=colour", "group_by"),
            ("frontend_type=gemini", "frontend_type"),
            ("bogus=1", "bogus"),
            ("http_status_code=2000", "http_status_code"),
            ("start_date=2026-02-01&end_date=2026-01-01", "start_date"),
        ] {
            assert_eq!(
                UsageQuery::parse(Some(query)).unwrap_err().param,
                param,
                "{query}"
            );
        }
    }
}
