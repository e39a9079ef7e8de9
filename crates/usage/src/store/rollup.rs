//! What the SQL stores share: the rollup dimensions of a record, the plan
//! that splits a time filter into all-time, day, hour and raw-row sources,
//! and the `WHERE` clause of a [`UsageFilter`] (placeholders `?`, values in
//! order; each store renders them for its database).

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregate;
use crate::error::UsageError;
use crate::query::{GroupKey, UsageFilter};
use crate::record::{CompletionOutcome, CostSource, TokenSource, UsageRecord};

/// The record columns, in the order both SQL stores read and write them.
pub(crate) const RECORD_COLUMNS: &str = "id, timestamp, timestamp_us, session_id, turn_number, \
    backend_type, backend, model, requested_model, frontend_type, streaming, \
    verbatim_prompt_tokens, mutated_prompt_tokens, verbatim_completion_tokens, \
    mutated_completion_tokens, prompt_tokens, completion_tokens, total_tokens, \
    backend_reported_usage, token_source, cost_usd, cost_source, http_status_code, \
    completion_outcome, incomplete_reason, tool_call_count, tool_names, ttft_ms, \
    total_duration_ms, proxy_overhead_ms, completion_tokens_per_second, user_agent, proxy_user, \
    call_purpose, replaced";

fn unknown(what: &str, v: &str) -> UsageError {
    UsageError::Encoding(format!("stored {what} {v:?} is unknown"))
}

/// A stored `token_source` column.
pub(crate) fn parse_token_source(v: &str) -> Result<TokenSource, UsageError> {
    match v {
        "backend" => Ok(TokenSource::Backend),
        "proxy" => Ok(TokenSource::Proxy),
        "estimate" => Ok(TokenSource::Estimate),
        other => Err(unknown("token_source", other)),
    }
}

/// A stored `cost_source` column.
pub(crate) fn parse_cost_source(v: &str) -> Result<CostSource, UsageError> {
    match v {
        "backend" => Ok(CostSource::Backend),
        "pricing_table" => Ok(CostSource::PricingTable),
        "unknown" => Ok(CostSource::Unknown),
        other => Err(unknown("cost_source", other)),
    }
}

/// A stored `completion_outcome` column.
pub(crate) fn parse_outcome(v: &str) -> Result<CompletionOutcome, UsageError> {
    match v {
        "completed" => Ok(CompletionOutcome::Completed),
        "failed" => Ok(CompletionOutcome::Failed),
        "incomplete" => Ok(CompletionOutcome::Incomplete),
        other => Err(unknown("completion_outcome", other)),
    }
}

/// The `tool_names` column: a JSON array (`[]` when empty).
pub(crate) fn encode_tool_names(names: &[String]) -> Result<String, UsageError> {
    if names.is_empty() {
        return Ok("[]".to_owned());
    }
    serde_json::to_string(names).map_err(|e| UsageError::Encoding(e.to_string()))
}

/// Decodes [`encode_tool_names`].
pub(crate) fn decode_tool_names(v: &str) -> Result<Vec<String>, UsageError> {
    if v == "[]" {
        return Ok(Vec::new());
    }
    serde_json::from_str(v).map_err(|e| UsageError::Encoding(e.to_string()))
}

pub(crate) const HOUR_US: i64 = 3_600_000_000;
pub(crate) const DAY_US: i64 = 24 * HOUR_US;
/// Bounds used to plan open-ended ranges without overflow (±36 000 years).
const PLAN_MIN_US: i64 = -(1 << 60);
const PLAN_MAX_US: i64 = 1 << 60;

/// A value bound to a `?` of [`filter_conditions`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SqlValue {
    /// A text column.
    Text(String),
    /// An integer column or expression.
    Int(i64),
}

/// The conditions of `filter` (exactly `UsageFilter::matches`), optionally
/// restricted to `timestamp_us` in `range` (inclusive): one `?` per value.
pub(crate) fn filter_conditions(
    filter: &UsageFilter,
    range: Option<(i64, i64)>,
) -> (Vec<String>, Vec<SqlValue>) {
    let mut conds: Vec<String> = Vec::new();
    let mut vals: Vec<SqlValue> = Vec::new();
    let mut text = |col: &str, v: &Option<String>, conds: &mut Vec<String>| {
        if let Some(v) = v {
            conds.push(format!("{col} = ?"));
            vals.push(SqlValue::Text(v.clone()));
        }
    };
    text("backend_type", &filter.backend_type, &mut conds);
    text("backend", &filter.backend, &mut conds);
    text("model", &filter.model, &mut conds);
    text("frontend_type", &filter.frontend_type, &mut conds);
    text("session_id", &filter.session_id, &mut conds);
    text("proxy_user", &filter.proxy_user, &mut conds);
    text("user_agent", &filter.user_agent, &mut conds);
    let mut int = |expr: String, v: i64| {
        conds.push(expr);
        vals.push(SqlValue::Int(v));
    };
    if let Some(s) = filter.http_status_code {
        int("http_status_code = ?".into(), i64::from(s));
    }
    let (lo, hi) = match range {
        Some((lo, hi)) => (
            Some(filter.start_us.map_or(lo, |s| s.max(lo))),
            Some(filter.end_us.map_or(hi, |e| e.min(hi))),
        ),
        None => (filter.start_us, filter.end_us),
    };
    if let Some(lo) = lo {
        int("timestamp_us >= ?".into(), lo);
    }
    if let Some(hi) = hi {
        int("timestamp_us <= ?".into(), hi);
    }
    // Euclidean remainders, as in `crate::time`.
    let rem_day = format!("(((timestamp_us % {DAY_US}) + {DAY_US}) % {DAY_US})");
    if let Some(h) = filter.hour_of_day {
        int(format!("({rem_day} / {HOUR_US}) = ?"), i64::from(h));
    }
    if let Some(d) = filter.day_of_week {
        int(
            format!("(((((timestamp_us - {rem_day}) / {DAY_US}) + 3) % 7 + 7) % 7) = ?"),
            i64::from(d),
        );
    }
    (conds, vals)
}

/// The rollup dimensions of a record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct RollupKey {
    pub(crate) backend_type: String,
    pub(crate) backend: String,
    pub(crate) model: String,
    pub(crate) requested_model: String,
    pub(crate) frontend_type: String,
    pub(crate) http_status_code: u16,
    pub(crate) proxy_user: Option<String>,
    pub(crate) streaming: bool,
}

impl RollupKey {
    pub(crate) fn of(r: &UsageRecord) -> RollupKey {
        RollupKey {
            backend_type: r.backend_type.clone(),
            backend: r.backend.clone(),
            model: r.model.clone(),
            requested_model: r.requested_model.clone(),
            frontend_type: r.frontend_type.clone(),
            http_status_code: r.http_status_code,
            proxy_user: r.proxy_user.clone(),
            streaming: r.streaming,
        }
    }

    /// Whether records of this key pass the non-time filters (the filter
    /// must not involve `session_id` or `user_agent`).
    pub(crate) fn matches(&self, f: &UsageFilter) -> bool {
        fn eq(want: &Option<String>, have: &str) -> bool {
            want.as_deref().is_none_or(|w| w == have)
        }
        eq(&f.backend_type, &self.backend_type)
            && eq(&f.backend, &self.backend)
            && eq(&f.model, &self.model)
            && eq(&f.frontend_type, &self.frontend_type)
            && f.http_status_code
                .is_none_or(|s| s == self.http_status_code)
            && f.proxy_user
                .as_deref()
                .is_none_or(|w| self.proxy_user.as_deref() == Some(w))
    }

    /// `GroupKey::value_of` for this key's records; `None` for the
    /// non-rollup dimensions.
    pub(crate) fn value(&self, k: GroupKey) -> Option<String> {
        Some(match k {
            GroupKey::BackendType => self.backend_type.clone(),
            GroupKey::Backend => self.backend.clone(),
            GroupKey::Model => self.model.clone(),
            GroupKey::RequestedModel => self.requested_model.clone(),
            GroupKey::FrontendType => self.frontend_type.clone(),
            GroupKey::HttpStatusCode => self.http_status_code.to_string(),
            GroupKey::ProxyUser => self.proxy_user.clone().unwrap_or_default(),
            GroupKey::Streaming => self.streaming.to_string(),
            GroupKey::SessionId | GroupKey::UserAgent => return None,
        })
    }
}

/// [`RollupKey`] borrowed from a record (grouping a batch without
/// allocating per record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RollupKeyRef<'a> {
    pub(crate) backend_type: &'a str,
    pub(crate) backend: &'a str,
    pub(crate) model: &'a str,
    pub(crate) requested_model: &'a str,
    pub(crate) frontend_type: &'a str,
    pub(crate) http_status_code: u16,
    pub(crate) proxy_user: Option<&'a str>,
    pub(crate) streaming: bool,
}

impl<'a> RollupKeyRef<'a> {
    pub(crate) fn of(r: &'a UsageRecord) -> RollupKeyRef<'a> {
        RollupKeyRef {
            backend_type: &r.backend_type,
            backend: &r.backend,
            model: &r.model,
            requested_model: &r.requested_model,
            frontend_type: &r.frontend_type,
            http_status_code: r.http_status_code,
            proxy_user: r.proxy_user.as_deref(),
            streaming: r.streaming,
        }
    }

    pub(crate) fn to_key(self) -> RollupKey {
        RollupKey {
            backend_type: self.backend_type.to_owned(),
            backend: self.backend.to_owned(),
            model: self.model.to_owned(),
            requested_model: self.requested_model.to_owned(),
            frontend_type: self.frontend_type.to_owned(),
            http_status_code: self.http_status_code,
            proxy_user: self.proxy_user.map(str::to_owned),
            streaming: self.streaming,
        }
    }
}

/// Records of a batch grouped by (hour, [`RollupKeyRef`]), each group's
/// aggregate. Consecutive records usually share their group (one backend,
/// one model, one hour): a run adds to the last group, comparing keys
/// instead of hashing them (SipHash over the key's strings was ~10 % of a
/// SQLite insert's instructions).
#[derive(Debug, Default)]
pub(crate) struct HourGroups<'a> {
    groups: HashMap<(i64, RollupKeyRef<'a>), Aggregate>,
    run: Option<((i64, RollupKeyRef<'a>), Aggregate)>,
}

impl<'a> HourGroups<'a> {
    /// Adds `r` to its group.
    pub(crate) fn add(&mut self, r: &'a UsageRecord) {
        let key = (crate::time::hour_floor(r.timestamp_us), RollupKeyRef::of(r));
        match &mut self.run {
            Some((k, agg)) if *k == key => agg.add(r),
            _ => {
                self.end_run();
                let mut agg = Aggregate::default();
                agg.add(r);
                self.run = Some((key, agg));
            }
        }
    }

    fn end_run(&mut self) {
        if let Some((key, agg)) = self.run.take() {
            match self.groups.entry(key) {
                Entry::Occupied(mut e) => e.get_mut().merge(&agg),
                Entry::Vacant(e) => {
                    e.insert(agg);
                }
            }
        }
    }

    /// The groups.
    pub(crate) fn into_groups(mut self) -> HashMap<(i64, RollupKeyRef<'a>), Aggregate> {
        self.end_run();
        self.groups
    }
}

/// True when rollups can answer: no `session_id` / `user_agent` in the
/// filter or the grouping.
pub(crate) fn rollups_can_answer(f: &UsageFilter, group_by: &[GroupKey]) -> bool {
    f.session_id.is_none()
        && f.user_agent.is_none()
        && !group_by
            .iter()
            .any(|k| matches!(k, GroupKey::SessionId | GroupKey::UserAgent))
}

/// Whether the hour starting at `hour_us` passes the hour-of-day and
/// day-of-week filters.
pub(crate) fn hour_passes(f: &UsageFilter, hour_us: i64) -> bool {
    f.hour_of_day
        .is_none_or(|h| crate::time::hour_of_day(hour_us) == h)
        && f.day_of_week
            .is_none_or(|d| crate::time::day_of_week(hour_us) == d)
}

/// What a query reads, by source.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan {
    /// All-time per-key aggregates.
    pub(crate) totals: bool,
    /// Per-day rollups for days `[from, to)`.
    pub(crate) days: Option<(i64, i64)>,
    /// Hourly rollup rows for hours in `[from, to)`.
    pub(crate) hours: Vec<(i64, i64)>,
    /// Raw rows with `timestamp_us` in `[from, to]` (inclusive).
    pub(crate) raw: Vec<(i64, i64)>,
}

pub(crate) fn ceil_to(v: i64, unit: i64) -> i64 {
    let r = v.rem_euclid(unit);
    if r == 0 { v } else { v - r + unit }
}

pub(crate) fn floor_to(v: i64, unit: i64) -> i64 {
    v - v.rem_euclid(unit)
}

/// Splits the time filter of `f` into sources (rollup-eligible filters only).
pub(crate) fn plan(f: &UsageFilter) -> Plan {
    if f.start_us.is_none()
        && f.end_us.is_none()
        && f.hour_of_day.is_none()
        && f.day_of_week.is_none()
    {
        return Plan {
            totals: true,
            ..Plan::default()
        };
    }
    let lo = f.start_us.unwrap_or(i64::MIN);
    let hi = f.end_us.unwrap_or(i64::MAX);
    let mut p = Plan::default();
    if lo > hi {
        return p;
    }
    // Whole hours [a, b).
    let a = ceil_to(lo.max(PLAN_MIN_US), HOUR_US);
    let b = floor_to(hi.min(PLAN_MAX_US).saturating_add(1), HOUR_US);
    if a >= b {
        p.raw.push((lo, hi));
        return p;
    }
    if lo < a {
        p.raw.push((lo, a - 1));
    }
    if b <= hi {
        p.raw.push((b, hi));
    }
    if f.hour_of_day.is_some() {
        p.hours.push((a, b));
        return p;
    }
    let (da, db) = (ceil_to(a, DAY_US), floor_to(b, DAY_US));
    if da < db {
        p.days = Some((da, db));
        if a < da {
            p.hours.push((a, da));
        }
        if db < b {
            p.hours.push((db, b));
        }
    } else {
        p.hours.push((a, b));
    }
    p
}
