//! Test support: the conformance suite every [`UsageStore`] must pass, and
//! a generator of realistic synthetic records (also used by the
//! `stats_bench` example).
//!
//! The suite compares each store's answers with a brute-force computation
//! over the records it was given: insert and dedupe, `recent` ordering,
//! paging and totals, every filter, `group_by`, stats, export order and
//! completeness, prune, and (for file stores) persistence across reopen.
//! It returns a [`ConformanceFailure`] instead of panicking, so it can live
//! in the library and be reused by stores in other crates (Postgres).

use std::collections::HashSet;

use crate::aggregate::Aggregate;
use crate::error::UsageError;
use crate::query::{GroupKey, UsageFilter};
use crate::record::{BackendUsage, CompletionOutcome, CostSource, TokenSource, UsageRecord};
use crate::store::{AggregateSet, UsageStore};
use crate::time::{day_of_week, format_rfc3339, hour_floor, hour_of_day};

/// A conformance check that did not hold.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("usage store conformance: {0}")]
pub struct ConformanceFailure(pub String);

impl From<UsageError> for ConformanceFailure {
    fn from(e: UsageError) -> Self {
        ConformanceFailure(format!("store error: {e}"))
    }
}

type Check = Result<(), ConformanceFailure>;

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Check {
    if ok {
        Ok(())
    } else {
        Err(ConformanceFailure(what()))
    }
}

fn ensure_eq<T: PartialEq + std::fmt::Debug>(got: T, want: T, what: &str) -> Check {
    ensure(got == want, || {
        let (g, w) = (format!("{got:?}"), format!("{want:?}"));
        let cut = |s: &str| s.chars().take(1500).collect::<String>();
        format!("{what}:\n  got  {}\n  want {}", cut(&g), cut(&w))
    })
}

/// A small deterministic PRNG (SplitMix64).
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Log-normal around `median` with log-space spread `sigma`.
    pub fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        median * (sigma * z).exp()
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// `count` realistic records spread over `[start_us, start_us + span_us)`,
/// oldest first: three backends with two models each, both front-ends plus
/// Responses, ~4 % 429s, ~3 % 500s, ~2 % client disconnects, tool calls,
/// sessions of ~25 turns, an unpriced model, and some records sharing a
/// timestamp (ordering ties are broken by id).
pub fn synthetic_records(count: usize, start_us: i64, span_us: i64, seed: u64) -> Vec<UsageRecord> {
    const BACKENDS: &[(&str, &str, &[&str])] = &[
        ("openai", "openai", &["gpt-4o", "gpt-4o-mini"]),
        (
            "anthropic",
            "anthropic",
            &["claude-sonnet-4", "claude-haiku-4"],
        ),
        ("openai", "openrouter", &["deepseek-chat", "qwen3-coder"]),
    ];
    const FRONTENDS: &[&str] = &["openai", "openai", "anthropic", "responses"];
    const TOOLS: &[&str] = &["read_file", "bash", "search", "edit_file"];
    const AGENTS: &[Option<&str>] = &[
        Some("claude-cli/1.0.31"),
        Some("OpenAI/Python 1.54.0"),
        Some("codex/0.9"),
        None,
    ];
    const USERS: &[Option<&str>] = &[None, Some("alice"), Some("bob")];
    let mut rng = SplitMix::new(seed);
    let sessions = (count / 25).max(1) as u64;
    let step = span_us as f64 / count.max(1) as f64;
    let mut out = Vec::with_capacity(count);
    let mut prev_ts = start_us;
    for i in 0..count {
        let mut ts = start_us + (i as f64 * step + rng.unit() * step * 0.9) as i64;
        if i % 11 == 5 {
            ts = prev_ts; // a tie
        }
        ts = ts.max(prev_ts);
        prev_ts = ts;
        let session = rng.below(sessions);
        // A session sticks to one backend and front-end.
        let (backend_type, backend, models) = BACKENDS[(session % 3) as usize];
        let model = *rng.pick(models);
        let frontend = FRONTENDS[(session / 3 % 4) as usize];
        let roll = rng.below(100);
        let (status, outcome, reason) = match roll {
            0..=3 => (429, CompletionOutcome::Failed, None),
            4..=6 => (500, CompletionOutcome::Failed, None),
            7..=8 => (
                200,
                CompletionOutcome::Incomplete,
                Some("client_disconnect".to_owned()),
            ),
            _ => (200, CompletionOutcome::Completed, None),
        };
        let failed = outcome == CompletionOutcome::Failed;
        let prompt = if failed {
            0
        } else {
            rng.lognormal(3000.0, 1.0) as u64 + 10
        };
        let completion = if failed {
            0
        } else {
            rng.lognormal(300.0, 0.8) as u64 + 1
        };
        let reported = !failed && rng.below(10) < 8;
        let priced = model != "qwen3-coder";
        let cost = (priced && !failed).then(|| {
            (prompt as f64 * 2.5 + completion as f64 * 10.0) / 1e6 * (1.0 + rng.unit() * 0.01)
        });
        let tool_calls = if failed { 0 } else { rng.below(4) as u32 };
        let tool_names: Vec<String> = (0..tool_calls)
            .map(|_| (*rng.pick(TOOLS)).to_owned())
            .collect();
        let ttft = (!failed).then(|| rng.lognormal(350.0, 0.6));
        let duration = match ttft {
            Some(t) => t + completion as f64 / rng.lognormal(60.0, 0.3) * 1000.0,
            None => rng.lognormal(40.0, 1.0),
        };
        let overhead = if rng.below(50) == 0 {
            0.0
        } else {
            rng.lognormal(0.8, 0.7)
        };
        let streaming = rng.below(3) > 0;
        let replaced = rng.below(20) == 0;
        out.push(UsageRecord {
            id: format!("req-{seed:x}-{i:09}"),
            timestamp: format_rfc3339(ts),
            timestamp_us: ts,
            session_id: format!("sess-{seed:x}-{session}"),
            turn_number: (i as u64 / sessions) as u32 + 1,
            backend_type: backend_type.to_owned(),
            backend: backend.to_owned(),
            model: model.to_owned(),
            requested_model: if replaced {
                "gpt-4".to_owned()
            } else {
                model.to_owned()
            },
            frontend_type: frontend.to_owned(),
            streaming,
            verbatim_prompt_tokens: (!failed).then_some(prompt.saturating_sub(3)),
            mutated_prompt_tokens: (!failed).then_some(prompt),
            verbatim_completion_tokens: (!failed).then_some(completion),
            mutated_completion_tokens: (!failed).then_some(completion),
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            backend_reported_usage: reported.then(|| BackendUsage {
                prompt_tokens: Some(prompt),
                completion_tokens: Some(completion),
                total_tokens: Some(prompt + completion),
                cached_tokens: (backend == "anthropic").then_some(prompt / 2),
                cache_creation_tokens: None,
                reasoning_tokens: None,
                cost: (backend == "openrouter" && priced).then_some(cost.unwrap_or(0.0)),
            }),
            token_source: if reported {
                TokenSource::Backend
            } else {
                TokenSource::Proxy
            },
            cost_usd: cost,
            cost_source: if priced {
                CostSource::PricingTable
            } else {
                CostSource::Unknown
            },
            http_status_code: status,
            completion_outcome: outcome,
            incomplete_reason: reason,
            tool_call_count: tool_calls,
            tool_names,
            ttft_ms: ttft,
            total_duration_ms: duration,
            proxy_overhead_ms: overhead,
            completion_tokens_per_second: ttft
                .map(|t| completion as f64 / ((duration - t) / 1000.0).max(1e-3)),
            user_agent: rng.pick(AGENTS).map(str::to_owned),
            proxy_user: rng.pick(USERS).map(str::to_owned),
            call_purpose: replaced.then(|| "replacement".to_owned()),
            replaced,
        });
    }
    out
}

/// The reference answers: a brute-force scan of `records`.
fn expected_recent<'a>(records: &'a [UsageRecord], f: &UsageFilter) -> Vec<&'a UsageRecord> {
    let mut v: Vec<&UsageRecord> = records.iter().filter(|r| f.matches(r)).collect();
    v.sort_by(|a, b| (b.timestamp_us, &b.id).cmp(&(a.timestamp_us, &a.id)));
    v
}

fn expected_aggregate(records: &[UsageRecord], f: &UsageFilter, g: &[GroupKey]) -> AggregateSet {
    let mut set = AggregateSet::default();
    for r in records.iter().filter(|r| f.matches(r)) {
        set.add(r, g);
    }
    set
}

const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 24 * HOUR_US;

/// Start of the suite's data: Monday 2026-01-05 10:17:23.456 UTC.
const SUITE_START_US: i64 = 1_767_608_243_456_000;

/// Filters exercising every field, inclusive bounds, hour and day edges.
fn filters(records: &[UsageRecord]) -> Vec<UsageFilter> {
    let mut out = vec![UsageFilter::default()];
    let Some(first) = records.first() else {
        return out;
    };
    let pick = |i: usize| &records[(i * 7919) % records.len()];
    let some = |s: &str| Some(s.to_owned());
    let f = UsageFilter::default;
    for i in 0..3 {
        let r = pick(i);
        out.push(UsageFilter {
            backend_type: some(&r.backend_type),
            ..f()
        });
        out.push(UsageFilter {
            backend: some(&r.backend),
            ..f()
        });
        out.push(UsageFilter {
            model: some(&r.model),
            ..f()
        });
        out.push(UsageFilter {
            frontend_type: some(&r.frontend_type),
            ..f()
        });
        out.push(UsageFilter {
            session_id: some(&r.session_id),
            ..f()
        });
        out.push(UsageFilter {
            proxy_user: r.proxy_user.clone().or(some("alice")),
            ..f()
        });
        out.push(UsageFilter {
            user_agent: r.user_agent.clone().or(some("codex/0.9")),
            ..f()
        });
        out.push(UsageFilter {
            http_status_code: Some([200, 429, 500][i]),
            ..f()
        });
        out.push(UsageFilter {
            hour_of_day: Some(hour_of_day(r.timestamp_us)),
            ..f()
        });
        out.push(UsageFilter {
            day_of_week: Some(day_of_week(r.timestamp_us)),
            ..f()
        });
    }
    out.push(UsageFilter {
        model: some("no-such-model"),
        ..f()
    });
    out.push(UsageFilter {
        http_status_code: Some(418),
        ..f()
    });
    let (a, b) = (pick(11).timestamp_us, pick(12).timestamp_us);
    let (lo, hi) = (a.min(b), a.max(b));
    // Exact record timestamps: both ends inclusive.
    out.push(UsageFilter {
        start_us: Some(lo),
        end_us: Some(hi),
        ..f()
    });
    out.push(UsageFilter {
        start_us: Some(lo),
        ..f()
    });
    out.push(UsageFilter {
        end_us: Some(hi),
        ..f()
    });
    out.push(UsageFilter {
        start_us: Some(lo + 1),
        end_us: Some(hi - 1),
        ..f()
    });
    // Aligned to hours and days, within one hour, and empty ranges.
    let h = hour_floor(first.timestamp_us) + 3 * HOUR_US;
    let d = first.timestamp_us - first.timestamp_us.rem_euclid(DAY_US) + DAY_US;
    for (s, e) in [
        (h, h + 5 * HOUR_US - 1),
        (h, h + 5 * HOUR_US),
        (h + 1, h + 30 * HOUR_US + 17),
        (d, d + 2 * DAY_US - 1),
        (d - 1, d + 2 * DAY_US),
        (d + 7 * HOUR_US + 5, d + 7 * HOUR_US + 1_800_000_000),
        (d - 3 * HOUR_US, d + 3 * DAY_US + 4 * HOUR_US + 99),
        (h + 10, h + 10),
        (h - 100 * DAY_US, h - 99 * DAY_US),
    ] {
        out.push(UsageFilter {
            start_us: Some(s),
            end_us: Some(e),
            ..f()
        });
    }
    // Combinations.
    let r = pick(5);
    out.push(UsageFilter {
        backend: some(&r.backend),
        model: some(&r.model),
        start_us: Some(d + 1234),
        ..f()
    });
    out.push(UsageFilter {
        backend_type: some(&r.backend_type),
        http_status_code: Some(200),
        hour_of_day: Some(hour_of_day(r.timestamp_us)),
        end_us: Some(r.timestamp_us),
        ..f()
    });
    out.push(UsageFilter {
        session_id: some(&r.session_id),
        start_us: Some(lo),
        end_us: Some(hi),
        ..f()
    });
    out.push(UsageFilter {
        day_of_week: Some(day_of_week(r.timestamp_us)),
        hour_of_day: Some(hour_of_day(r.timestamp_us)),
        proxy_user: some("bob"),
        frontend_type: some(&r.frontend_type),
        ..f()
    });
    out.push(UsageFilter {
        user_agent: r.user_agent.clone().or(some("codex/0.9")),
        start_us: Some(h + 1),
        ..f()
    });
    out
}

fn group_bys() -> Vec<Vec<GroupKey>> {
    let mut out: Vec<Vec<GroupKey>> = GroupKey::ALL.iter().map(|(_, k)| vec![*k]).collect();
    out.push(vec![GroupKey::BackendType, GroupKey::Model]);
    out.push(vec![
        GroupKey::Streaming,
        GroupKey::HttpStatusCode,
        GroupKey::Backend,
    ]);
    out.push(vec![GroupKey::ProxyUser, GroupKey::RequestedModel]);
    out.push(vec![GroupKey::Model, GroupKey::SessionId]);
    out
}

fn ids(v: &[&UsageRecord]) -> Vec<String> {
    v.iter().map(|r| r.id.clone()).collect()
}

/// Checks every query of `store` against the brute-force answers over
/// `records` (what the store should hold).
pub fn check_queries(store: &dyn UsageStore, records: &[UsageRecord]) -> Check {
    ensure_eq(store.count()?, records.len() as u64, "count")?;
    let all_filters = filters(records);
    for (i, f) in all_filters.iter().enumerate() {
        let ctx = |what: &str| format!("{what} with filter #{i} {f:?}");
        let want = expected_recent(records, f);
        for (limit, offset) in [
            (10, 0),
            (7, 3),
            (1000, 0),
            (5, want.len().saturating_sub(2)),
        ] {
            let page = store.recent(f, limit, offset)?;
            ensure_eq(page.total, want.len() as u64, &ctx("recent total"))?;
            let want_page: Vec<&UsageRecord> =
                want.iter().skip(offset).take(limit).copied().collect();
            let got: Vec<&UsageRecord> = page.records.iter().collect();
            ensure_eq(ids(&got), ids(&want_page), &ctx("recent page ids"))?;
            ensure(
                page.records.iter().zip(&want_page).all(|(a, b)| a == *b),
                || ctx("recent records differ from what was inserted"),
            )?;
        }
        let page = store.recent(f, 10, want.len() + 5)?;
        ensure(page.records.is_empty(), || ctx("recent past the end"))?;

        let mut exported = Vec::new();
        let fed = store.export(f, &mut |r| {
            exported.push(r.clone());
            true
        })?;
        let mut want_export = want.clone();
        want_export.reverse();
        ensure_eq(fed, want_export.len() as u64, &ctx("export count"))?;
        ensure(
            exported.iter().zip(&want_export).all(|(a, b)| a == *b)
                && exported.len() == want_export.len(),
            || ctx("export order or content"),
        )?;
    }
    check_aggregates(store, records)?;
    let stop_after = 10.min(records.len());
    let mut seen = 0;
    let fed = store.export(&UsageFilter::default(), &mut |_| {
        seen += 1;
        seen < stop_after
    })?;
    ensure_eq(fed, stop_after as u64, "export stops when the sink says so")?;
    check_stats_by_hand(store, records)
}

/// Checks `count` and every aggregate (each filter; every grouping for a
/// quarter of them) of `store` against the brute-force answers over
/// `records` — and nothing else: no `recent` or `export`, which may
/// reorganize a store (SQLite indexes its deferred batches for them).
pub fn check_aggregates(store: &dyn UsageStore, records: &[UsageRecord]) -> Check {
    ensure_eq(store.count()?, records.len() as u64, "count")?;
    for (i, f) in filters(records).iter().enumerate() {
        let ctx = |what: &str| format!("{what} with filter #{i} {f:?}");
        ensure_eq(
            store.aggregate(f, &[])?,
            expected_aggregate(records, f, &[]),
            &ctx("aggregate"),
        )?;
        if i % 4 == 0 {
            for g in group_bys() {
                ensure_eq(
                    store.aggregate(f, &g)?,
                    expected_aggregate(records, f, &g),
                    &ctx(&format!("aggregate grouped by {g:?}")),
                )?;
            }
        }
    }
    Ok(())
}

/// Stats computed field by field, independently of [`Aggregate`].
fn check_stats_by_hand(store: &dyn UsageStore, records: &[UsageRecord]) -> Check {
    let s = store
        .aggregate(&UsageFilter::default(), &[])?
        .overall
        .finish();
    let n = records.len() as u64;
    ensure_eq(s.request_count, n, "request_count")?;
    ensure_eq(s.total_turns, n, "total_turns")?;
    let count = |p: &dyn Fn(&UsageRecord) -> bool| records.iter().filter(|r| p(r)).count() as u64;
    ensure_eq(
        s.response_count,
        count(&|r| r.completion_outcome == CompletionOutcome::Completed),
        "response_count",
    )?;
    ensure_eq(
        s.error_count,
        count(&|r| {
            r.http_status_code >= 400 || r.completion_outcome != CompletionOutcome::Completed
        }),
        "error_count",
    )?;
    let sessions: HashSet<&str> = records.iter().map(|r| r.session_id.as_str()).collect();
    ensure_eq(s.unique_sessions, sessions.len() as u64, "unique_sessions")?;
    let sum = |f: &dyn Fn(&UsageRecord) -> u64| records.iter().map(f).sum::<u64>();
    ensure_eq(
        s.total_prompt_tokens,
        sum(&|r| r.prompt_tokens),
        "prompt tokens",
    )?;
    ensure_eq(
        s.total_completion_tokens,
        sum(&|r| r.completion_tokens),
        "completion tokens",
    )?;
    ensure_eq(s.total_tokens, sum(&|r| r.total_tokens), "total tokens")?;
    ensure_eq(
        s.backend_reported_total_tokens,
        sum(&|r| {
            r.backend_reported_usage
                .as_ref()
                .and_then(|b| b.total_tokens)
                .unwrap_or(0)
        }),
        "backend-reported total tokens",
    )?;
    ensure_eq(
        s.total_tool_calls,
        sum(&|r| u64::from(r.tool_call_count)),
        "tool calls",
    )?;
    let cost: f64 = records.iter().filter_map(|r| r.cost_usd).sum();
    ensure(
        (s.total_cost - cost).abs() <= 1e-9 * cost.abs().max(1.0),
        || format!("total_cost {} vs {cost}", s.total_cost),
    )?;
    let codes: u64 = s.status_code_counts.values().sum();
    ensure_eq(codes, n, "status_code_counts sum")?;
    if let Some(first) = records.first() {
        let d = s
            .duration_stats
            .ok_or_else(|| ConformanceFailure("duration_stats missing".into()))?;
        let max = records
            .iter()
            .map(|r| r.total_duration_ms)
            .fold(f64::MIN, f64::max);
        ensure_eq(d.max_ms, max, "duration max")?;
        ensure_eq(d.count, n, "duration count")?;
        let lo = records
            .iter()
            .map(|r| r.timestamp_us)
            .min()
            .unwrap_or(first.timestamp_us);
        let hi = records
            .iter()
            .map(|r| r.timestamp_us)
            .max()
            .unwrap_or(first.timestamp_us);
        ensure_eq(
            s.time_window_seconds,
            (hi - lo) as f64 / 1e6,
            "time_window_seconds",
        )?;
    }
    Ok(())
}

/// The whole suite on an empty `store`: insert and dedupe, every query,
/// prune, and every query again.
pub fn check_all(store: &dyn UsageStore) -> Check {
    ensure_eq(store.count()?, 0, "the suite needs an empty store")?;
    let records = synthetic_records(1200, SUITE_START_US, 4 * DAY_US + 7 * HOUR_US, 42);
    // Out-of-order batches, with duplicates inside a batch and across batches.
    let (a, b) = records.split_at(700);
    store.insert(b)?;
    let mut batch = a.to_vec();
    batch.push(a[3].clone());
    batch.push(b[10].clone());
    let mut changed = b[20].clone();
    changed.model = "changed-model".into();
    batch.push(changed);
    store.insert(&batch)?;
    store.insert(&a[..50])?;
    store.insert(&[])?;
    ensure_eq(
        store.count()?,
        records.len() as u64,
        "count after duplicate inserts",
    )?;
    let mut sorted = records.clone();
    sorted.sort_by(|x, y| (x.timestamp_us, &x.id).cmp(&(y.timestamp_us, &y.id)));
    check_queries(store, &sorted)?;

    // Prune in the middle of an hour.
    let cut = sorted[sorted.len() / 3].timestamp_us + 1;
    let expected_removed = sorted.iter().filter(|r| r.timestamp_us < cut).count() as u64;
    ensure_eq(store.prune(cut)?, expected_removed, "prune count")?;
    ensure_eq(store.prune(cut)?, 0, "prune again")?;
    let remaining: Vec<UsageRecord> = sorted
        .into_iter()
        .filter(|r| r.timestamp_us >= cut)
        .collect();
    check_queries(store, &remaining)?;
    // Pruned ids may be inserted again.
    store.flush()?;
    Ok(())
}

/// Persistence: records inserted and flushed are there after reopening,
/// and so are the effects of prune. `open` opens the same (initially
/// empty) store file each time.
pub fn check_reopen(open: &mut dyn FnMut() -> Result<Box<dyn UsageStore>, UsageError>) -> Check {
    let records = synthetic_records(600, SUITE_START_US, 3 * DAY_US, 7);
    {
        let store = open()?;
        ensure_eq(store.count()?, 0, "check_reopen needs an empty store")?;
        store.insert(&records[..400])?;
        store.flush()?;
    }
    {
        let store = open()?;
        check_queries(store.as_ref(), &records[..400])?;
        store.insert(&records[400..])?;
        store.insert(&records[390..410])?;
        store.flush()?;
    }
    let cut = records[250].timestamp_us + 17;
    {
        let store = open()?;
        check_queries(store.as_ref(), &records)?;
        store.prune(cut)?;
        store.flush()?;
    }
    let store = open()?;
    let remaining: Vec<UsageRecord> = records
        .iter()
        .filter(|r| r.timestamp_us >= cut)
        .cloned()
        .collect();
    check_queries(store.as_ref(), &remaining)?;
    let total: Aggregate = {
        let mut a = Aggregate::default();
        for r in &remaining {
            a.add(r);
        }
        a
    };
    ensure_eq(
        store.aggregate(&UsageFilter::default(), &[])?.overall,
        total,
        "aggregate after reopen",
    )
}
