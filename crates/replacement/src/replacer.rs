//! [`ModelReplacer`]: the `RouteRewriter` that decides, per session and
//! turn, whether a request goes to its original target or a replacement.
//!
//! Per session: the first turn is always original. A later turn whose
//! request matches a rule (with a target other than the current one) rolls
//! the dice; a hit serves `turn_count` turns from the replacement, then one
//! forced original turn, then the dice roll again. A turn counts when it is
//! routed, whether it then succeeds or fails.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::HeaderMap;
use llm_proxy_core::{RewriteRequest, RouteRewriter, Target};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::config::ReplacementConfig;
use crate::metrics::{Counters, ReplacementReport, SessionMetrics};
use crate::rules::RuleSet;
use crate::session::{Phase, SessionTable};
use crate::telemetry;

/// Header that opts a request (`true`) or its whole session (`session`) out.
pub const OPT_OUT_HEADER: &str = "x-disable-replacement";

/// Sessions per shard below which one shard is used (LRU order stays exact
/// for small tables).
const SESSIONS_PER_SHARD: usize = 1024;
/// Most shards.
const MAX_SHARDS: usize = 16;

/// One lock's worth of state: sessions, their RNG and their counts.
#[derive(Debug)]
struct Shard {
    table: SessionTable,
    rng: SmallRng,
    counters: Counters,
}

/// Random model replacement per session; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct ModelReplacer {
    rules: RuleSet,
    probability: f64,
    turn_count: u32,
    max_sessions: usize,
    shards: Box<[Mutex<Shard>]>,
    /// Salts the session → shard hash (random, or the seed in tests).
    shard_salt: u64,
    started: Instant,
}

/// What the opt-out header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OptOut {
    /// This request only.
    Turn,
    /// This request and every later turn of its session.
    Session,
}

/// Prometheus events of one decision, emitted after the lock is released.
#[derive(Debug, Default)]
struct Emit {
    new_session: bool,
    evicted_idle: u64,
    evicted_capacity: u64,
    opt_out: Option<&'static str>,
    checked: bool,
    activated: bool,
}

impl ModelReplacer {
    /// A replacer for a validated `config`, with an OS-seeded RNG.
    pub fn new(config: &ReplacementConfig) -> ModelReplacer {
        let mut rng = SmallRng::from_os_rng();
        let salt = rng.random();
        ModelReplacer::build(config, salt, |_| SmallRng::from_rng(&mut rng))
    }

    /// A replacer whose dice are reproducible (tests).
    pub fn with_seed(config: &ReplacementConfig, seed: u64) -> ModelReplacer {
        ModelReplacer::build(config, seed, |shard| {
            SmallRng::seed_from_u64(seed.wrapping_add(shard as u64))
        })
    }

    fn build(
        config: &ReplacementConfig,
        shard_salt: u64,
        mut rng: impl FnMut(usize) -> SmallRng,
    ) -> ModelReplacer {
        let max_sessions = config.max_sessions.max(1);
        let shards = (max_sessions / SESSIONS_PER_SHARD).clamp(1, MAX_SHARDS);
        let per_shard = max_sessions / shards;
        let idle = Duration::try_from_secs_f64(config.session_idle_seconds)
            .unwrap_or(Duration::from_secs(3600));
        let shards = (0..shards)
            .map(|i| {
                Mutex::new(Shard {
                    table: SessionTable::new(per_shard, idle),
                    rng: rng(i),
                    counters: Counters::default(),
                })
            })
            .collect();
        ModelReplacer {
            rules: RuleSet::new(&config.replacement_rules),
            probability: config.probability,
            turn_count: config.turn_count.max(1),
            max_sessions,
            shards,
            shard_salt,
            started: Instant::now(),
        }
    }

    fn shard(&self, session: &str) -> MutexGuard<'_, Shard> {
        let hash =
            BuildHasherDefault::<DefaultHasher>::default().hash_one((self.shard_salt, session));
        let index = (hash % self.shards.len() as u64) as usize;
        let shard = &self.shards[index];
        // A panic while holding the lock cannot leave a shard half-updated
        // in a way that matters more than losing replacement for a session.
        shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sessions whose state is held now (at most `max_sessions`).
    pub fn tracked_sessions(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .table
                    .len()
            })
            .sum()
    }

    /// The `/v1/replacement/metrics` report.
    pub fn report(&self) -> ReplacementReport {
        let elapsed = self.started.elapsed();
        let second = elapsed.as_secs();
        let mut total = Counters::default();
        let (mut recent_activations, mut recent_opt_outs, mut tracked) = (0, 0, 0);
        for shard in &self.shards {
            let shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            total.merge(&shard.counters);
            recent_activations += shard.counters.activations_window.recent(second);
            recent_opt_outs += shard.counters.opt_outs_window.recent(second);
            tracked += shard.table.len() as u64;
        }
        ReplacementReport::new(
            elapsed.as_secs_f64(),
            &total,
            recent_activations,
            recent_opt_outs,
            SessionMetrics {
                tracked_sessions: tracked,
                max_sessions: self.max_sessions as u64,
                evicted_idle: total.evicted_idle,
                evicted_capacity: total.evicted_capacity,
            },
        )
    }

    /// The decision for one turn; counts it. Runs under the session's shard lock.
    fn decide(&self, request: &RewriteRequest<'_>, emit: &mut Emit) -> Option<Target> {
        let opt_out = opt_out(request.headers);
        let mut guard = self.shard(request.session_id);
        let Shard {
            table,
            rng,
            counters,
        } = &mut *guard;
        let now = Instant::now();
        let second = now.saturating_duration_since(self.started).as_secs();
        let (state, evicted) = table.touch(request.session_id, now);
        counters.evicted_idle += evicted.idle;
        counters.evicted_capacity += evicted.capacity;
        emit.evicted_idle = evicted.idle;
        emit.evicted_capacity = evicted.capacity;
        emit.new_session = state.turns == 0;
        state.turns += 1;

        if opt_out.is_some() || state.opted_out {
            if opt_out.is_some() {
                counters.header_opt_outs += 1;
                emit.opt_out = Some("header");
            } else {
                counters.session_opt_outs += 1;
                emit.opt_out = Some("session");
            }
            counters.opt_outs_window.add(second);
            if !state.seen.opted_out {
                state.seen.opted_out = true;
                counters.sessions_opted_out += 1;
            }
            if opt_out == Some(OptOut::Session) {
                state.opted_out = true;
            }
            return None;
        }
        if state.turns == 1 {
            return None;
        }
        let decision = match state.phase {
            Phase::Cooldown => {
                state.phase = Phase::Original;
                None
            }
            Phase::Replacing { remaining } => {
                // A turn no rule applies to does not use up the replacement.
                let to = self.rules.replacement_for(request.target)?;
                state.phase = next_phase(remaining);
                counters.replaced_turns += 1;
                Some(to.clone())
            }
            Phase::Original => {
                let to = self.rules.replacement_for(request.target)?;
                counters.probability_checks += 1;
                emit.checked = true;
                if !state.seen.checked {
                    state.seen.checked = true;
                    counters.sessions_checked += 1;
                }
                // `random::<f64>()` is in [0, 1): probability 1 always hits, 0 never.
                if rng.random::<f64>() >= self.probability {
                    return None;
                }
                emit.activated = true;
                counters.activations += 1;
                counters.activations_window.add(second);
                *counters
                    .turn_count_distribution
                    .entry(self.turn_count)
                    .or_default() += 1;
                if !state.seen.activated {
                    state.seen.activated = true;
                    counters.sessions_activated += 1;
                }
                state.phase = next_phase(self.turn_count);
                counters.replaced_turns += 1;
                Some(to.clone())
            }
        };
        if decision.is_some() && !state.seen.replaced_turn {
            state.seen.replaced_turn = true;
            counters.sessions_with_turns += 1;
        }
        decision
    }
}

/// The phase after serving one replaced turn with `remaining` (≥ 1) left before it.
fn next_phase(remaining: u32) -> Phase {
    match remaining.saturating_sub(1) {
        0 => Phase::Cooldown,
        remaining => Phase::Replacing { remaining },
    }
}

fn opt_out(headers: &HeaderMap) -> Option<OptOut> {
    let value = headers.get(OPT_OUT_HEADER)?.to_str().ok()?.trim();
    if value.eq_ignore_ascii_case("session") {
        Some(OptOut::Session)
    } else if ["true", "1", "yes"]
        .iter()
        .any(|v| value.eq_ignore_ascii_case(v))
    {
        Some(OptOut::Turn)
    } else {
        None
    }
}

impl RouteRewriter for ModelReplacer {
    fn rewrite(&self, request: &RewriteRequest<'_>) -> Option<Target> {
        let mut emit = Emit::default();
        let decision = self.decide(request, &mut emit);
        if emit.new_session {
            metrics::gauge!(telemetry::SESSIONS).increment(1.0);
        }
        let evicted = emit.evicted_idle + emit.evicted_capacity;
        if evicted > 0 {
            metrics::gauge!(telemetry::SESSIONS).decrement(evicted as f64);
            if emit.evicted_idle > 0 {
                metrics::counter!(telemetry::SESSIONS_EVICTED_TOTAL, "reason" => "idle")
                    .increment(emit.evicted_idle);
            }
            if emit.evicted_capacity > 0 {
                metrics::counter!(telemetry::SESSIONS_EVICTED_TOTAL, "reason" => "capacity")
                    .increment(emit.evicted_capacity);
            }
        }
        if let Some(kind) = emit.opt_out {
            metrics::counter!(telemetry::OPT_OUTS_TOTAL, "kind" => kind).increment(1);
        }
        if emit.checked {
            metrics::counter!(telemetry::PROBABILITY_CHECKS_TOTAL).increment(1);
        }
        if let Some(to) = &decision {
            let backend = to.backend.to_string();
            if emit.activated {
                metrics::counter!(telemetry::ACTIVATIONS_TOTAL, "to_backend" => backend.clone())
                    .increment(1);
                tracing::debug!(session = request.session_id, to = %to, "replacement activated");
            }
            metrics::counter!(telemetry::REPLACED_TURNS_TOTAL, "to_backend" => backend)
                .increment(1);
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use http::HeaderValue;
    use llm_proxy_core::Frontend;

    use super::*;
    use crate::config::ReplacementRule;

    fn rule(from: &str, backend: &str, model: &str) -> ReplacementRule {
        ReplacementRule {
            from_pattern: from.into(),
            to_backend: backend.into(),
            to_model: model.into(),
        }
    }

    fn config(probability: f64, turn_count: u32, rules: Vec<ReplacementRule>) -> ReplacementConfig {
        ReplacementConfig {
            enabled: true,
            probability,
            turn_count,
            replacement_rules: rules,
            ..ReplacementConfig::default()
        }
    }

    /// One turn of `session` asking for `backend:model`; the served target as text.
    fn turn(
        r: &ModelReplacer,
        session: &str,
        backend: &str,
        model: &str,
        headers: &HeaderMap,
    ) -> String {
        let target = Target::new(backend, model);
        let requested = format!("{backend}:{model}");
        let request = RewriteRequest {
            session_id: session,
            frontend: Frontend::OpenAiChat,
            requested_model: &requested,
            target: &target,
            headers,
        };
        r.rewrite(&request).unwrap_or(target).to_string()
    }

    fn turns(r: &ModelReplacer, session: &str, n: usize) -> Vec<String> {
        let h = HeaderMap::new();
        (0..n).map(|_| turn(r, session, "a", "m", &h)).collect()
    }

    #[test]
    fn probability_one_replaces_turn_count_turns_then_cools_down() {
        let r = ModelReplacer::with_seed(&config(1.0, 2, vec![rule("*", "b", "x")]), 7);
        let got = turns(&r, "s1", 9);
        let (o, x) = ("a:m", "b:x");
        assert_eq!(got, [o, x, x, o, x, x, o, x, x]);
        let m = r.report();
        assert_eq!(m.activation_metrics.total_activations, 3);
        assert_eq!(m.activation_metrics.unique_sessions_activated, 1);
        assert_eq!(m.activation_metrics.activations_last_60s, 3);
        assert_eq!(m.turn_count_metrics.total_turns_completed, 6);
        assert_eq!(m.turn_count_metrics.average_turn_count, 2.0);
        assert_eq!(m.turn_count_metrics.turn_count_distribution["2"], 3);
        assert_eq!(m.probability_check_metrics.total_probability_checks, 3);
        assert_eq!(m.probability_check_metrics.unique_sessions_checked, 1);
        // Another session starts over with an original first turn.
        assert_eq!(turns(&r, "s2", 2), [o, x]);
        // turn_count 1: every other turn after the first.
        let r = ModelReplacer::with_seed(&config(1.0, 1, vec![rule("*", "b", "x")]), 7);
        assert_eq!(turns(&r, "s", 6), [o, x, o, x, o, x]);
    }

    #[test]
    fn probability_zero_never_replaces() {
        let r = ModelReplacer::with_seed(&config(0.0, 2, vec![rule("*", "b", "x")]), 7);
        for s in 0..50 {
            assert!(turns(&r, &format!("s{s}"), 10).iter().all(|t| t == "a:m"));
        }
        let m = r.report();
        assert_eq!(m.activation_metrics.total_activations, 0);
        assert_eq!(m.turn_count_metrics.total_turns_completed, 0);
        assert_eq!(m.probability_check_metrics.total_probability_checks, 50 * 9);
    }

    #[test]
    fn a_middling_probability_is_seeded_and_reproducible() {
        let c = config(0.5, 1, vec![rule("*", "b", "x")]);
        let run = |seed| turns(&ModelReplacer::with_seed(&c, seed), "s", 200);
        assert_eq!(run(3), run(3));
        let got = run(3);
        let replaced = got.iter().filter(|t| *t == "b:x").count();
        // 199 eligible turns, each replacement followed by a forced original turn.
        assert!((30..=90).contains(&replaced), "{replaced} replaced turns");
        for pair in got.windows(2) {
            assert!(
                !(pair[0] == "b:x" && pair[1] == "b:x"),
                "cool-down skipped: {got:?}"
            );
        }
    }

    #[test]
    fn opt_out_header_keeps_turns_original_and_is_counted() {
        let r = ModelReplacer::with_seed(&config(1.0, 2, vec![rule("*", "b", "x")]), 7);
        let mut off = HeaderMap::new();
        off.insert(OPT_OUT_HEADER, HeaderValue::from_static("true"));
        let on = HeaderMap::new();
        assert_eq!(turn(&r, "s", "a", "m", &on), "a:m");
        assert_eq!(turn(&r, "s", "a", "m", &off), "a:m");
        assert_eq!(turn(&r, "s", "a", "m", &off), "a:m");
        // Without the header the dice roll again.
        assert_eq!(turn(&r, "s", "a", "m", &on), "b:x");
        // Mid-replacement the header wins, and the replacement resumes after it.
        assert_eq!(turn(&r, "s", "a", "m", &off), "a:m");
        assert_eq!(turn(&r, "s", "a", "m", &on), "b:x");
        assert_eq!(turn(&r, "s", "a", "m", &on), "a:m", "cool-down");
        let m = r.report();
        assert_eq!(m.opt_out_metrics.header_opt_outs, 3);
        assert_eq!(m.opt_out_metrics.session_opt_outs, 0);
        assert_eq!(m.opt_out_metrics.total_opt_outs, 3);
        assert_eq!(m.opt_out_metrics.opt_outs_last_60s, 3);
        assert_eq!(m.opt_out_metrics.unique_sessions_opted_out, 1);
        assert_eq!(m.turn_count_metrics.total_turns_completed, 2);

        // `session` opts the whole session out; its later turns count as session opt-outs.
        let mut sticky = HeaderMap::new();
        sticky.insert(OPT_OUT_HEADER, HeaderValue::from_static("Session"));
        assert_eq!(turn(&r, "t", "a", "m", &sticky), "a:m");
        for _ in 0..4 {
            assert_eq!(turn(&r, "t", "a", "m", &on), "a:m");
        }
        let m = r.report();
        assert_eq!(m.opt_out_metrics.header_opt_outs, 4);
        assert_eq!(m.opt_out_metrics.session_opt_outs, 4);
        assert_eq!(m.opt_out_metrics.unique_sessions_opted_out, 2);
        // `false` is no opt-out.
        let mut no = HeaderMap::new();
        no.insert(OPT_OUT_HEADER, HeaderValue::from_static("false"));
        assert_eq!(turn(&r, "u", "a", "m", &no), "a:m");
        assert_eq!(turn(&r, "u", "a", "m", &no), "b:x");
    }

    #[test]
    fn rules_apply_in_order_and_a_same_target_rule_is_skipped() {
        let r = ModelReplacer::with_seed(
            &config(
                1.0,
                1,
                vec![
                    rule("a:m", "a", "m"),
                    rule("gpt", "g", "gx"),
                    rule("*", "b", "x"),
                ],
            ),
            1,
        );
        let h = HeaderMap::new();
        // a:m: the exact rule points at a:m itself, so `gpt` is next (no match), then `*`.
        assert_eq!(turn(&r, "s1", "a", "m", &h), "a:m");
        assert_eq!(turn(&r, "s1", "a", "m", &h), "b:x");
        // A gpt model: the substring rule comes before `*`.
        assert_eq!(turn(&r, "s2", "a", "gpt-4o", &h), "a:gpt-4o");
        assert_eq!(turn(&r, "s2", "a", "gpt-4o", &h), "g:gx");
        // Only a same-target rule: never replaced, and no dice are rolled.
        let r = ModelReplacer::with_seed(&config(1.0, 1, vec![rule("*", "a", "m")]), 1);
        assert!(turns(&r, "s", 5).iter().all(|t| t == "a:m"));
        assert_eq!(
            r.report()
                .probability_check_metrics
                .total_probability_checks,
            0
        );
    }

    #[test]
    fn a_hundred_thousand_one_turn_sessions_stay_within_the_cap() {
        let c = ReplacementConfig {
            max_sessions: 10_000,
            ..config(1.0, 1, vec![rule("*", "b", "x")])
        };
        let r = ModelReplacer::with_seed(&c, 1);
        let h = HeaderMap::new();
        for i in 0..100_000 {
            assert_eq!(turn(&r, &format!("session-{i}"), "a", "m", &h), "a:m");
        }
        let tracked = r.tracked_sessions();
        assert!(tracked <= 10_000, "{tracked} sessions held");
        // Sharding may round the cap down a little, never more than one per shard.
        assert!(tracked >= 10_000 - MAX_SHARDS, "{tracked} sessions held");
        let m = r.report();
        assert_eq!(m.session_metrics.tracked_sessions, tracked as u64);
        assert_eq!(m.session_metrics.evicted_capacity, 100_000 - tracked as u64);
        // The most recent session is still known: its second turn is replaced.
        assert_eq!(turn(&r, "session-99999", "a", "m", &h), "b:x");
    }
}
