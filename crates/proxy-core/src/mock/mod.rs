//! The deterministic mock model: answers a parsed request body in any of the
//! three front-end protocols, with no I/O. It backs the in-process `mock`
//! backend type and the testkit / `mock-llm` upstream server.
//!
//! # Knobs
//!
//! Per-request knobs come from headers and from a suffix on the model name;
//! a header wins over the suffix, and both win over server-wide defaults
//! ([`MockOptions::from_request_with_defaults`]).
//!
//! | header | values | effect |
//! |---|---|---|
//! | `x-mock-fault` | `429`, `500`, `503`, any status `400..=599`, `reset`, `malformed`, `hang` | see [`MockFault`] |
//! | `x-mock-first-token-delay-ms` | `N` (u64) | wait before the first byte of the response |
//! | `x-mock-inter-chunk-delay-ms` | `N` (u64) | wait between SSE events |
//! | `x-mock-chunks` | `N` (≥ 1) | number of content deltas in a stream (default [`DEFAULT_CHUNK_COUNT`]) |
//!
//! Model suffix: `<model>+fault-<fault>` with the same fault names, e.g.
//! `gpt-4o+fault-503`, `echo+fault-reset`, `mock+fault-hang`. The suffix is
//! stripped ([`strip_fault_suffix`]) before the model name is used or echoed.
//! A bad header value or an unknown suffix fault is a [`MockError`] (a server
//! answers 400).
//!
//! # Answers
//!
//! Streaming is selected by `"stream": true` in the body. The answer is one of:
//!
//! * **Tool call** — when the request declares tools (OpenAI chat
//!   `tools[].function.name`; Anthropic `tools[].name`; Responses `tools[]`
//!   with `type: "function"`) and the last message is a user message that is
//!   not a tool result: the mock calls the *first* tool with arguments
//!   `{"query":"<last user text>"}` (compact JSON, as `serde_json` writes it).
//!   Finish reason `tool_calls` (OpenAI chat), stop reason `tool_use`
//!   (Anthropic), a `function_call` output item (Responses).
//! * **Tool result acknowledgement** — when the last message is a tool result
//!   (OpenAI role `tool`; Anthropic user message with a `tool_result` block;
//!   Responses `function_call_output` item): text
//!   `Tool result received: <tool result text>`.
//! * **Text** — model `echo` answers the last user message's text; any other
//!   model answers [`DEFAULT_ANSWER`].
//!
//! "Text" of a content value: a string is itself; an array contributes each
//! part's `text` string, the nested `content` of `tool_result` blocks, and the
//! `output` of `function_call_output` items, joined with single spaces.
//!
//! In a stream the answer text is split into exactly `chunk_count` deltas
//! ([`split_even`]: piece `i` is chars `[i*L/n, (i+1)*L/n)`, so short texts give
//! some empty deltas); their concatenation is the JSON answer's text. Tool
//! arguments are streamed in `max(chunk_count, 2)` pieces the same way.
//!
//! # Usage
//!
//! * `prompt_tokens` / `input_tokens` = [`count_words`] (whitespace-separated
//!   words) summed over all text of the request: OpenAI chat `messages[].content`;
//!   Anthropic `system` + `messages[].content`; Responses `instructions` +
//!   `input`. Tool definitions, names and call arguments count 0.
//! * `completion_tokens` / `output_tokens` = words of the answer text, or
//!   `max(1, words of the arguments JSON)` for a tool call.
//! * total = prompt + completion. [`usage_for`] computes all three.
//!
//! # Determinism
//!
//! Ids are derived from an FNV-1a hash of the protocol and the request body
//! (minus `stream` / `stream_options`, so JSON and stream answers share ids)
//! (`chatcmpl-mock<hex>`, `msg_mock<hex>`, `resp_mock<hex>`, `call_mock<hex>`,
//! `toolu_mock<hex>`, `fc_mock<hex>`); timestamps are [`MOCK_CREATED_AT`].
//! The same request gives the same bytes.
//!
//! # Faults
//!
//! [`reply`] renders `Status(n)` (the protocol's error body, see
//! [`Frontend::error_body`]) and `MalformedJson` (a truncated JSON body, or for
//! a stream one valid event followed by an event whose data is truncated JSON).
//! `ResetMidStream` and `NeverAnswer` live in the transport: `reply` renders the
//! normal answer and the caller sends the first [`reset_point`] events then
//! aborts (JSON: the head, then abort before the body), or never answers.

mod answer;
mod anthropic;
mod conversation;
mod openai_chat;
mod options;
mod responses;

use bytes::Bytes;

use crate::Frontend;

pub use answer::{count_words, split_even};
pub use conversation::Usage;
pub use options::{MockFault, MockOptions, strip_fault_suffix};

/// The fixed sentence answered by every model except `echo`.
pub const DEFAULT_ANSWER: &str = "This is a deterministic answer from the llm-proxy mock model.";

/// The number of content deltas in a stream when no knob sets it.
pub const DEFAULT_CHUNK_COUNT: usize = 5;

/// The `created` / `created_at` timestamp of every mock reply (epoch seconds).
pub const MOCK_CREATED_AT: u64 = 1_700_000_000;

/// Model ids the mock advertises in a models list (any name is accepted).
pub const MOCK_MODELS: &[&str] = &["mock", "echo"];

/// Header that selects a fault.
pub const HEADER_FAULT: &str = "x-mock-fault";
/// Header that sets the delay before the first byte, in milliseconds.
pub const HEADER_FIRST_TOKEN_DELAY_MS: &str = "x-mock-first-token-delay-ms";
/// Header that sets the delay between SSE events, in milliseconds.
pub const HEADER_INTER_CHUNK_DELAY_MS: &str = "x-mock-inter-chunk-delay-ms";
/// Header that sets the number of content deltas in a stream.
pub const HEADER_CHUNKS: &str = "x-mock-chunks";

/// Why the mock refuses a request (a server answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MockError {
    /// A `x-mock-*` header has a value the mock does not understand.
    #[error("invalid value {value:?} for header {header}: {reason}")]
    InvalidHeader {
        /// The header name.
        header: &'static str,
        /// The offending value (lossy UTF-8).
        value: String,
        /// What was expected.
        reason: &'static str,
    },
    /// The `+fault-<name>` model suffix names no known fault.
    #[error("invalid fault suffix in model {model:?}: {reason}")]
    InvalidModelSuffix {
        /// The full model name.
        model: String,
        /// What was expected.
        reason: &'static str,
    },
    /// The request body lacks something the mock needs.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl MockError {
    /// The HTTP status a server answers for this error.
    pub fn status(&self) -> u16 {
        400
    }
}

/// What the mock answers: a status and either one JSON body or a list of SSE event frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MockReply {
    /// One JSON body (`application/json`) with this status.
    Json {
        /// HTTP status.
        status: u16,
        /// The complete body.
        body: Bytes,
    },
    /// A `200 text/event-stream` response; each item is one complete SSE frame ending in `\n\n`.
    Stream {
        /// The SSE frames in order.
        events: Vec<Bytes>,
    },
}

impl MockReply {
    /// The HTTP status of this reply.
    pub fn status(&self) -> u16 {
        match self {
            MockReply::Json { status, .. } => *status,
            MockReply::Stream { .. } => 200,
        }
    }

    /// The `content-type` header value of this reply.
    pub fn content_type(&self) -> &'static str {
        match self {
            MockReply::Json { .. } => "application/json",
            MockReply::Stream { .. } => "text/event-stream",
        }
    }
}

/// How many events of a stream of `event_count` events are sent before a
/// `ResetMidStream` fault aborts the connection (about half, at least one).
pub fn reset_point(event_count: usize) -> usize {
    (event_count / 2).max(1).min(event_count)
}

/// Answers a parsed request body in the given protocol. Deterministic: the same
/// input gives the same bytes. See the module docs for the conventions.
pub fn reply(
    frontend: Frontend,
    request: &serde_json::Value,
    options: &MockOptions,
) -> Result<MockReply, MockError> {
    let conversation = conversation::Conversation::parse(frontend, request)?;
    if let Some(MockFault::Status(status)) = options.fault {
        let message = format!("mock fault: upstream answered {status}");
        return Ok(MockReply::Json {
            status,
            body: frontend.error_body(status, &message),
        });
    }
    let answer = answer::Answer::for_conversation(&conversation);
    let ids = answer::Ids::new(frontend, request);
    let chunk_count = options.chunk_count.unwrap_or(DEFAULT_CHUNK_COUNT).max(1);
    let render = answer::Render {
        conversation: &conversation,
        answer: &answer,
        ids: &ids,
        chunk_count,
    };
    let reply = if conversation.stream {
        MockReply::Stream {
            events: match frontend {
                Frontend::OpenAiChat => openai_chat::stream(&render),
                Frontend::AnthropicMessages => anthropic::stream(&render),
                Frontend::OpenAiResponses => responses::stream(&render),
            },
        }
    } else {
        MockReply::Json {
            status: 200,
            body: match frontend {
                Frontend::OpenAiChat => openai_chat::json(&render),
                Frontend::AnthropicMessages => anthropic::json(&render),
                Frontend::OpenAiResponses => responses::json(&render),
            },
        }
    };
    if options.fault == Some(MockFault::MalformedJson) {
        return Ok(malformed(reply));
    }
    Ok(reply)
}

/// The usage numbers the mock reports for `request` in `frontend`'s protocol.
pub fn usage_for(frontend: Frontend, request: &serde_json::Value) -> Result<Usage, MockError> {
    let conversation = conversation::Conversation::parse(frontend, request)?;
    let answer = answer::Answer::for_conversation(&conversation);
    Ok(answer.usage(&conversation))
}

/// Turns a good reply into its `MalformedJson` variant.
fn malformed(reply: MockReply) -> MockReply {
    match reply {
        MockReply::Json { status, body } => MockReply::Json {
            status,
            body: body.slice(..body.len() / 2),
        },
        MockReply::Stream { events } => {
            let mut out = Vec::with_capacity(2);
            out.extend(events.first().cloned());
            if let Some(next) = events.get(1).or(events.first()) {
                out.push(truncate_event_data(next));
            }
            MockReply::Stream { events: out }
        }
    }
}

/// The same SSE frame with each `data:` payload cut to half its length.
fn truncate_event_data(event: &Bytes) -> Bytes {
    let text = String::from_utf8_lossy(event);
    let mut out = String::with_capacity(text.len());
    for line in text.trim_end_matches('\n').split('\n') {
        match line.strip_prefix("data: ") {
            Some(data) => {
                let cut = data.floor_char_boundary(data.len() / 2);
                out.push_str("data: ");
                out.push_str(&data[..cut]);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn opts() -> MockOptions {
        MockOptions::default()
    }

    fn json_body(reply: &MockReply) -> Value {
        match reply {
            MockReply::Json { body, .. } => serde_json::from_slice(body).unwrap(),
            MockReply::Stream { .. } => panic!("expected JSON"),
        }
    }

    #[test]
    fn status_fault_renders_protocol_error() {
        let options = MockOptions {
            fault: Some(MockFault::Status(429)),
            ..opts()
        };
        let req = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let r = reply(Frontend::AnthropicMessages, &req, &options).unwrap();
        assert_eq!(r.status(), 429);
        let v = json_body(&r);
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        let r = reply(Frontend::OpenAiChat, &req, &options).unwrap();
        assert_eq!(json_body(&r)["error"]["code"], "rate_limit_exceeded");
    }

    #[test]
    fn malformed_json_is_invalid() {
        let options = MockOptions {
            fault: Some(MockFault::MalformedJson),
            ..opts()
        };
        let req = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let MockReply::Json { status, body } = reply(Frontend::OpenAiChat, &req, &options).unwrap()
        else {
            panic!("expected JSON")
        };
        assert_eq!(status, 200);
        assert!(serde_json::from_slice::<Value>(&body).is_err());

        let req =
            json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        let MockReply::Stream { events } = reply(Frontend::OpenAiChat, &req, &options).unwrap()
        else {
            panic!("expected stream")
        };
        assert_eq!(events.len(), 2);
        let last = std::str::from_utf8(&events[1]).unwrap();
        let data = last.trim_end().strip_prefix("data: ").unwrap();
        assert!(serde_json::from_str::<Value>(data).is_err());
    }

    #[test]
    fn same_request_same_bytes_and_different_requests_different_ids() {
        let a = json!({"model": "m", "messages": [{"role": "user", "content": "one"}]});
        let b = json!({"model": "m", "messages": [{"role": "user", "content": "two"}]});
        for frontend in [
            Frontend::OpenAiChat,
            Frontend::AnthropicMessages,
            Frontend::OpenAiResponses,
        ] {
            let a = if frontend == Frontend::OpenAiResponses {
                json!({"model": "m", "input": "one"})
            } else {
                a.clone()
            };
            assert_eq!(
                reply(frontend, &a, &opts()).unwrap(),
                reply(frontend, &a, &opts()).unwrap()
            );
            let ida = json_body(&reply(frontend, &a, &opts()).unwrap())["id"].clone();
            let idb = json_body(&reply(frontend, &b, &opts()).unwrap())["id"].clone();
            assert_ne!(ida, idb);
        }
    }

    #[test]
    fn usage_for_matches_reply() {
        let req = json!({"model": "echo", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there world"}]});
        let u = usage_for(Frontend::OpenAiChat, &req).unwrap();
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 5,
                completion_tokens: 3,
                total_tokens: 8
            }
        );
        let v = json_body(&reply(Frontend::OpenAiChat, &req, &opts()).unwrap());
        assert_eq!(v["usage"]["prompt_tokens"], 5);
        assert_eq!(v["usage"]["completion_tokens"], 3);
        assert_eq!(v["usage"]["total_tokens"], 8);
    }

    #[test]
    fn missing_model_is_an_error() {
        let err = reply(Frontend::OpenAiChat, &json!({"messages": []}), &opts()).unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(reply(Frontend::OpenAiChat, &json!([1]), &opts()).is_err());
    }

    #[test]
    fn reset_point_is_about_half() {
        assert_eq!(reset_point(10), 5);
        assert_eq!(reset_point(1), 1);
        assert_eq!(reset_point(0), 0);
    }
}
