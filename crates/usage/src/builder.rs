//! The background half of usage tracking: turns a finished exchange into a
//! [`UsageRecord`] — backend-reported usage, the proxy's own token counts at
//! the four legs, cost, timings, tool calls. CPU work (parsing, tokenizing)
//! happens here, on the builder thread, never on the request path.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use llm_proxy_core::{BackendType, Completion, Frontend, IncompleteReason};

use crate::collect::FinishedExchange;
use crate::extract::{PromptFacts, ResponseAccumulator, ResponseFacts};
use crate::pricing::{PriceTable, TokenCounts};
use crate::record::{BackendUsage, CompletionOutcome, CostSource, TokenSource, UsageRecord};
use crate::time::{format_rfc3339, system_time_us};
use crate::tokens::{Encoding, TokenCounter};

/// Sessions whose turn counter is remembered; past this the map starts over.
const MAX_TRACKED_SESSIONS: usize = 100_000;

/// Builds records; owned by the builder thread.
pub struct RecordBuilder {
    counter: Arc<TokenCounter>,
    prices: Arc<PriceTable>,
    turns: HashMap<String, u32>,
    /// Token counts of lines already seen, by (encoding, hash of the line).
    /// Agents resend the whole conversation every turn: nearly every line of
    /// a prompt was counted before.
    line_counts: HashMap<(Encoding, u64), u32>,
}

/// Lines whose counts are remembered; past this the cache starts over.
const MAX_CACHED_LINES: usize = 200_000;

impl std::fmt::Debug for RecordBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordBuilder")
            .field("sessions", &self.turns.len())
            .finish_non_exhaustive()
    }
}

/// How a text is turned into a token count.
#[derive(Clone, Copy)]
enum Counting {
    /// With the model family's tokenizer (`exact` when it is the family's own).
    Tokenizer(Encoding, bool),
    /// A length-based estimate (the builder is behind).
    Estimate,
}

impl RecordBuilder {
    /// A builder using `counter` and `prices`.
    pub fn new(counter: Arc<TokenCounter>, prices: Arc<PriceTable>) -> RecordBuilder {
        RecordBuilder {
            counter,
            prices,
            turns: HashMap::new(),
            line_counts: HashMap::new(),
        }
    }

    /// Tokens of `text`: the sum over its lines (each tokenized once and
    /// remembered) plus one per line break.
    fn count(&mut self, how: Counting, text: &str) -> u64 {
        let Counting::Tokenizer(encoding, _) = how else {
            return crate::tokens::estimate(text);
        };
        let mut total = 0u64;
        for (i, line) in text.split('\n').enumerate() {
            if i > 0 {
                total += 1;
            }
            if line.is_empty() {
                continue;
            }
            let key = (encoding, line_hash(line));
            if let Some(n) = self.line_counts.get(&key) {
                total += u64::from(*n);
                continue;
            }
            let n = self.counter.count_text(encoding, line);
            if self.line_counts.len() >= MAX_CACHED_LINES {
                self.line_counts.clear();
            }
            self.line_counts
                .insert(key, u32::try_from(n).unwrap_or(u32::MAX));
            total += n;
        }
        total
    }

    /// The record for `ex`. With `estimate_only`, token counts are length
    /// estimates (used when the builder falls behind).
    pub fn build(&mut self, ex: &FinishedExchange, estimate_only: bool) -> UsageRecord {
        let ctx = &ex.ctx;
        let outcome = &ex.outcome;
        let frontend = ctx.frontend;
        let served = outcome.served_by.as_ref();
        let model = served.map_or_else(|| ctx.requested_model.clone(), |a| a.model.clone());
        let backend_protocol = served.map_or(frontend, |a| protocol_of(a.backend_type, frontend));

        let how = if estimate_only {
            Counting::Estimate
        } else {
            let (encoding, exact) = Encoding::for_model(&model);
            Counting::Tokenizer(encoding, exact)
        };

        // Leg 1 and 2: prompts.
        let client_prompt = PromptFacts::from_body(frontend, &ex.client_request);
        let verbatim_prompt = self.count(how, &client_prompt.text_for_counting);
        let mutated_prompt = match &ex.backend_request {
            None => None,
            Some(body) if *body == ex.client_request => Some(verbatim_prompt),
            // The usual rewrite (the model name spliced, stream usage asked
            // for) leaves the prompt as it was: skip parsing the body again
            // (~11 k instructions a record for a 1 KB body).
            Some(body)
                if served.is_some_and(|a| {
                    only_model_swapped(&ex.client_request, body, &ctx.requested_model, &a.model)
                }) =>
            {
                Some(verbatim_prompt)
            }
            Some(body) => {
                let facts = PromptFacts::from_body(backend_protocol, body);
                Some(self.count(how, &facts.text_for_counting))
            }
        };

        // Leg 3 and 4: completions.
        let backend_facts = (served.is_some() && !ex.backend_response.is_empty())
            .then(|| response_facts(backend_protocol, ex.backend_sse, &ex.backend_response));
        let verbatim_completion = backend_facts
            .as_ref()
            .map(|f| self.count(how, &completion_text(f)));
        let mutated_completion = if same_chunks(&ex.backend_response, &ex.client_response) {
            verbatim_completion
        } else if ex.client_response.is_empty() {
            Some(0)
        } else {
            let facts = response_facts(frontend, ex.client_sse, &ex.client_response);
            Some(self.count(how, &completion_text(&facts)))
        };

        // Tokens of record.
        let reported: Option<BackendUsage> = backend_facts.as_ref().and_then(|f| f.usage.clone());
        let (prompt_tokens, completion_tokens, token_source) = match &reported {
            Some(u) if u.prompt_tokens.is_some() || u.completion_tokens.is_some() => (
                u.prompt_tokens.unwrap_or(0),
                u.completion_tokens.unwrap_or(0),
                TokenSource::Backend,
            ),
            _ => (
                mutated_prompt.unwrap_or(verbatim_prompt),
                verbatim_completion.unwrap_or(0),
                match how {
                    Counting::Tokenizer(_, true) => TokenSource::Proxy,
                    _ => TokenSource::Estimate,
                },
            ),
        };

        // Cost: a backend-reported cost wins over the table.
        let (cost_usd, cost_source) = match reported.as_ref().and_then(|u| u.cost) {
            Some(cost) => (Some(cost), CostSource::Backend),
            None => {
                let counts = TokenCounts {
                    prompt_tokens,
                    completion_tokens,
                    cached_tokens: reported.as_ref().and_then(|u| u.cached_tokens).unwrap_or(0),
                    cache_creation_tokens: reported
                        .as_ref()
                        .and_then(|u| u.cache_creation_tokens)
                        .unwrap_or(0),
                    reasoning_tokens: reported
                        .as_ref()
                        .and_then(|u| u.reasoning_tokens)
                        .unwrap_or(0),
                };
                match self.prices.cost(&model, &counts) {
                    Some(cost) => (Some(cost), CostSource::PricingTable),
                    None => (None, CostSource::Unknown),
                }
            }
        };

        let (completion_outcome, incomplete_reason) = match outcome.completion {
            Completion::Completed => (CompletionOutcome::Completed, None),
            Completion::Incomplete(reason) => (
                CompletionOutcome::Incomplete,
                Some(match reason {
                    IncompleteReason::ClientDisconnect => "client_disconnect",
                    IncompleteReason::Timeout => "timeout",
                    _ => "backend_error",
                }),
            ),
            _ => (CompletionOutcome::Failed, None),
        };

        let tool_names: Vec<String> = backend_facts
            .as_ref()
            .map(|f| f.tool_calls.iter().map(|t| t.name.clone()).collect())
            .unwrap_or_default();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let total_ms = ms(outcome.total);
        let ttft_ms = outcome.ttft.map(ms);
        let generation_s = outcome
            .ttft
            .map(|t| outcome.total.saturating_sub(t).as_secs_f64())
            .filter(|s| *s > 0.0);
        let timestamp_us = system_time_us(ctx.received_at);
        let turn_number = self.next_turn(&ctx.session_id);
        let replaced = served.is_some_and(|a| a.replaced);

        UsageRecord {
            id: ctx.request_id.to_string(),
            timestamp: format_rfc3339(timestamp_us),
            timestamp_us,
            session_id: ctx.session_id.to_string(),
            turn_number,
            backend_type: served
                .map_or_else(|| "none".to_owned(), |a| a.backend_type.as_str().to_owned()),
            backend: served.map_or_else(|| "none".to_owned(), |a| a.backend.to_string()),
            model,
            requested_model: ctx.requested_model.clone(),
            frontend_type: frontend.as_str().to_owned(),
            streaming: ctx.streaming,
            verbatim_prompt_tokens: Some(verbatim_prompt),
            mutated_prompt_tokens: mutated_prompt,
            verbatim_completion_tokens: verbatim_completion,
            mutated_completion_tokens: mutated_completion,
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            backend_reported_usage: reported,
            token_source,
            cost_usd,
            cost_source,
            http_status_code: outcome.status,
            completion_outcome,
            incomplete_reason: incomplete_reason.map(str::to_owned),
            tool_call_count: u32::try_from(tool_names.len()).unwrap_or(u32::MAX),
            tool_names,
            ttft_ms,
            total_duration_ms: total_ms,
            proxy_overhead_ms: ms(outcome.total.saturating_sub(outcome.upstream_time)),
            completion_tokens_per_second: generation_s
                .filter(|_| completion_tokens > 0)
                .map(|s| completion_tokens as f64 / s),
            user_agent: ctx.user_agent.clone(),
            proxy_user: ctx.proxy_user.clone(),
            call_purpose: replaced.then(|| "replacement".to_owned()),
            replaced,
        }
    }

    fn next_turn(&mut self, session: &str) -> u32 {
        if self.turns.len() >= MAX_TRACKED_SESSIONS && !self.turns.contains_key(session) {
            self.turns.clear();
        }
        let turn = self.turns.entry(session.to_owned()).or_insert(0);
        *turn = turn.saturating_add(1);
        *turn
    }
}

/// The protocol a backend of `backend_type` speaks for a `frontend` request.
fn protocol_of(backend_type: BackendType, frontend: Frontend) -> Frontend {
    if backend_type.serves(frontend) {
        frontend
    } else if backend_type == BackendType::Anthropic {
        Frontend::AnthropicMessages
    } else {
        Frontend::OpenAiChat
    }
}

fn response_facts(protocol: Frontend, sse: bool, chunks: &[Bytes]) -> ResponseFacts {
    let mut acc = ResponseAccumulator::new(protocol, sse);
    for c in chunks {
        acc.push(c);
    }
    acc.finish()
}

/// What counts as completion: reasoning, the text, and each tool call's name
/// and arguments.
fn completion_text(f: &ResponseFacts) -> String {
    let mut text = f.reasoning.clone();
    if !text.is_empty() {
        text.push(' ');
    }
    text.push_str(&f.text);
    for call in &f.tool_calls {
        text.push(' ');
        text.push_str(&call.name);
        text.push(' ');
        text.push_str(&call.arguments);
    }
    text
}

/// The two legs carried the very same chunks (pass-through, nothing stripped).
fn same_chunks(a: &[Bytes], b: &[Bytes]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// A fast 64-bit hash of a line, for the token-count cache: eight bytes per
/// step instead of SipHash's one (`DefaultHasher` cost ~3 k instructions
/// per 1 KB line). Not for untrusted-collision resistance: a collision only
/// makes one line's count wrong, and the cache is private to the builder.
fn line_hash(line: &str) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let bytes = line.as_bytes();
    let mut h = K ^ (bytes.len() as u64);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(word))
            .wrapping_mul(K)
            .rotate_left(31);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    // murmur3's finalizer: every input bit affects every output bit.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// What the pipeline inserts when it asks an upstream for stream usage the
/// client did not ask for (`RequestFacts::rewrite`).
const STREAM_USAGE_INSERT: &[u8] = br#""stream_options":{"include_usage":true},"#;

/// `backend` is `client` with one JSON string `"from"` replaced by `"to"`
/// (the model field: the pipeline changed the model, so the only changed
/// string is that one) and perhaps the stream-usage request inserted after
/// the opening brace. Then both carry the same prompt.
fn only_model_swapped(client: &[u8], backend: &[u8], from: &str, to: &str) -> bool {
    let backend = match backend.iter().position(|b| *b == b'{') {
        Some(open) if backend[open + 1..].starts_with(STREAM_USAGE_INSERT) => {
            let client_open = client.iter().position(|b| *b == b'{');
            if client_open != Some(open) || client[..open] != backend[..open] {
                return false;
            }
            // Compare as if the insert were not there.
            let mut rest = Vec::with_capacity(backend.len() - STREAM_USAGE_INSERT.len());
            rest.extend_from_slice(&backend[..=open]);
            rest.extend_from_slice(&backend[open + 1 + STREAM_USAGE_INSERT.len()..]);
            std::borrow::Cow::Owned(rest)
        }
        _ => std::borrow::Cow::Borrowed(backend),
    };
    if from == to {
        return client == &backend[..];
    }
    let (Ok(from), Ok(to)) = (serde_json::to_string(from), serde_json::to_string(to)) else {
        return false;
    };
    let (from, to) = (from.as_bytes(), to.as_bytes());
    let common = client
        .iter()
        .zip(backend.iter())
        .take_while(|(a, b)| a == b)
        .count();
    // The swapped string opens at the last quote of the common prefix.
    let Some(at) = client[..common.min(client.len())]
        .iter()
        .rposition(|b| *b == b'"')
    else {
        return false;
    };
    client[at..].starts_with(from)
        && backend[at..].starts_with(to)
        && client[at + from.len()..] == backend[at + to.len()..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spliced_model_keeps_the_prompt() {
        let client = br#"{"model":"up:gpt-4o","messages":[{"role":"user","content":"up:gpt-4o"}]}"#;
        let spliced = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"up:gpt-4o"}]}"#;
        assert!(only_model_swapped(client, spliced, "up:gpt-4o", "gpt-4o"));
        let with_usage = br#"{"stream_options":{"include_usage":true},"model":"gpt-4o","messages":[{"role":"user","content":"up:gpt-4o"}]}"#;
        assert!(only_model_swapped(
            client,
            with_usage,
            "up:gpt-4o",
            "gpt-4o"
        ));
        // Same prefix in both names: the swap still starts at the quote.
        let client = br#"{"model":"gpt-4o","x":1}"#;
        let longer = br#"{"model":"gpt-4o-2024","x":1}"#;
        assert!(only_model_swapped(client, longer, "gpt-4o", "gpt-4o-2024"));
        // Unchanged model, usage asked for.
        let plain = br#" {"model":"m","messages":[]}"#;
        let asked = br#" {"stream_options":{"include_usage":true},"model":"m","messages":[]}"#;
        assert!(only_model_swapped(plain, asked, "m", "m"));
    }

    #[test]
    fn any_other_change_means_parsing_again() {
        let client = br#"{"model":"up:m","messages":[{"role":"user","content":"a"}]}"#;
        // The text changed too.
        let changed = br#"{"model":"m","messages":[{"role":"user","content":"b"}]}"#;
        assert!(!only_model_swapped(client, changed, "up:m", "m"));
        // The model was not what the client asked for.
        let other = br#"{"model":"x","messages":[{"role":"user","content":"a"}]}"#;
        assert!(!only_model_swapped(client, other, "up:m", "m"));
        // A translated body.
        let translated = br#"{"model":"m","max_tokens":1024,"messages":[{"role":"user","content":[{"type":"text","text":"a"}]}]}"#;
        assert!(!only_model_swapped(client, translated, "up:m", "m"));
        assert!(!only_model_swapped(b"", b"{}", "a", "b"));
    }

    #[test]
    fn line_hash_tells_lines_apart() {
        let lines = [
            "",
            "a",
            "b",
            "ab",
            "ba",
            "12345678",
            "123456789",
            "12345678 ",
            "the quick brown fox",
        ];
        let hashes: std::collections::HashSet<u64> = lines.iter().map(|l| line_hash(l)).collect();
        assert_eq!(hashes.len(), lines.len());
        assert_eq!(line_hash("same line"), line_hash("same line"));
    }
}
