//! Mergeable partial aggregates of usage records (placeholder: being
//! completed with latency sketches and distinct-session counting).

use crate::query::StatsBody;
use crate::record::UsageRecord;

/// A partial aggregate: add records, merge aggregates, finish into stats.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Aggregate {
    /// Records added.
    pub request_count: u64,
}

impl Aggregate {
    /// Adds one record.
    pub fn add(&mut self, _record: &UsageRecord) {
        self.request_count += 1;
    }

    /// Folds `other` into `self`.
    pub fn merge(&mut self, other: &Aggregate) {
        self.request_count += other.request_count;
    }

    /// The SPEC §6 stats of everything added.
    pub fn finish(&self) -> StatsBody {
        StatsBody {
            request_count: self.request_count,
            response_count: 0,
            error_count: 0,
            unique_sessions: 0,
            total_turns: 0,
            total_prompt_tokens: 0,
            total_completion_tokens: 0,
            total_tokens: 0,
            backend_reported_prompt_tokens: 0,
            backend_reported_completion_tokens: 0,
            backend_reported_total_tokens: 0,
            total_cost: 0.0,
            cost_per_request: 0.0,
            tokens_per_session: 0.0,
            completion_tokens_per_second: 0.0,
            total_tokens_per_second: 0.0,
            total_tool_calls: 0,
            tool_call_counts: Default::default(),
            status_code_counts: Default::default(),
            ttft_stats: None,
            duration_stats: None,
            proxy_processing_stats: None,
            time_window_seconds: 0.0,
        }
    }
}
