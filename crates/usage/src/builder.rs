//! The background half of usage tracking: turns a finished exchange into a
//! [`UsageRecord`] in two steps, so that the costly one can yield.
//!
//! 1. [`RecordBuilder::draft`] (the builder thread, normal priority): the
//!    backend response is read for reported usage, tool calls and the
//!    completion text; timings, outcome and turn number are set. Every
//!    record takes this step, and it is cheap.
//! 2. The proxy's own token counts at the four legs: exact, with the model
//!    family's tokenizer ([`TokenTally::count`], on the low-priority counting
//!    thread), or a length estimate ([`estimate_counts`]) when the counting
//!    thread is behind — the machine is busy serving traffic.
//!
//! [`finish`] then fills the counts in, prices the record and hands it on.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use bytes::Bytes;
use llm_proxy_core::{BackendType, Completion, Frontend, IncompleteReason};
use memchr::memmem::Finder;

use crate::collect::FinishedExchange;
use crate::counting::Heartbeat;
use crate::extract::{PromptFacts, ResponseAccumulator, ResponseFacts, essentials_of};
use crate::pricing::{PriceTable, TokenCounts};
use crate::record::{CompletionOutcome, CostSource, TokenSource, UsageRecord};
use crate::time::{format_rfc3339, system_time_us};
use crate::tokens::{Encoding, TokenCounter};

/// Sessions a turn-counter generation holds (see [`SessionTurns`]).
const MAX_TRACKED_SESSIONS: usize = 100_000;

/// Lines whose counts are remembered; past this the cache starts over.
const MAX_CACHED_LINES: usize = 200_000;

/// Turn counters by session, in two generations. A session is looked up in
/// the current one, then in the previous one (a hit there moves it to the
/// current); when the current one holds `capacity` sessions it becomes the
/// previous one and the old previous one is forgotten. So a session is
/// forgotten (its next request is turn 1 again) only once at least
/// `capacity` other sessions were seen since its last request; a single map
/// cleared when full reset every session at once.
///
/// Keys are a seeded 64-bit hash of the id: 16 bytes a session and no copy
/// of the id (two ids sharing a hash, ~1 in 10⁹ at 200 k sessions, would
/// share a counter). SipHash and a key copy per record were ~2 k
/// instructions of the builder's ~17 k.
struct SessionTurns {
    current: HashMap<u64, u32, foldhash::fast::RandomState>,
    previous: HashMap<u64, u32, foldhash::fast::RandomState>,
    key: foldhash::quality::RandomState,
    capacity: usize,
}

impl SessionTurns {
    fn new(capacity: usize) -> SessionTurns {
        SessionTurns {
            current: HashMap::default(),
            previous: HashMap::default(),
            key: foldhash::quality::RandomState::default(),
            capacity: capacity.max(1),
        }
    }

    /// The next turn of `session` (1 for a session not remembered).
    fn next(&mut self, session: &str) -> u32 {
        let key = self.key.hash_one(session);
        if let Some(turn) = self.current.get_mut(&key) {
            *turn = turn.saturating_add(1);
            return *turn;
        }
        let turn = self
            .previous
            .remove(&key)
            .map_or(1, |t| t.saturating_add(1));
        if self.current.len() >= self.capacity {
            // The previous generation's table, emptied, is the next one.
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
        }
        self.current.insert(key, turn);
        turn
    }

    /// Sessions remembered.
    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

/// Drafts records; owned by the builder thread.
pub struct RecordBuilder {
    turns: SessionTurns,
    /// The last model's encoding (consecutive records mostly share a model).
    last_encoding: Option<(String, (Encoding, bool))>,
}

impl std::fmt::Debug for RecordBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordBuilder")
            .field("sessions", &self.turns.len())
            .finish_non_exhaustive()
    }
}

/// A record with everything but the proxy's token counts (and what depends
/// on them: tokens of record when the backend reported none, cost, tokens
/// per second), plus what counting needs.
#[derive(Debug)]
pub struct Draft {
    record: UsageRecord,
    exchange: FinishedExchange,
    /// The protocol spoken with the backend.
    backend_protocol: Frontend,
    /// The backend response was read (a backend answered with a body).
    read_response: bool,
    /// The model family's encoding, and whether it is that family's own.
    encoding: (Encoding, bool),
    /// Seconds from the first content byte to the end, if any.
    generation_s: Option<f64>,
}

impl Draft {
    /// The encoding exact counting would use.
    pub fn encoding(&self) -> Encoding {
        self.encoding.0
    }

    /// Body bytes this draft holds (for bounding a queue of drafts).
    pub fn held_bytes(&self) -> usize {
        let ex = &self.exchange;
        ex.client_request.len()
            + ex.backend_request.as_ref().map_or(0, Bytes::len)
            + ex.backend_response.iter().map(Bytes::len).sum::<usize>()
            + ex.client_response.iter().map(Bytes::len).sum::<usize>()
    }

    /// When the exchange ended.
    pub fn ended_at(&self) -> Instant {
        self.exchange.ended_at
    }

    /// What the backend response counts as completion (leg 3), if it was
    /// read: its full reading (text, reasoning, tool arguments).
    fn completion_text(&self) -> Option<String> {
        let ex = &self.exchange;
        self.read_response.then(|| {
            completion_text(&response_facts(
                self.backend_protocol,
                ex.backend_sse,
                &ex.backend_response,
            ))
        })
    }
}

/// The proxy's token counts at the four legs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Client → proxy prompt.
    pub verbatim_prompt: u64,
    /// Proxy → backend prompt, if a backend was asked.
    pub mutated_prompt: Option<u64>,
    /// Backend → proxy completion, if the response was read.
    pub verbatim_completion: Option<u64>,
    /// Proxy → client completion.
    pub mutated_completion: Option<u64>,
    /// Counted with the model family's own tokenizer (else an approximation).
    pub exact: bool,
}

impl RecordBuilder {
    /// A builder with no sessions seen.
    pub fn new() -> RecordBuilder {
        RecordBuilder {
            turns: SessionTurns::new(MAX_TRACKED_SESSIONS),
            last_encoding: None,
        }
    }

    /// The record for `ex` without the proxy's token counts.
    pub fn draft(&mut self, ex: FinishedExchange) -> Draft {
        let ctx = &ex.ctx;
        let outcome = &ex.outcome;
        let frontend = ctx.frontend;
        let served = outcome.served_by.as_ref();
        let model = served.map_or_else(|| ctx.requested_model.clone(), |a| a.model.clone());
        let backend_protocol = served.map_or(frontend, |a| protocol_of(a.backend_type, frontend));
        let encoding = self.encoding_of(&model);

        // Only what every record needs: usage and tool names (the text is
        // read by whoever counts tokens).
        let read = served.is_some() && !ex.backend_response.is_empty();
        let backend_facts =
            read.then(|| essentials_of(backend_protocol, ex.backend_sse, &ex.backend_response));
        let reported = backend_facts.as_ref().and_then(|f| f.usage.clone());
        let tool_names: Vec<String> = backend_facts
            .map(|f| f.tool_calls.into_iter().map(|t| t.name).collect())
            .unwrap_or_default();

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

        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let generation_s = outcome
            .ttft
            .map(|t| outcome.total.saturating_sub(t).as_secs_f64())
            .filter(|s| *s > 0.0);
        let timestamp_us = system_time_us(ctx.received_at);
        let turn_number = self.turns.next(&ctx.session_id);
        let replaced = served.is_some_and(|a| a.replaced);
        // Tokens of record when the backend reported them; else `finish`
        // takes the proxy's counts.
        let (prompt_tokens, completion_tokens, token_source) = match &reported {
            Some(u) if u.prompt_tokens.is_some() || u.completion_tokens.is_some() => (
                u.prompt_tokens.unwrap_or(0),
                u.completion_tokens.unwrap_or(0),
                TokenSource::Backend,
            ),
            _ => (0, 0, TokenSource::Estimate),
        };

        let record = UsageRecord {
            id: String::from(&*ctx.request_id),
            timestamp: format_rfc3339(timestamp_us),
            timestamp_us,
            session_id: String::from(&*ctx.session_id),
            turn_number,
            backend_type: served
                .map_or_else(|| "none".to_owned(), |a| a.backend_type.as_str().to_owned()),
            backend: served.map_or_else(|| "none".to_owned(), |a| String::from(&*a.backend)),
            model,
            requested_model: ctx.requested_model.clone(),
            frontend_type: frontend.as_str().to_owned(),
            streaming: ctx.streaming,
            verbatim_prompt_tokens: None,
            mutated_prompt_tokens: None,
            verbatim_completion_tokens: None,
            mutated_completion_tokens: None,
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            backend_reported_usage: reported,
            token_source,
            cost_usd: None,
            cost_source: CostSource::Unknown,
            http_status_code: outcome.status,
            completion_outcome,
            incomplete_reason: incomplete_reason.map(str::to_owned),
            tool_call_count: u32::try_from(tool_names.len()).unwrap_or(u32::MAX),
            tool_names,
            ttft_ms: outcome.ttft.map(ms),
            total_duration_ms: ms(outcome.total),
            proxy_overhead_ms: ms(outcome.total.saturating_sub(outcome.upstream_time)),
            completion_tokens_per_second: None,
            user_agent: ctx.user_agent.clone(),
            proxy_user: ctx.proxy_user.clone(),
            call_purpose: replaced.then(|| "replacement".to_owned()),
            replaced,
        };
        Draft {
            record,
            exchange: ex,
            backend_protocol,
            read_response: read,
            encoding,
            generation_s,
        }
    }

    fn encoding_of(&mut self, model: &str) -> (Encoding, bool) {
        match &self.last_encoding {
            Some((last, encoding)) if last == model => *encoding,
            _ => {
                let encoding = Encoding::for_model(model);
                self.last_encoding = Some((model.to_owned(), encoding));
                encoding
            }
        }
    }
}

impl Default for RecordBuilder {
    fn default() -> Self {
        RecordBuilder::new()
    }
}

/// Counts tokens exactly, remembering the counts of lines already seen;
/// owned by the counting thread.
pub struct TokenTally {
    counter: Arc<TokenCounter>,
    /// Token counts of lines already seen, by (encoding, hash of the line).
    /// Agents resend the whole conversation every turn: nearly every line of
    /// a prompt was counted before.
    line_counts: HashMap<(Encoding, u64), u32>,
}

impl std::fmt::Debug for TokenTally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenTally")
            .field("cached_lines", &self.line_counts.len())
            .finish_non_exhaustive()
    }
}

impl TokenTally {
    /// A tally using `counter`.
    pub fn new(counter: Arc<TokenCounter>) -> TokenTally {
        TokenTally {
            counter,
            line_counts: HashMap::new(),
        }
    }

    /// Tokens of `text`: the sum over its lines (each tokenized once and
    /// remembered) plus one per line break.
    fn count_text(&mut self, encoding: Encoding, text: &str, beat: &Heartbeat) -> u64 {
        let mut total = 0u64;
        for (i, line) in text.split('\n').enumerate() {
            if i > 0 {
                total += 1;
                beat.beat();
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

    /// The four legs of `d`, counted with its model family's tokenizer;
    /// `beat` is told of the progress.
    pub(crate) fn count(&mut self, d: &Draft, beat: &Heartbeat) -> Counts {
        let ex = &d.exchange;
        let (encoding, exact) = d.encoding;
        let frontend = ex.ctx.frontend;
        let served = ex.outcome.served_by.as_ref();

        // Leg 1 and 2: prompts.
        let client_prompt = PromptFacts::from_body(frontend, &ex.client_request);
        let verbatim_prompt = self.count_text(encoding, &client_prompt.text_for_counting, beat);
        let mutated_prompt = match &ex.backend_request {
            None => None,
            Some(body) if *body == ex.client_request => Some(verbatim_prompt),
            // The usual rewrite (the model name spliced, stream usage asked
            // for) leaves the prompt as it was: skip parsing the body again
            // (~11 k instructions a record for a 1 KB body).
            Some(body)
                if served.is_some_and(|a| {
                    only_model_swapped(&ex.client_request, body, &ex.ctx.requested_model, &a.model)
                }) =>
            {
                Some(verbatim_prompt)
            }
            Some(body) => {
                let facts = PromptFacts::from_body(d.backend_protocol, body);
                Some(self.count_text(encoding, &facts.text_for_counting, beat))
            }
        };

        // Leg 3 and 4: completions.
        let verbatim_completion = d
            .completion_text()
            .map(|text| self.count_text(encoding, &text, beat));
        let mutated_completion = if same_chunks(&ex.backend_response, &ex.client_response) {
            verbatim_completion
        } else if ex.client_response.is_empty() {
            Some(0)
        } else {
            let facts = response_facts(frontend, ex.client_sse, &ex.client_response);
            Some(self.count_text(encoding, &completion_text(&facts), beat))
        };
        Counts {
            verbatim_prompt,
            mutated_prompt,
            verbatim_completion,
            mutated_completion,
            exact,
        }
    }
}

/// Estimates of the four legs, without tokenizing and mostly without
/// parsing: the backend's own counts when it reported usage, else a token
/// per four bytes of a request body (JSON framing included, base64 payloads
/// left out) and per four characters of the completion text.
pub fn estimate_counts(d: &Draft) -> Counts {
    let ex = &d.exchange;
    let reported = d.record.backend_reported_usage.as_ref();
    // As counted: the client got nothing (and the backend something), or
    // the backend's content, perhaps in another protocol.
    let client_got_nothing =
        ex.client_response.is_empty() && !same_chunks(&ex.backend_response, &ex.client_response);
    let client_leg = |backend: Option<u64>| if client_got_nothing { Some(0) } else { backend };
    if let Some(u) = reported.filter(|u| u.prompt_tokens.is_some() && u.completion_tokens.is_some())
    {
        let (prompt, completion) = (
            u.prompt_tokens.unwrap_or(0),
            u.completion_tokens.unwrap_or(0),
        );
        let verbatim_completion = d.read_response.then_some(completion);
        return Counts {
            verbatim_prompt: prompt,
            mutated_prompt: ex.backend_request.as_ref().map(|_| prompt),
            verbatim_completion,
            mutated_completion: client_leg(verbatim_completion),
            exact: false,
        };
    }
    let served = ex.outcome.served_by.as_ref();
    let verbatim_prompt = estimate_body(&ex.client_request);
    let mutated_prompt = ex.backend_request.as_ref().map(|body| {
        let same = *body == ex.client_request
            || served.is_some_and(|a| {
                only_model_swapped(&ex.client_request, body, &ex.ctx.requested_model, &a.model)
            });
        if same {
            verbatim_prompt
        } else {
            estimate_body(body)
        }
    });
    let verbatim_completion = d
        .completion_text()
        .map(|text| crate::tokens::estimate(&text));
    Counts {
        verbatim_prompt,
        mutated_prompt,
        verbatim_completion,
        mutated_completion: client_leg(verbatim_completion),
        exact: false,
    }
}

/// Base64 payloads in request bodies: data URLs (`…;base64,…`) and the
/// `"data":"…"` fields of Anthropic images / documents and audio input.
static BASE64_STARTS: LazyLock<[Finder<'static>; 2]> =
    LazyLock::new(|| [Finder::new(b";base64,"), Finder::new(b"\"data\":\"")]);

/// A token per four bytes of `body`, not counting base64 payloads (an image
/// is a few hundred tokens to a model, not a quarter of its bytes).
fn estimate_body(body: &[u8]) -> u64 {
    let mut payload = 0usize;
    for finder in BASE64_STARTS.iter() {
        for at in finder.find_iter(body) {
            let start = at + finder.needle().len();
            let len = memchr::memchr(b'"', &body[start..]).unwrap_or(body.len() - start);
            payload += len;
        }
    }
    (body.len().saturating_sub(payload) as u64).div_ceil(4)
}

/// The finished record: `counts` filled in, tokens of record taken from
/// them when the backend reported none, priced (a backend-reported cost
/// wins over the table).
pub fn finish(d: Draft, counts: Counts, prices: &PriceTable) -> UsageRecord {
    let mut r = d.record;
    r.verbatim_prompt_tokens = Some(counts.verbatim_prompt);
    r.mutated_prompt_tokens = counts.mutated_prompt;
    r.verbatim_completion_tokens = counts.verbatim_completion;
    r.mutated_completion_tokens = counts.mutated_completion;
    if r.token_source != TokenSource::Backend {
        r.prompt_tokens = counts.mutated_prompt.unwrap_or(counts.verbatim_prompt);
        r.completion_tokens = counts.verbatim_completion.unwrap_or(0);
        r.total_tokens = r.prompt_tokens + r.completion_tokens;
        r.token_source = if counts.exact {
            TokenSource::Proxy
        } else {
            TokenSource::Estimate
        };
    }
    let reported = r.backend_reported_usage.as_ref();
    (r.cost_usd, r.cost_source) = match reported.and_then(|u| u.cost) {
        Some(cost) => (Some(cost), CostSource::Backend),
        None => {
            let counts = TokenCounts {
                prompt_tokens: r.prompt_tokens,
                completion_tokens: r.completion_tokens,
                cached_tokens: reported.and_then(|u| u.cached_tokens).unwrap_or(0),
                cache_creation_tokens: reported.and_then(|u| u.cache_creation_tokens).unwrap_or(0),
                reasoning_tokens: reported.and_then(|u| u.reasoning_tokens).unwrap_or(0),
            };
            match prices.cost(&r.model, &counts) {
                Some(cost) => (Some(cost), CostSource::PricingTable),
                None => (None, CostSource::Unknown),
            }
        }
    };
    let completion_tokens = r.completion_tokens;
    r.completion_tokens_per_second = d
        .generation_s
        .filter(|_| completion_tokens > 0)
        .map(|s| completion_tokens as f64 / s);
    r
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

/// A finished exchange for tests: an OpenAI chat request for `model`
/// answered with `response` (JSON) by an openai-type backend.
#[cfg(test)]
pub(crate) fn test_exchange(model: &str, response: &str) -> FinishedExchange {
    use llm_proxy_core::{AttemptInfo, ExchangeContext, ExchangeOutcome};
    use std::time::{Duration, SystemTime};
    let request = format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"Say hello to the whole wide world, please."}}]}}"#
    );
    FinishedExchange {
        ctx: ExchangeContext {
            request_id: "req-1".into(),
            frontend: Frontend::OpenAiChat,
            received_at: SystemTime::now(),
            started: Instant::now(),
            client_addr: None,
            user_agent: None,
            proxy_user: None,
            session_id: "s".into(),
            requested_model: model.into(),
            streaming: false,
        },
        outcome: ExchangeOutcome {
            status: 200,
            completion: Completion::Completed,
            served_by: Some(AttemptInfo {
                attempt: 1,
                backend: "up".into(),
                backend_type: BackendType::OpenAi,
                model: model.into(),
                replaced: false,
                stream_usage_requested: false,
            }),
            attempts: 1,
            ttft: Some(Duration::from_millis(10)),
            upstream_time: Duration::from_millis(20),
            total: Duration::from_millis(30),
            error: None,
        },
        client_request: Bytes::from(request.clone()),
        backend_request: Some(Bytes::from(request)),
        backend_response: vec![Bytes::from(response.to_owned())],
        backend_sse: false,
        client_response: vec![Bytes::from(response.to_owned())],
        client_sse: false,
        ended_at: Instant::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = r#"{"id":"c","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello, whole wide world! How are you today?"},"finish_reason":"stop"}]}"#;

    fn prices() -> PriceTable {
        PriceTable::bundled().unwrap()
    }

    #[test]
    fn exact_counts_make_a_proxy_record_and_estimates_an_estimate_record() {
        let mut builder = RecordBuilder::new();
        let mut tally = TokenTally::new(Arc::new(TokenCounter::new()));
        let exact = {
            let d = builder.draft(test_exchange("gpt-4o-mini", ANSWER));
            let counts = tally.count(&d, &Heartbeat::new());
            assert!(counts.exact);
            finish(d, counts, &prices())
        };
        assert_eq!(exact.token_source, TokenSource::Proxy);
        // "Hello, whole wide world! How are you today?" is 11 o200k tokens.
        assert_eq!(exact.verbatim_completion_tokens, Some(11));
        assert_eq!(exact.mutated_completion_tokens, Some(11));
        assert_eq!(exact.completion_tokens, 11);
        assert_eq!(exact.mutated_prompt_tokens, exact.verbatim_prompt_tokens);
        assert_eq!(exact.prompt_tokens, exact.verbatim_prompt_tokens.unwrap());
        assert_eq!(exact.cost_source, CostSource::PricingTable);
        assert!(exact.cost_usd.unwrap() > 0.0);
        assert_eq!(exact.turn_number, 1);

        let estimated = {
            let d = builder.draft(test_exchange("gpt-4o-mini", ANSWER));
            let counts = estimate_counts(&d);
            assert!(!counts.exact);
            finish(d, counts, &prices())
        };
        assert_eq!(estimated.token_source, TokenSource::Estimate);
        assert_eq!(estimated.turn_number, 2);
        // A quarter of the request body's bytes and of the answer's characters.
        let body = test_exchange("gpt-4o-mini", ANSWER).client_request.len() as u64;
        assert_eq!(estimated.verbatim_prompt_tokens, Some(body.div_ceil(4)));
        assert_eq!(estimated.verbatim_completion_tokens, Some(11));
        assert_eq!(estimated.prompt_tokens, body.div_ceil(4));
        assert!(estimated.cost_usd.unwrap() > exact.cost_usd.unwrap());
    }

    #[test]
    fn turns_count_per_session_and_each_model_gets_its_encoding() {
        let mut builder = RecordBuilder::new();
        let mut draft = |model: &str, session: &str| {
            let mut ex = test_exchange(model, ANSWER);
            ex.ctx.session_id = Arc::from(session);
            let d = builder.draft(ex);
            (d.record.turn_number, d.encoding)
        };
        let o200k = (Encoding::O200kBase, true);
        let cl100k = (Encoding::Cl100kBase, true);
        assert_eq!(draft("gpt-4o-mini", "a"), (1, o200k));
        assert_eq!(draft("gpt-4", "b"), (1, cl100k));
        assert_eq!(draft("gpt-4", "a"), (2, cl100k));
        assert_eq!(draft("gpt-4o-mini", "a"), (3, o200k));
        assert_eq!(
            draft("claude-sonnet-4", "b"),
            (2, (Encoding::Cl100kBase, false))
        );
        assert_eq!(draft("gpt-4o-mini", "c"), (1, o200k));
    }

    #[test]
    fn a_session_seen_within_a_generation_keeps_counting() {
        let mut turns = SessionTurns::new(3);
        for s in ["a", "b", "c"] {
            assert_eq!(turns.next(s), 1);
        }
        assert_eq!(turns.next("a"), 2);
        // The current generation is full: "d" starts the next one, and the
        // sessions of the previous one still count on when seen again.
        assert_eq!(turns.next("d"), 1);
        assert_eq!(turns.next("b"), 2);
        assert_eq!(turns.next("a"), 3);
        assert_eq!(turns.len(), 4);
        // "c", not seen since the rotation, is still in the previous one.
        assert_eq!(turns.next("c"), 2);
        // Two more generations of new sessions without "a": forgotten.
        for s in ["e", "f", "g", "h", "i", "j"] {
            assert_eq!(turns.next(s), 1);
        }
        assert_eq!(turns.next("a"), 1);
        assert!(turns.len() <= 6, "{}", turns.len());
    }

    #[test]
    fn backend_usage_stays_the_tokens_of_record_whatever_the_counts() {
        let answer = ANSWER.replace(
            r#""finish_reason":"stop"}]"#,
            r#""finish_reason":"stop"}],"usage":{"prompt_tokens":100,"completion_tokens":50,"total_tokens":150}"#,
        );
        let mut builder = RecordBuilder::new();
        let d = builder.draft(test_exchange("gpt-4o-mini", &answer));
        let counts = estimate_counts(&d);
        let r = finish(d, counts, &prices());
        assert_eq!(r.token_source, TokenSource::Backend);
        assert_eq!(
            (r.prompt_tokens, r.completion_tokens, r.total_tokens),
            (100, 50, 150)
        );
        // Estimates take the backend's own counts: no parsing, no tokenizing.
        assert_eq!(r.verbatim_prompt_tokens, Some(100));
        assert_eq!(r.mutated_prompt_tokens, Some(100));
        assert_eq!(r.verbatim_completion_tokens, Some(50));
        assert_eq!(r.mutated_completion_tokens, Some(50));
        assert_eq!(r.cost_source, CostSource::PricingTable);
        let per_second = r.completion_tokens_per_second.unwrap();
        assert!((per_second - 50.0 / 0.02).abs() < 1e-6, "{per_second}");
        // An unknown model has no price: null, not zero.
        let d = builder.draft(test_exchange("no-such-model-xyz", &answer));
        let counts = estimate_counts(&d);
        let r = finish(d, counts, &prices());
        assert_eq!((r.cost_usd, r.cost_source), (None, CostSource::Unknown));
    }

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
    fn base64_payloads_are_not_estimated_as_text() {
        let text = br#"{"messages":[{"role":"user","content":"abcdefgh"}]}"#;
        let image = format!(
            r#"{{"messages":[{{"role":"user","content":[{{"type":"text","text":"abcdefgh"}},{{"type":"image_url","image_url":{{"url":"data:image/png;base64,{}"}}}}]}}]}}"#,
            "A".repeat(100_000)
        );
        let anthropic = format!(
            r#"{{"messages":[{{"role":"user","content":[{{"type":"image","source":{{"type":"base64","media_type":"image/png","data":"{}"}}}}]}}]}}"#,
            "A".repeat(100_000)
        );
        assert_eq!(estimate_body(text), (text.len() as u64).div_ceil(4));
        assert!(
            estimate_body(image.as_bytes()) < 60,
            "{}",
            estimate_body(image.as_bytes())
        );
        assert!(estimate_body(anthropic.as_bytes()) < 60);
        // An unterminated payload counts as payload to the end, never panics.
        assert_eq!(estimate_body(br#"{"data":"AAAA"#), 3);
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
