//! The numbers behind `GET /v1/replacement/metrics` (SPEC §7). Each shard of
//! the replacer keeps its own [`Counters`] under its own lock; a report sums
//! them, so the counts are exact and the request path takes no extra lock.

use std::collections::BTreeMap;

use serde::Serialize;

/// Seconds covered by the `*_last_60s` counts.
pub const WINDOW_SECONDS: u64 = 60;

/// Events per second over the last [`WINDOW_SECONDS`], in a fixed ring.
#[derive(Debug, Clone)]
pub struct WindowCounter {
    /// `(second, count)` per slot; a slot whose second is stale counts 0.
    slots: [(u64, u64); WINDOW_SECONDS as usize],
}

impl Default for WindowCounter {
    fn default() -> Self {
        WindowCounter {
            slots: [(u64::MAX, 0); WINDOW_SECONDS as usize],
        }
    }
}

impl WindowCounter {
    /// Counts one event at `second` (seconds since the replacer started).
    pub fn add(&mut self, second: u64) {
        let slot = &mut self.slots[(second % WINDOW_SECONDS) as usize];
        if slot.0 == second {
            slot.1 += 1;
        } else {
            *slot = (second, 1);
        }
    }

    /// Events in the window ending at `now` (inclusive), i.e. seconds `now-59 ..= now`.
    pub fn recent(&self, now: u64) -> u64 {
        self.slots
            .iter()
            .filter(|(s, _)| *s != u64::MAX && *s <= now && now - *s < WINDOW_SECONDS)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Event counts of one shard.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Activations (a dice roll that hit).
    pub activations: u64,
    /// Activations in the last minute.
    pub activations_window: WindowCounter,
    /// Sessions counted as activated.
    pub sessions_activated: u64,
    /// Turns served by a replacement.
    pub replaced_turns: u64,
    /// Sessions with at least one replaced turn.
    pub sessions_with_turns: u64,
    /// `turn_count` of each activation → activations.
    pub turn_count_distribution: BTreeMap<u32, u64>,
    /// Turns the `X-Disable-Replacement` header kept original.
    pub header_opt_outs: u64,
    /// Turns kept original because their session opted out earlier.
    pub session_opt_outs: u64,
    /// Opt-outs in the last minute.
    pub opt_outs_window: WindowCounter,
    /// Sessions that opted out at least once.
    pub sessions_opted_out: u64,
    /// Dice rolls.
    pub probability_checks: u64,
    /// Sessions that rolled the dice at least once.
    pub sessions_checked: u64,
    /// Sessions forgotten because they were idle.
    pub evicted_idle: u64,
    /// Sessions forgotten because the table was full.
    pub evicted_capacity: u64,
}

impl Counters {
    /// Adds the plain counts of `other` into `self` (windows are summed separately).
    pub fn merge(&mut self, other: &Counters) {
        self.activations += other.activations;
        self.sessions_activated += other.sessions_activated;
        self.replaced_turns += other.replaced_turns;
        self.sessions_with_turns += other.sessions_with_turns;
        for (k, v) in &other.turn_count_distribution {
            *self.turn_count_distribution.entry(*k).or_default() += v;
        }
        self.header_opt_outs += other.header_opt_outs;
        self.session_opt_outs += other.session_opt_outs;
        self.sessions_opted_out += other.sessions_opted_out;
        self.probability_checks += other.probability_checks;
        self.sessions_checked += other.sessions_checked;
        self.evicted_idle += other.evicted_idle;
        self.evicted_capacity += other.evicted_capacity;
    }
}

/// The `/v1/replacement/metrics` answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReplacementReport {
    /// Whether replacement runs (`false`: every count is zero).
    pub enabled: bool,
    /// Seconds since the replacer started.
    pub elapsed_seconds: f64,
    /// Activations.
    pub activation_metrics: ActivationMetrics,
    /// Replaced turns.
    pub turn_count_metrics: TurnCountMetrics,
    /// Opt-outs.
    pub opt_out_metrics: OptOutMetrics,
    /// Dice rolls.
    pub probability_check_metrics: ProbabilityCheckMetrics,
    /// The bounded session table.
    pub session_metrics: SessionMetrics,
}

/// `activation_metrics`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ActivationMetrics {
    /// Dice rolls that hit.
    pub total_activations: u64,
    /// `total_activations / elapsed_seconds`.
    pub activation_rate_per_second: f64,
    /// Activations in the last 60 s.
    pub activations_last_60s: u64,
    /// Sessions with at least one activation.
    pub unique_sessions_activated: u64,
}

/// `turn_count_metrics`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TurnCountMetrics {
    /// Turns served by a replacement.
    pub total_turns_completed: u64,
    /// Mean `turn_count` per activation (0 without activations).
    pub average_turn_count: f64,
    /// `turn_count` (as a string key) → activations.
    pub turn_count_distribution: BTreeMap<String, u64>,
    /// Sessions with at least one replaced turn.
    pub unique_sessions_with_turns: u64,
}

/// `opt_out_metrics`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OptOutMetrics {
    /// `header_opt_outs + session_opt_outs`.
    pub total_opt_outs: u64,
    /// Turns that carried `X-Disable-Replacement`.
    pub header_opt_outs: u64,
    /// Turns of sessions that opted out earlier (`X-Disable-Replacement: session`).
    pub session_opt_outs: u64,
    /// `total_opt_outs / elapsed_seconds`.
    pub opt_out_rate_per_second: f64,
    /// Opt-outs in the last 60 s.
    pub opt_outs_last_60s: u64,
    /// Sessions that opted out at least once.
    pub unique_sessions_opted_out: u64,
}

/// `probability_check_metrics`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProbabilityCheckMetrics {
    /// Dice rolls.
    pub total_probability_checks: u64,
    /// Sessions that rolled at least once.
    pub unique_sessions_checked: u64,
}

/// `session_metrics` (not in the seed's shape; how the bounded table fares).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SessionMetrics {
    /// Sessions whose state is held now.
    pub tracked_sessions: u64,
    /// `replacement.max_sessions`.
    pub max_sessions: u64,
    /// Sessions forgotten after `replacement.session_idle_seconds`.
    pub evicted_idle: u64,
    /// Sessions forgotten because the table was full.
    pub evicted_capacity: u64,
}

impl ReplacementReport {
    /// The report for summed `counters` (`recent_*`: the 60 s window sums).
    pub fn new(
        elapsed_seconds: f64,
        counters: &Counters,
        recent_activations: u64,
        recent_opt_outs: u64,
        sessions: SessionMetrics,
    ) -> ReplacementReport {
        let rate = |n: u64| {
            if elapsed_seconds > 0.0 {
                n as f64 / elapsed_seconds
            } else {
                0.0
            }
        };
        let weighted: u64 = counters
            .turn_count_distribution
            .iter()
            .map(|(k, v)| u64::from(*k) * v)
            .sum();
        let average = if counters.activations > 0 {
            weighted as f64 / counters.activations as f64
        } else {
            0.0
        };
        let total_opt_outs = counters.header_opt_outs + counters.session_opt_outs;
        ReplacementReport {
            enabled: true,
            elapsed_seconds,
            activation_metrics: ActivationMetrics {
                total_activations: counters.activations,
                activation_rate_per_second: rate(counters.activations),
                activations_last_60s: recent_activations,
                unique_sessions_activated: counters.sessions_activated,
            },
            turn_count_metrics: TurnCountMetrics {
                total_turns_completed: counters.replaced_turns,
                average_turn_count: average,
                turn_count_distribution: counters
                    .turn_count_distribution
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect(),
                unique_sessions_with_turns: counters.sessions_with_turns,
            },
            opt_out_metrics: OptOutMetrics {
                total_opt_outs,
                header_opt_outs: counters.header_opt_outs,
                session_opt_outs: counters.session_opt_outs,
                opt_out_rate_per_second: rate(total_opt_outs),
                opt_outs_last_60s: recent_opt_outs,
                unique_sessions_opted_out: counters.sessions_opted_out,
            },
            probability_check_metrics: ProbabilityCheckMetrics {
                total_probability_checks: counters.probability_checks,
                unique_sessions_checked: counters.sessions_checked,
            },
            session_metrics: sessions,
        }
    }

    /// The answer when replacement is off: the same shape, all zero.
    pub fn disabled() -> ReplacementReport {
        let mut r = ReplacementReport::new(
            0.0,
            &Counters::default(),
            0,
            0,
            SessionMetrics {
                tracked_sessions: 0,
                max_sessions: 0,
                evicted_idle: 0,
                evicted_capacity: 0,
            },
        );
        r.enabled = false;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_counts_only_the_last_minute() {
        let mut w = WindowCounter::default();
        w.add(0);
        w.add(0);
        w.add(30);
        w.add(59);
        assert_eq!(w.recent(59), 4);
        assert_eq!(w.recent(60), 2, "second 0 left the window");
        w.add(60); // reuses second 0's slot
        assert_eq!(w.recent(60), 3);
        assert_eq!(w.recent(200), 0);
    }
}
