//! Response-extraction micro-benchmark: the per-record work of the usage
//! builder that stays on its normal-priority path ([`ResponseAccumulator`]),
//! plus the request-side [`PromptFacts`] (token counting input).
//!
//! ```text
//! cargo run --release -p llm-proxy-usage --example extract_bench -- [--iterations 20000] [--only a]
//! ```
//!
//! `--only X` runs just case X (a–g), e.g. under `perf stat -e instructions`.
//!
//! Prints nanoseconds per response (or request) for: a ~1 KB OpenAI chat
//! JSON body, a 20-event OpenAI chat SSE stream with a final usage chunk, an
//! Anthropic SSE stream (message_start, text deltas, message_delta), a
//! Responses SSE stream, and a ~2 KB OpenAI chat request with tools; then
//! (f, g) the chat JSON body and stream read by the usage builder's
//! `ResponseAccumulator::essentials` (usage and tool names only).
#![expect(clippy::print_stdout, reason = "a benchmark prints its table")]

use std::hint::black_box;
use std::time::Instant;

use llm_proxy_core::Frontend;
use llm_proxy_usage::extract::{PromptFacts, ResponseAccumulator};
use serde_json::{Value, json};

/// The words the fixtures' texts are made of (with escapes: newlines, quotes).
const WORDS: &[&str] = &[
    "The",
    "proxy",
    "forwards",
    "each",
    "request",
    "to",
    "a",
    "healthy",
    "backend,",
    "then",
    "records",
    "usage.\n",
    "It",
    "counts",
    "\"tokens\"",
    "and",
    "prices",
    "them;",
    "cost",
    "is",
    "never",
    "a",
    "silent",
    "zero.",
];

fn words(n: usize, offset: usize) -> String {
    (0..n)
        .map(|i| WORDS[(i + offset) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

fn sse(events: &[(Option<&str>, Value)]) -> Vec<Vec<u8>> {
    events
        .iter()
        .map(|(name, data)| {
            match name {
                Some(name) => format!("event: {name}\ndata: {data}\n\n"),
                None => format!("data: {data}\n\n"),
            }
            .into_bytes()
        })
        .collect()
}

/// (a) A ~1 KB `chat.completion` body.
fn chat_json() -> Vec<Vec<u8>> {
    let body = json!({
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1_741_570_283u64,
        "model": "gpt-4o-2024-08-06",
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": words(110, 0),
                "refusal": null,
                "annotations": []
            },
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": 1117, "completion_tokens": 146, "total_tokens": 1263,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        },
        "service_tier": "default",
        "system_fingerprint": "fp_fc9f1d7035"
    });
    vec![body.to_string().into_bytes()]
}

/// (b) 20 `chat.completion.chunk` events, a final usage chunk and `[DONE]`.
fn chat_sse() -> Vec<Vec<u8>> {
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
            "object": "chat.completion.chunk",
            "created": 1_741_570_283u64,
            "model": "gpt-4o-2024-08-06",
            "service_tier": "default",
            "system_fingerprint": "fp_fc9f1d7035",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            "usage": null
        })
    };
    let mut events = vec![(
        None,
        chunk(
            json!({"role": "assistant", "content": "", "refusal": null}),
            Value::Null,
        ),
    )];
    for i in 0..18 {
        events.push((
            None,
            chunk(json!({"content": words(3, i * 3)}), Value::Null),
        ));
    }
    events.push((None, chunk(json!({}), json!("stop"))));
    events.push((
        None,
        json!({
            "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
            "object": "chat.completion.chunk",
            "created": 1_741_570_283u64,
            "model": "gpt-4o-2024-08-06",
            "choices": [],
            "usage": {"prompt_tokens": 1117, "completion_tokens": 54, "total_tokens": 1171,
                "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}
        }),
    ));
    let mut chunks = sse(&events);
    chunks.push(b"data: [DONE]\n\n".to_vec());
    chunks
}

/// (c) An Anthropic stream: message_start, one text block of 18 deltas,
/// message_delta, message_stop.
fn anthropic_sse() -> Vec<Vec<u8>> {
    let mut events = vec![
        (
            Some("message_start"),
            json!({"type": "message_start", "message": {
                "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
                "content": [], "model": "claude-sonnet-4-5-20250929",
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 472, "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 2048, "output_tokens": 2,
                    "service_tier": "standard"}}}),
        ),
        (
            Some("content_block_start"),
            json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
        ),
        (Some("ping"), json!({"type": "ping"})),
    ];
    for i in 0..18 {
        events.push((
            Some("content_block_delta"),
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": words(3, i * 3)}}),
        ));
    }
    events.push((
        Some("content_block_stop"),
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push((
        Some("message_delta"),
        json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": 54}}),
    ));
    events.push((Some("message_stop"), json!({"type": "message_stop"})));
    sse(&events)
}

/// (d) A Responses stream: created, item added, 18 text deltas, done events, completed.
fn responses_sse() -> Vec<Vec<u8>> {
    let response = |status: &str, output: Value, usage: Value| {
        json!({"id": "resp_67ccd2bed1ec8190b14f964abc054267", "object": "response",
            "created_at": 1_741_476_542u64, "status": status, "error": null,
            "incomplete_details": null, "instructions": null, "model": "gpt-4.1-2025-04-14",
            "output": output, "parallel_tool_calls": true, "reasoning": {"effort": null},
            "store": true, "temperature": 1.0, "text": {"format": {"type": "text"}},
            "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled",
            "usage": usage, "metadata": {}})
    };
    let text = words(54, 0);
    let item = json!({"id": "msg_67ccd2bf17f0819081ff3bb2cf6508e6", "type": "message",
        "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]});
    let mut events = vec![
        (
            Some("response.created"),
            json!({"type": "response.created", "sequence_number": 0,
                "response": response("in_progress", json!([]), Value::Null)}),
        ),
        (
            Some("response.output_item.added"),
            json!({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0,
                "item": {"id": "msg_67ccd2bf17f0819081ff3bb2cf6508e6", "type": "message",
                    "status": "in_progress", "role": "assistant", "content": []}}),
        ),
    ];
    for i in 0..18 {
        events.push((
            Some("response.output_text.delta"),
            json!({"type": "response.output_text.delta", "sequence_number": i + 2,
                "item_id": "msg_67ccd2bf17f0819081ff3bb2cf6508e6", "output_index": 0,
                "content_index": 0, "delta": words(3, i * 3)}),
        ));
    }
    events.push((
        Some("response.output_text.done"),
        json!({"type": "response.output_text.done", "sequence_number": 20,
            "item_id": "msg_67ccd2bf17f0819081ff3bb2cf6508e6", "output_index": 0,
            "content_index": 0, "text": text}),
    ));
    events.push((
        Some("response.output_item.done"),
        json!({"type": "response.output_item.done", "sequence_number": 21, "output_index": 0,
            "item": item}),
    ));
    events.push((
        Some("response.completed"),
        json!({"type": "response.completed", "sequence_number": 22,
            "response": response("completed", json!([item]), json!({
                "input_tokens": 1117, "input_tokens_details": {"cached_tokens": 1024},
                "output_tokens": 54, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 1171}))}),
    ));
    sse(&events)
}

/// (e) A ~2 KB chat request: system, three turns, one tool.
fn chat_request() -> Vec<u8> {
    json!({
        "model": "gpt-4o",
        "stream": true,
        "messages": [
            {"role": "system", "content": words(40, 1)},
            {"role": "user", "content": words(60, 2)},
            {"role": "assistant", "content": words(80, 3)},
            {"role": "user", "content": [{"type": "text", "text": words(50, 4)}]}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city"]}}}],
        "temperature": 0.2
    })
    .to_string()
    .into_bytes()
}

fn run_response(label: &str, protocol: Frontend, is_sse: bool, chunks: &[Vec<u8>], n: usize) {
    run_reading(label, protocol, is_sse, false, chunks, n);
}

/// Times the full reading, or with `essentials` the usage builder's
/// [`ResponseAccumulator::essentials`] (usage and tool names only).
fn run_reading(
    label: &str,
    protocol: Frontend,
    is_sse: bool,
    essentials: bool,
    chunks: &[Vec<u8>],
    n: usize,
) {
    if n == 0 {
        return;
    }
    let bytes: usize = chunks.iter().map(Vec::len).sum();
    let once = |chunks: &[Vec<u8>]| {
        let mut acc = if essentials {
            ResponseAccumulator::essentials(protocol, is_sse)
        } else {
            ResponseAccumulator::new(protocol, is_sse)
        };
        for chunk in chunks {
            acc.push(black_box(chunk));
        }
        acc.finish()
    };
    let facts = once(chunks);
    assert!(
        facts.usage.is_some() && (essentials || !facts.text.is_empty()),
        "{label}: {facts:?}"
    );
    for _ in 0..n / 10 {
        black_box(once(chunks));
    }
    let start = Instant::now();
    for _ in 0..n {
        black_box(once(chunks));
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "{label:<34} {:>3} chunks {bytes:>6} B  {ns:>9.0} ns/response",
        chunks.len()
    );
}

fn main() {
    let mut iterations = 20_000;
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--iterations" => {
                if let Some(value) = args.next().and_then(|v| v.parse().ok()) {
                    iterations = value;
                }
            }
            "--only" => only = args.next(),
            _ => {}
        }
    }
    let n_for = |case: &str| match &only {
        Some(only) if only != case => 0,
        _ => iterations,
    };
    run_response(
        "(a) openai chat JSON",
        Frontend::OpenAiChat,
        false,
        &chat_json(),
        n_for("a"),
    );
    run_response(
        "(b) openai chat SSE (20 + usage)",
        Frontend::OpenAiChat,
        true,
        &chat_sse(),
        n_for("b"),
    );
    run_response(
        "(c) anthropic SSE",
        Frontend::AnthropicMessages,
        true,
        &anthropic_sse(),
        n_for("c"),
    );
    run_response(
        "(d) responses SSE",
        Frontend::OpenAiResponses,
        true,
        &responses_sse(),
        n_for("d"),
    );
    run_reading(
        "(f) openai chat JSON, essentials",
        Frontend::OpenAiChat,
        false,
        true,
        &chat_json(),
        n_for("f"),
    );
    run_reading(
        "(g) openai chat SSE, essentials",
        Frontend::OpenAiChat,
        true,
        true,
        &chat_sse(),
        n_for("g"),
    );
    let n = n_for("e");
    if n == 0 {
        return;
    }
    let request = chat_request();
    let facts = PromptFacts::from_body(Frontend::OpenAiChat, &request);
    assert!(facts.message_count == 4, "{facts:?}");
    let start = Instant::now();
    for _ in 0..n {
        black_box(PromptFacts::from_body(
            Frontend::OpenAiChat,
            black_box(&request),
        ));
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "{:<34} {:>3} chunks {:>6} B  {ns:>9.0} ns/request",
        "(e) PromptFacts chat request",
        1,
        request.len()
    );
}
