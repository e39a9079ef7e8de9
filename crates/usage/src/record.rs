//! The usage record: one per client request, written when the exchange ends.
//! Field names are the JSON names of SPEC §6. No message content and no
//! credentials ever appear here.

use serde::{Deserialize, Serialize};

/// Where the token numbers of a record come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// The backend reported usage.
    Backend,
    /// The proxy counted with the model family's own tokenizer.
    Proxy,
    /// An approximation (another vendor's tokenizer, or a length estimate
    /// when the counting workers fell behind). The default when a stored
    /// record lacks the field.
    #[default]
    Estimate,
}

impl TokenSource {
    /// The JSON / column name.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenSource::Backend => "backend",
            TokenSource::Proxy => "proxy",
            TokenSource::Estimate => "estimate",
        }
    }
}

/// Where `cost_usd` comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CostSource {
    /// The backend reported a cost.
    Backend,
    /// Tokens × the price table.
    PricingTable,
    /// The model is not in the price table: `cost_usd` is null, never 0.
    /// The default when a stored record lacks the field.
    #[default]
    Unknown,
}

impl CostSource {
    /// The JSON / column name.
    pub fn as_str(self) -> &'static str {
        match self {
            CostSource::Backend => "backend",
            CostSource::PricingTable => "pricing_table",
            CostSource::Unknown => "unknown",
        }
    }
}

/// How the exchange ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompletionOutcome {
    /// The whole response reached the client (the default when a stored
    /// record lacks the field).
    #[default]
    Completed,
    /// The proxy could not get a response (the client got a proxy error).
    Failed,
    /// The response started but did not finish (see `incomplete_reason`).
    Incomplete,
}

impl CompletionOutcome {
    /// The JSON / column name.
    pub fn as_str(self) -> &'static str {
        match self {
            CompletionOutcome::Completed => "completed",
            CompletionOutcome::Failed => "failed",
            CompletionOutcome::Incomplete => "incomplete",
        }
    }
}

/// Usage as the backend reported it, normalized to OpenAI semantics:
/// prompt tokens include cached and cache-creation tokens (for Anthropic,
/// `input_tokens + cache_read_input_tokens + cache_creation_input_tokens`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendUsage {
    /// Prompt (input) tokens, including cached ones.
    pub prompt_tokens: Option<u64>,
    /// Completion (output) tokens, including reasoning tokens.
    pub completion_tokens: Option<u64>,
    /// Total tokens.
    pub total_tokens: Option<u64>,
    /// Prompt tokens read from the cache.
    pub cached_tokens: Option<u64>,
    /// Prompt tokens written to the cache (Anthropic).
    pub cache_creation_tokens: Option<u64>,
    /// Reasoning tokens (part of the completion tokens).
    pub reasoning_tokens: Option<u64>,
    /// Cost in USD, when the backend reports one (e.g. OpenRouter).
    pub cost: Option<f64>,
}

/// One usage record per client request.
///
/// Decoding is tolerant (`#[serde(default)]`, unknown fields ignored): a
/// record written by another version of the proxy (a spill journal line, an
/// export) still reads, missing fields taking their defaults. Encoding is
/// unchanged: every field is always written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UsageRecord {
    /// The request id (also the `x-request-id` response header).
    pub id: String,
    /// When the request arrived, RFC 3339 UTC with milliseconds.
    pub timestamp: String,
    /// Receipt time in microseconds since the Unix epoch (for ordering and filters).
    pub timestamp_us: i64,
    /// Session identity (SPEC §7).
    pub session_id: String,
    /// 1-based turn number of this request within its session.
    pub turn_number: u32,
    /// Type of the backend that served the request (`openai`, `anthropic`, `mock`), or `none`.
    pub backend_type: String,
    /// Backend instance name, or `none` when no backend answered.
    pub backend: String,
    /// Model name sent upstream.
    pub model: String,
    /// Model as the client asked for it.
    pub requested_model: String,
    /// `openai`, `anthropic` or `responses`.
    pub frontend_type: String,
    /// The client asked for a stream.
    pub streaming: bool,
    /// Prompt tokens of the client's request, counted by the proxy. On a
    /// machine with no idle CPU this and the three counts below are
    /// estimates (the backend's own counts when it reported usage; see
    /// `crate::counting`), counted in `llm_proxy_usage_estimated_records_total`.
    pub verbatim_prompt_tokens: Option<u64>,
    /// Prompt tokens of the request the proxy sent upstream.
    pub mutated_prompt_tokens: Option<u64>,
    /// Completion tokens of the backend's response, counted by the proxy.
    pub verbatim_completion_tokens: Option<u64>,
    /// Completion tokens of the response the client got.
    pub mutated_completion_tokens: Option<u64>,
    /// Prompt tokens of record: backend-reported if any, else the proxy's count.
    pub prompt_tokens: u64,
    /// Completion tokens of record: backend-reported if any, else the proxy's count.
    pub completion_tokens: u64,
    /// `prompt_tokens + completion_tokens`.
    pub total_tokens: u64,
    /// Usage as the backend reported it.
    pub backend_reported_usage: Option<BackendUsage>,
    /// Where `prompt_tokens` / `completion_tokens` come from.
    pub token_source: TokenSource,
    /// Cost in USD; null when unknown (never a silent 0).
    pub cost_usd: Option<f64>,
    /// Where `cost_usd` comes from.
    pub cost_source: CostSource,
    /// HTTP status sent to the client (499: the client left before a response).
    pub http_status_code: u16,
    /// How the exchange ended.
    pub completion_outcome: CompletionOutcome,
    /// `client_disconnect`, `backend_error` or `timeout` when incomplete.
    pub incomplete_reason: Option<String>,
    /// Tool calls in the response.
    pub tool_call_count: u32,
    /// Names of the tools called, in order.
    pub tool_names: Vec<String>,
    /// Receipt → first response byte to the client.
    pub ttft_ms: Option<f64>,
    /// Receipt → end of the response.
    pub total_duration_ms: f64,
    /// Total minus time spent waiting on upstreams.
    pub proxy_overhead_ms: f64,
    /// Completion tokens per second of generation (after the first byte).
    pub completion_tokens_per_second: Option<f64>,
    /// Client `User-Agent`.
    pub user_agent: Option<String>,
    /// Label of the proxy key used, when auth is on.
    pub proxy_user: Option<String>,
    /// Why the call was made: `replacement` for replaced turns, else null.
    pub call_purpose: Option<String>,
    /// Served by a replacement target.
    pub replaced: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_from_other_versions_decode_and_encoding_is_unchanged() {
        // A newer proxy added a field; an older one lacked some.
        let line = r#"{"id":"r1","timestamp":"2026-01-05T10:17:23.456Z","timestamp_us":1767608243456000,
            "session_id":"s","turn_number":2,"backend_type":"openai","backend":"b","model":"m",
            "requested_model":"m","frontend_type":"openai","streaming":true,"prompt_tokens":3,
            "completion_tokens":4,"total_tokens":7,"token_source":"backend","cost_source":"unknown",
            "http_status_code":200,"completion_outcome":"completed","total_duration_ms":1.5,
            "proxy_overhead_ms":0.5,"some_future_field":{"x":1}}"#;
        let r: UsageRecord = serde_json::from_str(line).unwrap();
        assert_eq!(r.id, "r1");
        assert_eq!(r.total_tokens, 7);
        assert!(r.tool_names.is_empty() && r.tool_call_count == 0 && !r.replaced);
        assert_eq!(r.call_purpose, None);
        let none: UsageRecord = serde_json::from_str("{}").unwrap();
        assert_eq!(none.token_source, TokenSource::Estimate);
        assert_eq!(none.cost_source, CostSource::Unknown);
        // Every field is still written, with its SPEC name.
        let v = serde_json::to_value(&r).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 35, "{keys:?}");
        for k in [
            "replaced",
            "call_purpose",
            "tool_names",
            "backend_reported_usage",
            "cost_usd",
        ] {
            assert!(keys.contains(&k), "{k}");
        }
        assert!(!keys.contains(&"some_future_field"));
    }
}
