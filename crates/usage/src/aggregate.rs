//! Mergeable partial aggregates of usage records, and the SPEC §6 stats
//! they finish into.
//!
//! Every part of an [`Aggregate`] merges exactly: counts and sums are
//! integers (costs in 10⁻¹² USD, durations in nanoseconds), sessions are a
//! [`DistinctCounter`], latencies are [`LatencySketch`]es. So an aggregate
//! built from hourly rollups is `==` to one built from the raw records, in
//! any order.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::error::UsageError;
use crate::query::{GroupKey, LatencyStats, Stats, StatsBody, StatsGroup, UsageFilter};
use crate::record::{CompletionOutcome, UsageRecord};
use crate::sketch::{
    DistinctCounter, LatencySketch, Reader, ms_to_ns, put_i64, put_i128, put_str, put_u64,
};
use crate::store::AggregateSet;

/// Fixed-point scale of summed costs: 10⁻¹² USD.
const COST_SCALE: f64 = 1e12;

/// Encoding version of [`Aggregate::to_bytes`].
const AGGREGATE_FORMAT: u8 = 1;

/// A partial aggregate: add records, merge aggregates, finish into stats.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Aggregate {
    /// Records added.
    pub request_count: u64,
    response_count: u64,
    error_count: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    backend_prompt_tokens: u64,
    backend_completion_tokens: u64,
    backend_total_tokens: u64,
    /// Sum of known costs in 10⁻¹² USD.
    cost_units: i128,
    tool_calls: u64,
    tool_call_counts: BTreeMap<String, u64>,
    status_code_counts: BTreeMap<u16, u64>,
    sessions: DistinctCounter,
    ttft: LatencySketch,
    duration: LatencySketch,
    overhead: LatencySketch,
    /// Completion tokens of records with a TTFT (the generation-rate numerator).
    generation_tokens: u64,
    /// Σ (total duration − TTFT) in nanoseconds over those records.
    generation_ns: i128,
    /// Earliest and latest timestamps added.
    min_timestamp_us: Option<i64>,
    max_timestamp_us: Option<i64>,
}

impl Aggregate {
    /// Adds one record.
    pub fn add(&mut self, r: &UsageRecord) {
        self.request_count += 1;
        let completed = r.completion_outcome == CompletionOutcome::Completed;
        if completed {
            self.response_count += 1;
        }
        if r.http_status_code >= 400 || !completed {
            self.error_count += 1;
        }
        self.prompt_tokens += r.prompt_tokens;
        self.completion_tokens += r.completion_tokens;
        self.total_tokens += r.total_tokens;
        if let Some(b) = &r.backend_reported_usage {
            self.backend_prompt_tokens += b.prompt_tokens.unwrap_or(0);
            self.backend_completion_tokens += b.completion_tokens.unwrap_or(0);
            self.backend_total_tokens += b.total_tokens.unwrap_or(0);
        }
        if let Some(c) = r.cost_usd.filter(|c| c.is_finite()) {
            self.cost_units = self
                .cost_units
                .saturating_add((c * COST_SCALE).round() as i128);
        }
        self.tool_calls += u64::from(r.tool_call_count);
        for name in &r.tool_names {
            match self.tool_call_counts.get_mut(name) {
                Some(n) => *n += 1,
                None => {
                    self.tool_call_counts.insert(name.clone(), 1);
                }
            }
        }
        *self
            .status_code_counts
            .entry(r.http_status_code)
            .or_insert(0) += 1;
        self.sessions.insert(&r.session_id);
        if let Some(t) = r.ttft_ms.filter(|t| !t.is_nan()) {
            self.ttft.add(t);
            self.generation_tokens += r.completion_tokens;
            self.generation_ns = self.generation_ns.saturating_add(
                ms_to_ns(r.total_duration_ms)
                    .saturating_sub(ms_to_ns(t))
                    .max(0),
            );
        }
        self.duration.add(r.total_duration_ms);
        self.overhead.add(r.proxy_overhead_ms);
        self.min_timestamp_us = Some(
            self.min_timestamp_us
                .map_or(r.timestamp_us, |m| m.min(r.timestamp_us)),
        );
        self.max_timestamp_us = Some(
            self.max_timestamp_us
                .map_or(r.timestamp_us, |m| m.max(r.timestamp_us)),
        );
    }

    /// Folds `other` into `self`.
    pub fn merge(&mut self, other: &Aggregate) {
        if other.request_count == 0 {
            return;
        }
        self.request_count += other.request_count;
        self.response_count += other.response_count;
        self.error_count += other.error_count;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
        self.backend_prompt_tokens += other.backend_prompt_tokens;
        self.backend_completion_tokens += other.backend_completion_tokens;
        self.backend_total_tokens += other.backend_total_tokens;
        self.cost_units = self.cost_units.saturating_add(other.cost_units);
        self.tool_calls += other.tool_calls;
        for (name, n) in &other.tool_call_counts {
            match self.tool_call_counts.get_mut(name) {
                Some(m) => *m += n,
                None => {
                    self.tool_call_counts.insert(name.clone(), *n);
                }
            }
        }
        for (code, n) in &other.status_code_counts {
            *self.status_code_counts.entry(*code).or_insert(0) += n;
        }
        self.sessions.merge(&other.sessions);
        self.ttft.merge(&other.ttft);
        self.duration.merge(&other.duration);
        self.overhead.merge(&other.overhead);
        self.generation_tokens += other.generation_tokens;
        self.generation_ns = self.generation_ns.saturating_add(other.generation_ns);
        self.min_timestamp_us = match (self.min_timestamp_us, other.min_timestamp_us) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max_timestamp_us = match (self.max_timestamp_us, other.max_timestamp_us) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// Distinct sessions (exact up to [`DistinctCounter::EXACT_LIMIT`]).
    pub fn unique_sessions(&self) -> u64 {
        self.sessions.count()
    }

    /// Earliest and latest record timestamps (µs), when any.
    pub fn time_range_us(&self) -> Option<(i64, i64)> {
        self.min_timestamp_us.zip(self.max_timestamp_us)
    }

    /// The SPEC §6 stats of everything added.
    pub fn finish(&self) -> StatsBody {
        let total_cost = self.cost_units as f64 / COST_SCALE;
        let unique_sessions = self.sessions.count();
        let ratio = |num: f64, den: f64| if den > 0.0 { num / den } else { 0.0 };
        StatsBody {
            request_count: self.request_count,
            response_count: self.response_count,
            error_count: self.error_count,
            unique_sessions,
            total_turns: self.request_count,
            total_prompt_tokens: self.prompt_tokens,
            total_completion_tokens: self.completion_tokens,
            total_tokens: self.total_tokens,
            backend_reported_prompt_tokens: self.backend_prompt_tokens,
            backend_reported_completion_tokens: self.backend_completion_tokens,
            backend_reported_total_tokens: self.backend_total_tokens,
            total_cost,
            cost_per_request: ratio(total_cost, self.request_count as f64),
            tokens_per_session: ratio(self.total_tokens as f64, unique_sessions as f64),
            completion_tokens_per_second: ratio(
                self.generation_tokens as f64,
                self.generation_ns as f64 / 1e9,
            ),
            total_tokens_per_second: ratio(
                self.total_tokens as f64,
                self.duration.sum_ns() as f64 / 1e9,
            ),
            total_tool_calls: self.tool_calls,
            tool_call_counts: self.tool_call_counts.clone(),
            status_code_counts: self
                .status_code_counts
                .iter()
                .map(|(code, n)| (code.to_string(), *n))
                .collect(),
            ttft_stats: latency_stats(&self.ttft),
            duration_stats: latency_stats(&self.duration),
            proxy_processing_stats: latency_stats(&self.overhead),
            time_window_seconds: self
                .time_range_us()
                .map_or(0.0, |(lo, hi)| (hi - lo) as f64 / 1e6),
        }
    }

    /// The binary encoding (for rollup rows).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(128);
        b.push(AGGREGATE_FORMAT);
        for v in [
            self.request_count,
            self.response_count,
            self.error_count,
            self.prompt_tokens,
            self.completion_tokens,
            self.total_tokens,
            self.backend_prompt_tokens,
            self.backend_completion_tokens,
            self.backend_total_tokens,
            self.tool_calls,
            self.generation_tokens,
        ] {
            put_u64(&mut b, v);
        }
        put_i128(&mut b, self.cost_units);
        put_i128(&mut b, self.generation_ns);
        match self.time_range_us() {
            Some((lo, hi)) => {
                b.push(1);
                put_i64(&mut b, lo);
                put_i64(&mut b, hi);
            }
            None => b.push(0),
        }
        put_u64(&mut b, self.tool_call_counts.len() as u64);
        for (name, n) in &self.tool_call_counts {
            put_str(&mut b, name);
            put_u64(&mut b, *n);
        }
        put_u64(&mut b, self.status_code_counts.len() as u64);
        for (code, n) in &self.status_code_counts {
            put_u64(&mut b, u64::from(*code));
            put_u64(&mut b, *n);
        }
        self.sessions.encode_into(&mut b);
        self.ttft.encode_into(&mut b);
        self.duration.encode_into(&mut b);
        self.overhead.encode_into(&mut b);
        b
    }

    /// Decodes what [`Aggregate::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<Aggregate, UsageError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("aggregate version")?;
        if version != AGGREGATE_FORMAT {
            return Err(UsageError::Encoding(format!(
                "aggregate: unknown format version {version}"
            )));
        }
        let mut a = Aggregate {
            request_count: r.u64("request count")?,
            response_count: r.u64("response count")?,
            error_count: r.u64("error count")?,
            prompt_tokens: r.u64("prompt tokens")?,
            completion_tokens: r.u64("completion tokens")?,
            total_tokens: r.u64("total tokens")?,
            backend_prompt_tokens: r.u64("backend prompt tokens")?,
            backend_completion_tokens: r.u64("backend completion tokens")?,
            backend_total_tokens: r.u64("backend total tokens")?,
            tool_calls: r.u64("tool calls")?,
            generation_tokens: r.u64("generation tokens")?,
            cost_units: r.i128("cost")?,
            generation_ns: r.i128("generation time")?,
            ..Aggregate::default()
        };
        if r.u8("time range flag")? == 1 {
            a.min_timestamp_us = Some(r.i64("min timestamp")?);
            a.max_timestamp_us = Some(r.i64("max timestamp")?);
        }
        let n = r.len(bytes.len(), "tool name count")?;
        for _ in 0..n {
            let name = r.str("tool name")?.to_owned();
            a.tool_call_counts.insert(name, r.u64("tool calls")?);
        }
        let n = r.len(bytes.len(), "status code count")?;
        for _ in 0..n {
            let code = u16::try_from(r.u64("status code")?)
                .map_err(|_| UsageError::Encoding("aggregate: bad status code".into()))?;
            a.status_code_counts.insert(code, r.u64("status count")?);
        }
        a.sessions = DistinctCounter::decode_from(&mut r)?;
        a.ttft = LatencySketch::decode_from(&mut r)?;
        a.duration = LatencySketch::decode_from(&mut r)?;
        a.overhead = LatencySketch::decode_from(&mut r)?;
        r.finish("aggregate")?;
        Ok(a)
    }
}

fn latency_stats(s: &LatencySketch) -> Option<LatencyStats> {
    Some(LatencyStats {
        count: s.count(),
        min_ms: s.min()?,
        max_ms: s.max()?,
        avg_ms: s.mean()?,
        p50_ms: s.quantile(0.50)?,
        p95_ms: s.quantile(0.95)?,
        p99_ms: s.quantile(0.99)?,
    })
}

/// The `/v1/usage/stats` answer of an [`AggregateSet`]: groups sorted by
/// `request_count` descending, then by key; each group's `key` maps
/// [`GroupKey::name`] to its value.
pub fn finish_stats(set: &AggregateSet, filter: &UsageFilter, group_by: &[GroupKey]) -> Stats {
    let groups = (!group_by.is_empty()).then(|| {
        let mut groups: Vec<(&Vec<String>, &Aggregate)> = set.groups.iter().collect();
        groups.sort_by_key(|(key, agg)| (Reverse(agg.request_count), *key));
        groups
            .into_iter()
            .map(|(values, agg)| StatsGroup {
                key: group_by
                    .iter()
                    .zip(values)
                    .map(|(k, v)| (k.name().to_owned(), v.clone()))
                    .collect(),
                stats: agg.finish(),
            })
            .collect()
    });
    Stats {
        overall: set.overall.finish(),
        filters: filter.clone(),
        groups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{BackendUsage, CostSource, TokenSource};

    fn record(i: u32) -> UsageRecord {
        UsageRecord {
            id: format!("r{i}"),
            timestamp: String::new(),
            timestamp_us: 1_000_000 * i64::from(i),
            session_id: format!("s{}", i % 3),
            turn_number: 1,
            backend_type: "openai".into(),
            backend: if i.is_multiple_of(2) { "a" } else { "b" }.into(),
            model: "m".into(),
            requested_model: "m".into(),
            frontend_type: "openai".into(),
            streaming: i.is_multiple_of(2),
            verbatim_prompt_tokens: Some(10),
            mutated_prompt_tokens: Some(10),
            verbatim_completion_tokens: Some(5),
            mutated_completion_tokens: Some(5),
            prompt_tokens: 10,
            completion_tokens: 5,
            total_tokens: 15,
            backend_reported_usage: i.is_multiple_of(2).then(|| BackendUsage {
                prompt_tokens: Some(11),
                completion_tokens: Some(6),
                total_tokens: Some(17),
                ..BackendUsage::default()
            }),
            token_source: TokenSource::Backend,
            cost_usd: (i != 3).then_some(0.001),
            cost_source: CostSource::PricingTable,
            http_status_code: if i == 4 { 500 } else { 200 },
            completion_outcome: if i == 4 {
                CompletionOutcome::Failed
            } else {
                CompletionOutcome::Completed
            },
            incomplete_reason: None,
            tool_call_count: 1,
            tool_names: vec!["search".into()],
            ttft_ms: (i != 4).then_some(100.0),
            total_duration_ms: 1100.0,
            proxy_overhead_ms: 2.0,
            completion_tokens_per_second: None,
            user_agent: None,
            proxy_user: None,
            call_purpose: None,
            replaced: false,
        }
    }

    #[test]
    fn finish_fills_every_field() {
        let mut a = Aggregate::default();
        for i in 0..6 {
            a.add(&record(i));
        }
        let s = a.finish();
        assert_eq!(s.request_count, 6);
        assert_eq!(s.response_count, 5);
        assert_eq!(s.error_count, 1);
        assert_eq!(s.unique_sessions, 3);
        assert_eq!(s.total_turns, 6);
        assert_eq!(s.total_tokens, 90);
        assert_eq!(s.backend_reported_total_tokens, 3 * 17);
        assert!((s.total_cost - 0.005).abs() < 1e-12);
        assert!((s.cost_per_request - 0.005 / 6.0).abs() < 1e-12);
        assert!((s.tokens_per_session - 30.0).abs() < 1e-12);
        // 5 records with TTFT: 25 completion tokens over 5 × 1 s.
        assert!((s.completion_tokens_per_second - 5.0).abs() < 1e-9);
        assert!((s.total_tokens_per_second - 90.0 / 6.6).abs() < 1e-9);
        assert_eq!(s.total_tool_calls, 6);
        assert_eq!(s.tool_call_counts["search"], 6);
        assert_eq!(s.status_code_counts["200"], 5);
        assert_eq!(s.status_code_counts["500"], 1);
        assert_eq!(s.ttft_stats.as_ref().unwrap().count, 5);
        assert_eq!(s.duration_stats.as_ref().unwrap().p50_ms, 1100.0);
        assert_eq!(s.proxy_processing_stats.as_ref().unwrap().avg_ms, 2.0);
        assert_eq!(s.time_window_seconds, 5.0);

        let empty = Aggregate::default().finish();
        assert_eq!(empty.cost_per_request, 0.0);
        assert_eq!(empty.tokens_per_session, 0.0);
        assert!(empty.ttft_stats.is_none());
    }

    #[test]
    fn percentiles_match_a_known_distribution() {
        // Durations 1..=10_000 ms, added in a scrambled order, split across
        // two aggregates that are merged (as rollups are).
        let mut a = Aggregate::default();
        let mut b = Aggregate::default();
        for i in 0..10_000u64 {
            let v = (i * 7_919) % 10_000 + 1;
            let mut r = record(0);
            r.total_duration_ms = v as f64;
            r.ttft_ms = Some(v as f64 / 10.0);
            if i % 2 == 0 { a.add(&r) } else { b.add(&r) }
        }
        a.merge(&b);
        let s = a.finish();
        let d = s.duration_stats.unwrap();
        assert_eq!(d.count, 10_000);
        assert_eq!((d.min_ms, d.max_ms), (1.0, 10_000.0));
        assert!((d.avg_ms - 5_000.5).abs() < 1e-6);
        for (got, exact) in [
            (d.p50_ms, 5_000.0),
            (d.p95_ms, 9_500.0),
            (d.p99_ms, 9_900.0),
        ] {
            assert!((got - exact).abs() / exact <= 0.01, "{got} vs {exact}");
        }
        let t = s.ttft_stats.unwrap();
        assert!((t.p99_ms - 990.0).abs() / 990.0 <= 0.01, "{}", t.p99_ms);
    }

    #[test]
    fn merge_equals_adding_everything_and_round_trips() {
        let mut all = Aggregate::default();
        let mut a = Aggregate::default();
        let mut b = Aggregate::default();
        for i in 0..20 {
            all.add(&record(i));
            let part = if i % 3 == 0 { &mut a } else { &mut b };
            part.add(&record(i));
        }
        let mut merged = b.clone();
        merged.merge(&a);
        assert_eq!(merged, all);
        assert_eq!(Aggregate::from_bytes(&all.to_bytes()).unwrap(), all);
        assert_eq!(
            Aggregate::from_bytes(&Aggregate::default().to_bytes()).unwrap(),
            Aggregate::default()
        );
        let bytes = all.to_bytes();
        for cut in 0..bytes.len() {
            assert!(Aggregate::from_bytes(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn groups_sort_by_request_count_then_key() {
        let mut set = AggregateSet::default();
        let group_by = [GroupKey::Backend, GroupKey::Streaming];
        for i in 0..7 {
            let mut r = record(i);
            r.backend = if i < 2 { "z".into() } else { "a".into() };
            set.add(&r, &group_by);
        }
        let stats = finish_stats(&set, &UsageFilter::default(), &group_by);
        let groups = stats.groups.unwrap();
        let keys: Vec<(String, u64)> = groups
            .iter()
            .map(|g| {
                (
                    format!("{}/{}", g.key["backend"], g.key["streaming"]),
                    g.stats.request_count,
                )
            })
            .collect();
        assert_eq!(
            keys,
            vec![
                ("a/true".to_owned(), 3),
                ("a/false".to_owned(), 2),
                ("z/false".to_owned(), 1),
                ("z/true".to_owned(), 1),
            ]
        );
        assert!(
            finish_stats(&set, &UsageFilter::default(), &[])
                .groups
                .is_none()
        );
    }
}
