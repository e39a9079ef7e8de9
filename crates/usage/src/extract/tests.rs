//! Fixture and mock-model tests of response and prompt extraction.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use bytes::Bytes;
use llm_proxy_core::Frontend;
use llm_proxy_core::mock::{MockOptions, MockReply, reply, usage_for};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::record::BackendUsage;

const ALL: [Frontend; 3] = [
    Frontend::OpenAiChat,
    Frontend::AnthropicMessages,
    Frontend::OpenAiResponses,
];

/// Feeds `body` in pieces of `size` bytes (and checks the essentials
/// reading against the full one).
fn feed(protocol: Frontend, is_sse: bool, body: &[u8], size: usize) -> ResponseFacts {
    let mut acc = ResponseAccumulator::new(protocol, is_sse);
    for chunk in body.chunks(size.max(1)) {
        acc.push(chunk);
    }
    let full = acc.finish();
    check_essentials(protocol, is_sse, body, size, &full);
    full
}

/// `ResponseAccumulator::essentials` finds the same usage and tool names as
/// the full reading.
fn check_essentials(
    protocol: Frontend,
    is_sse: bool,
    body: &[u8],
    size: usize,
    full: &ResponseFacts,
) {
    let mut acc = ResponseAccumulator::essentials(protocol, is_sse);
    for chunk in body.chunks(size.max(1)) {
        acc.push(chunk);
    }
    let essentials = acc.finish();
    let names = |f: &ResponseFacts| {
        f.tool_calls
            .iter()
            .map(|t| t.name.clone())
            .collect::<Vec<_>>()
    };
    let shown = || String::from_utf8_lossy(body).into_owned();
    assert_eq!(essentials.usage, full.usage, "usage of {}", shown());
    assert_eq!(names(&essentials), names(full), "tool names of {}", shown());
    // The builder's entry point: a body in one chunk is read where it lies.
    let chunks: Vec<Bytes> = body
        .chunks(size.max(1))
        .map(Bytes::copy_from_slice)
        .collect();
    for pieces in [&chunks[..], &[Bytes::copy_from_slice(body)][..]] {
        let of = essentials_of(protocol, is_sse, pieces);
        assert_eq!(of.usage, full.usage, "essentials_of: usage of {}", shown());
        assert_eq!(
            names(&of),
            names(full),
            "essentials_of: tool names of {}",
            shown()
        );
    }
}

/// Facts of a whole JSON body, the essentials reading checked too.
fn json_facts(protocol: Frontend, body: &[u8]) -> ResponseFacts {
    feed(protocol, false, body, body.len())
}

/// Facts of a whole stream, the essentials reading checked too.
fn whole_sse_facts(protocol: Frontend, stream: &[u8]) -> ResponseFacts {
    feed(protocol, true, stream, stream.len())
}

/// The same facts whatever the chunk size (1 byte, odd sizes, whole).
fn sse_facts(protocol: Frontend, stream: &str) -> ResponseFacts {
    let whole = whole_sse_facts(protocol, stream.as_bytes());
    for size in [1, 2, 3, 7, 64] {
        assert_eq!(
            feed(protocol, true, stream.as_bytes(), size),
            whole,
            "chunk size {size}"
        );
    }
    whole
}

fn tool(name: &str, arguments: &str) -> ToolCall {
    ToolCall {
        name: name.to_owned(),
        arguments: arguments.to_owned(),
    }
}

fn sse(events: &[(Option<&str>, Value)]) -> String {
    events
        .iter()
        .map(|(name, data)| match name {
            Some(name) => format!("event: {name}\ndata: {data}\n\n"),
            None => format!("data: {data}\n\n"),
        })
        .collect()
}

// ---------------------------------------------------------------- OpenAI chat

#[test]
fn openai_chat_json_with_cached_and_reasoning_tokens() {
    let body = json!({
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1741570283,
        "model": "o3-mini-2025-01-31",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "The capital of France is Paris.",
                        "refusal": null, "annotations": []},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
            "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 256, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        },
        "service_tier": "default",
        "system_fingerprint": "fp_42bfad963b"
    });
    let facts = json_facts(Frontend::OpenAiChat, body.to_string().as_bytes());
    assert_eq!(
        facts,
        ResponseFacts {
            usage: Some(BackendUsage {
                prompt_tokens: Some(2006),
                completion_tokens: Some(300),
                total_tokens: Some(2306),
                cached_tokens: Some(1920),
                cache_creation_tokens: None,
                reasoning_tokens: Some(256),
                cost: None,
            }),
            text: "The capital of France is Paris.".to_owned(),
            finish_reason: Some("stop".to_owned()),
            model: Some("o3-mini-2025-01-31".to_owned()),
            ..ResponseFacts::default()
        }
    );
}

#[test]
fn openrouter_json_with_cost_reasoning_and_tool_calls() {
    let body = json!({
        "id": "gen-1747000000-abc", "provider": "Anthropic", "model": "anthropic/claude-sonnet-4",
        "object": "chat.completion", "created": 1747000000,
        "choices": [{
            "logprobs": null, "finish_reason": "tool_calls", "native_finish_reason": "tool_use",
            "index": 0,
            "message": {
                "role": "assistant", "content": "Let me check both.", "refusal": null,
                "reasoning": "User wants weather for two cities.",
                "tool_calls": [
                    {"id": "toolu_01", "index": 0, "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "toolu_02", "index": 1, "type": "function",
                     "function": {"name": "get_time", "arguments": "{\"tz\":\"Europe/Paris\"}"}}
                ]
            }
        }],
        "usage": {"prompt_tokens": 1543, "completion_tokens": 98, "total_tokens": 1641,
                  "cost": 0.006099, "is_byok": false,
                  "prompt_tokens_details": {"cached_tokens": 1024},
                  "completion_tokens_details": {"reasoning_tokens": 12}}
    });
    let facts = json_facts(Frontend::OpenAiChat, body.to_string().as_bytes());
    let usage = facts.usage.clone().unwrap();
    assert_eq!(usage.cost, Some(0.006099));
    assert_eq!(usage.cached_tokens, Some(1024));
    assert_eq!(usage.reasoning_tokens, Some(12));
    assert_eq!(facts.text, "Let me check both.");
    assert_eq!(facts.reasoning, "User wants weather for two cities.");
    assert_eq!(
        facts.tool_calls,
        vec![
            tool("get_weather", "{\"city\":\"Paris\"}"),
            tool("get_time", "{\"tz\":\"Europe/Paris\"}")
        ]
    );
    assert_eq!(facts.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(facts.model.as_deref(), Some("anthropic/claude-sonnet-4"));
}

fn chat_chunk(delta: Value, finish: Option<&str>) -> (Option<&'static str>, Value) {
    (
        None,
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
               "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_1",
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
               "usage": null}),
    )
}

#[test]
fn openai_chat_stream_text_and_usage_chunk() {
    let mut events = vec![
        chat_chunk(
            json!({"role": "assistant", "content": "", "refusal": null}),
            None,
        ),
        chat_chunk(json!({"content": "Hello"}), None),
        chat_chunk(json!({"content": " wörld 😀"}), None),
        chat_chunk(json!({}), Some("stop")),
    ];
    events.push((
        None,
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
               "model": "gpt-4o-2024-08-06", "choices": [],
               "usage": {"prompt_tokens": 1200, "completion_tokens": 4, "total_tokens": 1204,
                         "prompt_tokens_details": {"cached_tokens": 1152, "audio_tokens": 0},
                         "completion_tokens_details": {"reasoning_tokens": 0}}}),
    ));
    let mut stream = sse(&events);
    stream.push_str("data: [DONE]\n\n");
    let facts = sse_facts(Frontend::OpenAiChat, &stream);
    assert_eq!(facts.text, "Hello wörld 😀");
    assert_eq!(facts.finish_reason.as_deref(), Some("stop"));
    assert_eq!(facts.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(
        facts.usage,
        Some(BackendUsage {
            prompt_tokens: Some(1200),
            completion_tokens: Some(4),
            total_tokens: Some(1204),
            cached_tokens: Some(1152),
            cache_creation_tokens: None,
            reasoning_tokens: Some(0),
            cost: None,
        })
    );
    // CRLF line ends give the same facts.
    assert_eq!(
        sse_facts(Frontend::OpenAiChat, &stream.replace('\n', "\r\n")),
        facts
    );
}

#[test]
fn openai_chat_stream_interleaved_parallel_tool_calls() {
    let call = |index: u64, id: Option<&str>, name: Option<&str>, args: &str| {
        let mut function = json!({"arguments": args});
        if let Some(name) = name {
            function["name"] = json!(name);
        }
        let mut call = json!({"index": index, "function": function});
        if let Some(id) = id {
            call["id"] = json!(id);
            call["type"] = json!("function");
        }
        call
    };
    let events = vec![
        chat_chunk(json!({"role": "assistant", "content": null}), None),
        chat_chunk(
            json!({"tool_calls": [call(0, Some("call_a"), Some("get_weather"), "")]}),
            None,
        ),
        chat_chunk(json!({"tool_calls": [call(0, None, None, "{\"ci")]}), None),
        chat_chunk(
            json!({"tool_calls": [call(1, Some("call_b"), Some("get_time"), "")]}),
            None,
        ),
        chat_chunk(
            json!({"tool_calls": [call(1, None, None, "{\"tz\":")]}),
            None,
        ),
        chat_chunk(
            json!({"tool_calls": [call(0, None, None, "ty\": \"Par")]}),
            None,
        ),
        // Two pieces in one chunk.
        chat_chunk(
            json!({"tool_calls": [call(1, None, None, "\"UTC\"}"), call(0, None, None, "is\"}")]}),
            None,
        ),
        chat_chunk(json!({}), Some("tool_calls")),
    ];
    let mut stream = sse(&events);
    stream.push_str("data: [DONE]\n\n");
    let facts = sse_facts(Frontend::OpenAiChat, &stream);
    assert_eq!(
        facts.tool_calls,
        vec![
            tool("get_weather", "{\"city\": \"Paris\"}"),
            tool("get_time", "{\"tz\":\"UTC\"}")
        ]
    );
    assert_eq!(facts.text, "");
    assert_eq!(facts.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(facts.usage, None);
}

#[test]
fn openai_chat_stream_tool_calls_without_index() {
    // Some OpenAI-compatible servers omit `index` and repeat the name.
    let stream = sse(&[
        chat_chunk(
            json!({"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{\"x\":"}}]}),
            None,
        ),
        chat_chunk(
            json!({"tool_calls": [{"function": {"name": "f", "arguments": "1}"}}]}),
            None,
        ),
        chat_chunk(
            json!({"tool_calls": [{"id": "b", "function": {"name": "g", "arguments": "{}"}}]}),
            None,
        ),
        chat_chunk(json!({"reasoning_content": "hmm"}), Some("tool_calls")),
    ]);
    let facts = sse_facts(Frontend::OpenAiChat, &stream);
    assert_eq!(
        facts.tool_calls,
        vec![tool("f", "{\"x\":1}"), tool("g", "{}")]
    );
    assert_eq!(facts.reasoning, "hmm");
}

#[test]
fn openai_chat_errors_json_and_stream() {
    let body = json!({"error": {"message": "Rate limit reached for gpt-4o", "type": "requests",
                                "param": null, "code": "rate_limit_exceeded"}});
    let facts = json_facts(Frontend::OpenAiChat, body.to_string().as_bytes());
    assert_eq!(
        facts.error.as_deref(),
        Some("rate_limit_exceeded: Rate limit reached for gpt-4o")
    );
    assert_eq!(facts.usage, None);

    let mut stream = sse(&[chat_chunk(json!({"content": "Hel"}), None)]);
    stream.push_str(&String::from_utf8_lossy(
        &Frontend::OpenAiChat.stream_error_event(502, "upstream connection reset"),
    ));
    let facts = sse_facts(Frontend::OpenAiChat, &stream);
    assert_eq!(facts.text, "Hel");
    assert!(
        facts
            .error
            .as_deref()
            .unwrap()
            .ends_with("upstream connection reset"),
        "{:?}",
        facts.error
    );
}

#[test]
fn openai_chat_multiple_choices() {
    let body = json!({"model": "gpt-4o", "choices": [
        {"index": 1, "message": {"role": "assistant", "content": "B"}, "finish_reason": "length"},
        {"index": 0, "message": {"role": "assistant", "content": [{"type": "text", "text": "A"}]},
         "finish_reason": "stop"}]});
    let facts = json_facts(Frontend::OpenAiChat, body.to_string().as_bytes());
    assert_eq!(facts.text, "A\nB");
    assert_eq!(facts.finish_reason.as_deref(), Some("stop"));
}

// ------------------------------------------------------------------ Anthropic

#[test]
fn anthropic_json_with_cache_thinking_and_tool_use() {
    let body = json!({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-20250514",
        "content": [
            {"type": "thinking", "thinking": "The user wants the weather.", "signature": "EqQB..."},
            {"type": "text", "text": "I'll check the weather."},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
             "input": {"location": "San Francisco, CA", "unit": "celsius"}}
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 21, "cache_creation_input_tokens": 188,
                  "cache_read_input_tokens": 2048, "output_tokens": 393,
                  "service_tier": "standard",
                  "cache_creation": {"ephemeral_5m_input_tokens": 188, "ephemeral_1h_input_tokens": 0}}
    });
    let facts = json_facts(Frontend::AnthropicMessages, body.to_string().as_bytes());
    assert_eq!(
        facts,
        ResponseFacts {
            usage: Some(BackendUsage {
                prompt_tokens: Some(2257),
                completion_tokens: Some(393),
                total_tokens: Some(2650),
                cached_tokens: Some(2048),
                cache_creation_tokens: Some(188),
                reasoning_tokens: None,
                cost: None,
            }),
            text: "I'll check the weather.".to_owned(),
            reasoning: "The user wants the weather.".to_owned(),
            tool_calls: vec![tool(
                "get_weather",
                "{\"location\":\"San Francisco, CA\",\"unit\":\"celsius\"}"
            )],
            finish_reason: Some("tool_use".to_owned()),
            error: None,
            model: Some("claude-sonnet-4-20250514".to_owned()),
        }
    );
}

#[test]
fn anthropic_stream_thinking_text_and_tool_use() {
    let ev = |name: &'static str, data: Value| (Some(name), data);
    let stream = sse(&[
        ev(
            "message_start",
            json!({"type": "message_start", "message": {
            "id": "msg_014p7gG3wDgGV9EUtLvnow3U", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-20250514", "content": [], "stop_reason": null,
            "stop_sequence": null,
            "usage": {"input_tokens": 472, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 2048, "output_tokens": 2,
                      "service_tier": "standard"}}}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "Need the "}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "weather tool."}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM"}}),
        ),
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        ev("ping", json!({"type": "ping"})),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "text", "text": ""}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1,
            "delta": {"type": "text_delta", "text": "Okay, let's check "}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1,
            "delta": {"type": "text_delta", "text": "the weather."}}),
        ),
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 2,
            "content_block": {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                              "name": "get_weather", "input": {}}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": ""}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": "{\"location\":"}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": " \"San Francisco, CA\"}"}}),
        ),
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 2}),
        ),
        ev(
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": null},
            "usage": {"output_tokens": 89}}),
        ),
        ev("message_stop", json!({"type": "message_stop"})),
    ]);
    let facts = sse_facts(Frontend::AnthropicMessages, &stream);
    assert_eq!(facts.text, "Okay, let's check the weather.");
    assert_eq!(facts.reasoning, "Need the weather tool.");
    assert_eq!(
        facts.tool_calls,
        vec![tool("get_weather", "{\"location\": \"San Francisco, CA\"}")]
    );
    assert_eq!(facts.finish_reason.as_deref(), Some("tool_use"));
    assert_eq!(facts.model.as_deref(), Some("claude-sonnet-4-20250514"));
    assert_eq!(
        facts.usage,
        Some(BackendUsage {
            prompt_tokens: Some(472 + 2048),
            completion_tokens: Some(89),
            total_tokens: Some(472 + 2048 + 89),
            cached_tokens: Some(2048),
            cache_creation_tokens: Some(0),
            reasoning_tokens: None,
            cost: None,
        })
    );
}

#[test]
fn anthropic_message_delta_may_carry_input_and_cache_fields() {
    let stream = sse(&[
        (
            Some("message_start"),
            json!({"type": "message_start", "message": {
            "model": "claude-3-5-haiku-20241022", "content": [],
            "usage": {"input_tokens": 0, "output_tokens": 1}}}),
        ),
        (
            Some("message_delta"),
            json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"input_tokens": 50, "cache_creation_input_tokens": 1000,
                      "cache_read_input_tokens": null, "output_tokens": 12}}),
        ),
    ]);
    let usage = sse_facts(Frontend::AnthropicMessages, &stream)
        .usage
        .unwrap();
    assert_eq!(usage.prompt_tokens, Some(1050));
    assert_eq!(usage.completion_tokens, Some(12));
    assert_eq!(usage.total_tokens, Some(1062));
    assert_eq!(usage.cache_creation_tokens, Some(1000));
    assert_eq!(usage.cached_tokens, None);
}

#[test]
fn anthropic_errors_json_and_stream() {
    let body = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
                      "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"});
    let facts = json_facts(Frontend::AnthropicMessages, body.to_string().as_bytes());
    assert_eq!(facts.error.as_deref(), Some("overloaded_error: Overloaded"));

    let stream = format!(
        "{}event: error\ndata: {}\n\n",
        sse(&[(
            Some("message_start"),
            json!({"type": "message_start",
            "message": {"model": "claude-opus-4-1", "usage": {"input_tokens": 9, "output_tokens": 1}}})
        )]),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
    let facts = sse_facts(Frontend::AnthropicMessages, &stream);
    assert_eq!(facts.error.as_deref(), Some("overloaded_error: Overloaded"));
    assert_eq!(facts.usage.unwrap().prompt_tokens, Some(9));

    let facts = sse_facts(
        Frontend::AnthropicMessages,
        "event: error\ndata: not json\n\n",
    );
    assert_eq!(facts.error.as_deref(), Some("not json"));
}

// ------------------------------------------------------------------ Responses

#[test]
fn responses_json_with_reasoning_and_cached_tokens() {
    let body = json!({
        "id": "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41", "object": "response",
        "created_at": 1741476777, "status": "completed", "error": null,
        "incomplete_details": null, "model": "o4-mini-2025-04-16",
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": [
                {"type": "summary_text", "text": "Thinking about the question."}]},
            {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": "Paris is the capital.", "annotations": []}]}
        ],
        "usage": {"input_tokens": 1300, "input_tokens_details": {"cached_tokens": 1280},
                  "output_tokens": 520, "output_tokens_details": {"reasoning_tokens": 448},
                  "total_tokens": 1820}
    });
    let facts = json_facts(Frontend::OpenAiResponses, body.to_string().as_bytes());
    assert_eq!(
        facts,
        ResponseFacts {
            usage: Some(BackendUsage {
                prompt_tokens: Some(1300),
                completion_tokens: Some(520),
                total_tokens: Some(1820),
                cached_tokens: Some(1280),
                cache_creation_tokens: None,
                reasoning_tokens: Some(448),
                cost: None,
            }),
            text: "Paris is the capital.".to_owned(),
            reasoning: "Thinking about the question.".to_owned(),
            tool_calls: vec![],
            finish_reason: Some("completed".to_owned()),
            error: None,
            model: Some("o4-mini-2025-04-16".to_owned()),
        }
    );
}

/// An SSE stream whose event names are the payloads' `type`s (Responses style).
fn sse_typed(events: &[Value]) -> String {
    events
        .iter()
        .map(|data| {
            format!(
                "event: {}\ndata: {data}\n\n",
                data["type"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn responses_stream_parallel_function_calls() {
    let fc = |id: &str, name: &str, args: &str, status: &str| {
        json!({"type": "function_call", "id": id, "call_id": format!("call_{id}"),
               "name": name, "arguments": args, "status": status})
    };
    let events = vec![
        json!({"type": "response.created", "sequence_number": 0, "response": {
            "id": "resp_1", "object": "response", "status": "in_progress",
            "model": "gpt-4.1-2025-04-14", "output": [], "usage": null}}),
        json!({"type": "response.output_item.added", "output_index": 0,
            "item": fc("fc_a", "get_weather", "", "in_progress")}),
        json!({"type": "response.output_item.added", "output_index": 1,
            "item": fc("fc_b", "get_time", "", "in_progress")}),
        json!({"type": "response.function_call_arguments.delta", "item_id": "fc_a",
            "output_index": 0, "delta": "{\"city\":"}),
        json!({"type": "response.function_call_arguments.delta", "item_id": "fc_b",
            "output_index": 1, "delta": "{\"tz\":\"UTC\"}"}),
        json!({"type": "response.function_call_arguments.delta", "item_id": "fc_a",
            "output_index": 0, "delta": "\"Paris\"}"}),
        json!({"type": "response.function_call_arguments.done", "item_id": "fc_a",
            "output_index": 0, "arguments": "{\"city\":\"Paris\"}"}),
        json!({"type": "response.function_call_arguments.done", "item_id": "fc_b",
            "output_index": 1, "arguments": "{\"tz\":\"UTC\"}"}),
    ];
    let partial = sse_typed(&events);
    // Cut before completion: the streamed pieces are the facts.
    let facts = sse_facts(Frontend::OpenAiResponses, &partial);
    assert_eq!(
        facts.tool_calls,
        vec![
            tool("get_weather", "{\"city\":\"Paris\"}"),
            tool("get_time", "{\"tz\":\"UTC\"}")
        ]
    );
    assert_eq!(facts.finish_reason, None);
    assert_eq!(facts.usage, None);
    assert_eq!(facts.model.as_deref(), Some("gpt-4.1-2025-04-14"));

    let completed = json!({"type": "response.completed", "response": {
        "id": "resp_1", "object": "response", "status": "completed",
        "model": "gpt-4.1-2025-04-14", "incomplete_details": null, "error": null,
        "output": [fc("fc_a", "get_weather", "{\"city\":\"Paris\"}", "completed"),
                   fc("fc_b", "get_time", "{\"tz\":\"UTC\"}", "completed")],
        "usage": {"input_tokens": 291, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": 47, "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": 338}}});
    let full = format!("{partial}{}", sse_typed(&[completed]));
    let facts = sse_facts(Frontend::OpenAiResponses, &full);
    assert_eq!(facts.tool_calls.len(), 2);
    assert_eq!(facts.tool_calls[1], tool("get_time", "{\"tz\":\"UTC\"}"));
    assert_eq!(facts.finish_reason.as_deref(), Some("completed"));
    let usage = facts.usage.unwrap();
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (Some(291), Some(47), Some(338))
    );
}

#[test]
fn responses_stream_text_incomplete_with_usage() {
    let stream = sse_typed(&[
        json!({"type": "response.created", "response": {"status": "in_progress",
            "model": "gpt-5-mini"}}),
        json!({"type": "response.output_item.added", "output_index": 0,
            "item": {"type": "reasoning", "id": "rs_1", "summary": []}}),
        json!({"type": "response.reasoning_summary_text.delta", "item_id": "rs_1",
            "output_index": 0, "summary_index": 0, "delta": "Plan."}),
        json!({"type": "response.output_item.added", "output_index": 1,
            "item": {"type": "message", "id": "msg_1", "role": "assistant", "content": []}}),
        json!({"type": "response.output_text.delta", "item_id": "msg_1",
            "output_index": 1, "content_index": 0, "delta": "Once upon"}),
        json!({"type": "response.output_text.delta", "item_id": "msg_1",
            "output_index": 1, "content_index": 0, "delta": " a time"}),
        json!({"type": "response.incomplete", "response": {
            "status": "incomplete", "model": "gpt-5-mini",
            "incomplete_details": {"reason": "max_output_tokens"}, "output": [],
            "usage": {"input_tokens": 12, "output_tokens": 64, "total_tokens": 76,
                      "output_tokens_details": {"reasoning_tokens": 60}}}}),
    ]);
    let facts = sse_facts(Frontend::OpenAiResponses, &stream);
    assert_eq!(facts.text, "Once upon a time");
    assert_eq!(facts.reasoning, "Plan.");
    assert_eq!(facts.finish_reason.as_deref(), Some("max_output_tokens"));
    assert_eq!(facts.usage.unwrap().reasoning_tokens, Some(60));
}

#[test]
fn responses_failed_and_error_events() {
    let stream = sse_typed(&[json!({"type": "response.failed", "response": {
        "status": "failed", "model": "gpt-4.1",
        "error": {"code": "server_error", "message": "The model failed to generate a response."},
        "usage": null}})]);
    let facts = sse_facts(Frontend::OpenAiResponses, &stream);
    assert_eq!(facts.finish_reason.as_deref(), Some("failed"));
    assert_eq!(
        facts.error.as_deref(),
        Some("server_error: The model failed to generate a response.")
    );
    assert_eq!(facts.usage, None);

    let stream =
        String::from_utf8_lossy(&Frontend::OpenAiResponses.stream_error_event(429, "slow down"))
            .into_owned();
    let facts = sse_facts(Frontend::OpenAiResponses, &stream);
    assert!(facts.error.as_deref().unwrap().ends_with("slow down"));

    let body = Frontend::OpenAiResponses.error_body(400, "bad input");
    let facts = json_facts(Frontend::OpenAiResponses, &body);
    assert!(facts.error.as_deref().unwrap().ends_with("bad input"));
}

// -------------------------------------------------------------- robustness

#[test]
fn truncated_or_mislabelled_bodies() {
    let body = br#"{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3"#;
    assert_eq!(
        json_facts(Frontend::OpenAiChat, body),
        ResponseFacts::default()
    );
    // A "JSON" body that is really a stream.
    let stream =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\ndata: [DONE]\n\n";
    assert_eq!(
        json_facts(Frontend::OpenAiChat, stream.as_bytes()).text,
        "x"
    );
    // A "stream" that is really a JSON error body.
    let body = Frontend::AnthropicMessages.error_body(529, "Overloaded");
    let facts = feed(Frontend::AnthropicMessages, true, &body, 5);
    assert!(facts.error.as_deref().unwrap().ends_with("Overloaded"));
    // A last event without its blank line still counts.
    let stream = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}";
    assert_eq!(
        sse_facts(Frontend::OpenAiChat, stream)
            .usage
            .unwrap()
            .total_tokens,
        Some(4)
    );
}

#[test]
fn wrong_typed_fields_cost_only_that_field_chat_json() {
    let facts = |body: Value| json_facts(Frontend::OpenAiChat, body.to_string().as_bytes());
    // Counts as a string and an integral float; a null total is computed.
    let f = facts(
        json!({"model": "gpt-4o", "choices": [{"index": 0, "finish_reason": "stop",
        "message": {"content": "hi", "tool_calls": {}}}],
        "usage": {"prompt_tokens": "12", "completion_tokens": 3.0, "total_tokens": null}}),
    );
    assert_eq!(f.text, "hi");
    assert_eq!(f.finish_reason.as_deref(), Some("stop"));
    assert_eq!(f.model.as_deref(), Some("gpt-4o"));
    assert!(f.tool_calls.is_empty());
    let usage = f.usage.unwrap();
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (Some(12), Some(3), Some(15))
    );
    // `choices` not an array: usage and model remain.
    let f = facts(json!({"model": "m", "choices": 5,
        "usage": {"prompt_tokens": 4, "completion_tokens": 1}}));
    assert_eq!((f.model.as_deref(), f.text.as_str()), (Some("m"), ""));
    assert_eq!(f.usage.unwrap().total_tokens, Some(5));
    // Wrong-typed content: the refusal, tool call and finish reason remain.
    let f = facts(
        json!({"choices": [{"finish_reason": "tool_calls", "message": {"content": 7,
        "refusal": "no", "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}},
        5, {"function": "x"}]}}]}),
    );
    assert_eq!(f.text, "no");
    assert_eq!(f.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(f.tool_calls, [tool("f", "{}")]);
    // Unreadable counts are absent, the readable ones stay; a bad usage or
    // model costs only itself.
    let f = facts(
        json!({"model": 42, "choices": [{"message": {"content": "ok"}}],
        "usage": {"prompt_tokens": "twelve", "completion_tokens": 4, "total_tokens": -1,
            "prompt_tokens_details": [], "completion_tokens_details": {"reasoning_tokens": 1e300},
            "cost": "free"}}),
    );
    let usage = f.usage.unwrap();
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (None, Some(4), Some(4))
    );
    assert_eq!(
        (usage.reasoning_tokens, usage.cost, usage.cached_tokens),
        (None, None, None)
    );
    assert_eq!((f.model, f.text.as_str()), (None, "ok"));
    let body = r#"{"choices": [{"message": {"content": "ok"}}],
        "usage": {"prompt_tokens": 123456789012345678901234567890, "completion_tokens": 2}}"#;
    let f = json_facts(Frontend::OpenAiChat, body.as_bytes());
    assert_eq!(f.usage.unwrap().prompt_tokens, None);
    let f = facts(json!({"choices": [{"message": {"content": "ok"}}], "usage": "lots"}));
    assert_eq!((f.usage, f.text.as_str()), (None, "ok"));
    // Duplicate keys: the last wins, as in a `serde_json::Value`.
    let body = br#"{"model": "a", "choices": [{"message": {"content": "x", "content": "y"}}],
        "model": "b", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}"#;
    let f = json_facts(Frontend::OpenAiChat, body);
    assert_eq!((f.model.as_deref(), f.text.as_str()), (Some("b"), "y"));
    assert_eq!(f.usage.unwrap().total_tokens, Some(2));
    // Not an object at all: nothing, and no panic.
    for body in ["5", "\"x\"", "[]", "null", "[{\"choices\": []}]"] {
        assert_eq!(
            json_facts(Frontend::OpenAiChat, body.as_bytes()),
            ResponseFacts::default()
        );
    }
}

#[test]
fn wrong_typed_fields_cost_only_that_field_streams() {
    // OpenAI chat: a bad chunk, a chunk with bad pieces, a usage chunk with a string count.
    let stream = sse(&[
        chat_chunk(json!({"content": "Hel"}), None),
        (None, json!({"choices": {"0": {"delta": {"content": "?"}}}})),
        chat_chunk(json!({"content": 7, "tool_calls": {}}), None),
        chat_chunk(
            json!({"content": "lo", "tool_calls": [{"index": "0", "id": "c",
            "function": {"name": 5, "arguments": "{\"a\":1}"}}]}),
            Some("stop"),
        ),
        (
            None,
            json!({"choices": [], "usage": {"prompt_tokens": "12", "completion_tokens": 2}}),
        ),
    ]);
    let f = sse_facts(Frontend::OpenAiChat, &stream);
    assert_eq!(f.text, "Hello");
    assert_eq!(f.finish_reason.as_deref(), Some("stop"));
    assert_eq!(f.tool_calls, [tool("", "{\"a\":1}")]);
    assert_eq!(f.usage.unwrap().total_tokens, Some(14));

    // Anthropic: wrong-typed usage fields, index, text and content.
    let stream = sse(&[
        (
            Some("message_start"),
            json!({"type": "message_start", "message": {"model": "claude",
            "content": "x", "usage": {"input_tokens": "10", "output_tokens": null,
            "cache_read_input_tokens": [], "cache_creation_input_tokens": 2}}}),
        ),
        (
            Some("content_block_start"),
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": 5}}),
        ),
        (
            Some("content_block_delta"),
            json!({"type": "content_block_delta", "index": "0",
            "delta": {"type": "text_delta", "text": "Hi"}}),
        ),
        (
            Some("content_block_delta"),
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": 7}}),
        ),
        (
            Some("message_delta"),
            json!({"type": "message_delta", "delta": "end",
            "usage": {"output_tokens": 5.0}}),
        ),
        (
            Some("message_delta"),
            json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn"}, "usage": 9}),
        ),
    ]);
    let f = sse_facts(Frontend::AnthropicMessages, &stream);
    assert_eq!(f.text, "Hi");
    assert_eq!(f.model.as_deref(), Some("claude"));
    assert_eq!(f.finish_reason.as_deref(), Some("end_turn"));
    let usage = f.usage.unwrap();
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens
        ),
        (Some(12), Some(5), None)
    );

    // Responses: a wrong-typed `output`, `status` and counts in the terminal response.
    let stream = sse_typed(&[
        json!({"type": "response.output_text.delta", "output_index": 0, "content_index": 0,
            "delta": "Hi"}),
        json!({"type": "response.output_text.delta", "output_index": 0, "delta": 3}),
        json!({"type": "response.completed", "response": {"model": "gpt-4.1", "status": 3,
            "output": {}, "usage": {"input_tokens": "7", "output_tokens": 2,
            "input_tokens_details": {"cached_tokens": "x"}}}}),
    ]);
    let f = sse_facts(Frontend::OpenAiResponses, &stream);
    assert_eq!(f.text, "Hi");
    assert_eq!(f.model.as_deref(), Some("gpt-4.1"));
    assert_eq!(f.finish_reason, None);
    let usage = f.usage.unwrap();
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens,
            usage.cached_tokens
        ),
        (Some(7), Some(2), Some(9), None)
    );
}

proptest! {
    #[test]
    fn garbage_never_panics(body in prop::collection::vec(any::<u8>(), 0..512), size in 1usize..64) {
        for protocol in ALL {
            for is_sse in [false, true] {
                let _ = feed(protocol, is_sse, &body, size);
            }
            let _ = PromptFacts::from_body(protocol, &body);
        }
    }

    #[test]
    fn wrong_shapes_never_panic(value in arb_json()) {
        let text = value.to_string();
        let stream = format!("data: {text}\n\nevent: error\ndata: {text}\n\n");
        for protocol in ALL {
            let _ = json_facts(protocol, text.as_bytes());
            let _ = whole_sse_facts(protocol, stream.as_bytes());
            for kind in ["message_start", "content_block_start", "content_block_delta",
                         "message_delta", "response.completed", "response.output_item.added",
                         "response.output_text.delta", "response.function_call_arguments.done"] {
                let stream = format!("event: {kind}\ndata: {text}\n\n");
                let _ = whole_sse_facts(protocol, stream.as_bytes());
            }
            let _ = PromptFacts::from_json(protocol, &value);
        }
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("type"),
        Just("index"),
        Just("delta"),
        Just("usage"),
        Just("choices"),
        Just("message"),
        Just("content"),
        Just("tool_calls"),
        Just("function"),
        Just("arguments"),
        Just("name"),
        Just("text"),
        Just("item"),
        Just("output"),
        Just("output_index"),
        Just("response"),
        Just("error"),
        Just("messages"),
        Just("input"),
        Just("tools"),
        Just("system"),
        Just("prompt_tokens"),
        Just("input_tokens"),
        Just("content_block"),
        Just("partial_json"),
        Just("model"),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            Just("text"),
            Just("tool_use"),
            Just("text_delta"),
            Just("input_json_delta"),
            Just("message"),
            Just("function_call"),
            Just("image_url"),
            Just("tool_result"),
            Just("x"),
            Just("")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6).prop_map(|pairs| {
                Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

/// A `usage` value of any protocol, numbers as numbers, numeric strings,
/// floats, nulls or nested objects.
fn arb_usage() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("prompt_tokens"),
        Just("completion_tokens"),
        Just("total_tokens"),
        Just("input_tokens"),
        Just("output_tokens"),
        Just("cache_read_input_tokens"),
        Just("cache_creation_input_tokens"),
        Just("cached_tokens"),
        Just("reasoning_tokens"),
        Just("cost"),
        Just("prompt_tokens_details"),
        Just("input_tokens_details"),
        Just("output_tokens_details"),
        Just("completion_tokens_details"),
        Just("prompt_cache_hit_tokens"),
    ];
    // Mostly plain counts (the hand reader's case), some of every other kind.
    let leaf = prop_oneof![
        12 => (0u64..100_000).prop_map(Value::from),
        2 => Just(Value::Null),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(Value::from),
        1 => (0u64..1000).prop_map(|n| Value::from(format!(" {n} "))),
        1 => Just(json!("x")),
        1 => Just(json!({"ephemeral_5m_input_tokens": 0, "n": [1]})),
    ];
    leaf.prop_recursive(2, 24, 6, move |inner| {
        prop::collection::vec((key.clone(), inner), 0..6).prop_map(|pairs| {
            Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
        })
    })
}

/// Strings that test the scanner's string handling.
fn arb_tricky_text() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just("say \"usage\": {\"prompt_tokens\": 9}"),
        Just("say \"usage"),
        Just("back\\"),
        Just("{"),
        Just("}]"),
        Just("say \"error"),
        Just("error"),
        Just("x_tool_calls"),
        Just("function_call_arguments : null"),
        Just("é \u{1} \u{1F600} \t\n"),
        Just("input_json_delta"),
        Just("a_b_c"),
    ]
    .prop_map(Value::from)
}

proptest! {
    #[test]
    fn usage_scan_agrees_with_the_whole_body_reading(
        value in arb_json(),
        usage in prop::option::of(arb_usage()),
        text in arb_tricky_text(),
        nested in arb_json(),
    ) {
        let mut object = match value.clone() {
            Value::Object(object) => object,
            other => [("choices".to_owned(), other)].into_iter().collect(),
        };
        if let Some(usage) = usage {
            object.insert("usage".to_owned(), usage);
        }
        object.insert("id".to_owned(), text);
        object.insert("data".to_owned(), nested);
        let bodies = [
            value.to_string(),
            serde_json::to_string_pretty(&value).unwrap(),
            Value::Object(object.clone()).to_string(),
            serde_json::to_string_pretty(&Value::Object(object)).unwrap(),
        ];
        for body in &bodies {
            for protocol in ALL {
                prop_assert_eq!(
                    super::response::usage_only_scanned(protocol, body.as_bytes()),
                    super::response::usage_only_reference(protocol, body.as_bytes()),
                    "{}", body
                );
            }
        }
    }
}

/// The shortcut for a body whose one `"usage"` closes it: taken for the
/// usual OpenAI body, refused wherever the whole pass must decide, and in
/// every case the same answer as the whole-body reading of a well-formed body.
#[test]
fn closing_usage_shortcut_is_taken_only_for_a_closing_top_level_usage() {
    let usage = r#"{"prompt_tokens":184,"completion_tokens":10,"total_tokens":194,"prompt_tokens_details":{"cached_tokens":0}}"#;
    let taken = [
        format!(r#"{{"id":"x","choices":[{{"message":{{"content":"hi"}}}}],"usage":{usage}}}"#),
        format!("{{\n  \"id\": \"x\",\n  \"usage\" :\t{usage} \n}}\n"),
        r#"{"id":"x","usage":null}"#.to_owned(),
    ];
    let refused = [
        // Nested, not top-level: a second brace closes the body.
        format!(r#"{{"data":{{"usage":{usage}}}}}"#),
        // Not the last member.
        format!(r#"{{"usage":{usage},"id":"x"}}"#),
        // A second `"usage"` (an escaped quote, then a closing one).
        format!(r#"{{"id":"say \"usage","usage":{usage}}}"#),
        // An error with a value: the whole reading decides.
        format!(r#"{{"error":{{"message":"m"}},"usage":{usage}}}"#),
        // Not a plain usage object (a float count): serde decides.
        r#"{"id":"x","usage":{"prompt_tokens":1.5}}"#.to_owned(),
        // Not an object body.
        format!(r#"[{{"usage":{usage}}}]"#),
        // Trailing bytes after the body.
        format!(r#"{{"usage":{usage}}} x"#),
    ];
    for body in &taken {
        let shortcut = super::response::closing_usage(body.as_bytes());
        assert!(shortcut.is_some(), "not taken: {body}");
    }
    for body in &refused {
        let shortcut = super::response::closing_usage(body.as_bytes());
        assert!(shortcut.is_none(), "taken: {body}");
    }
    for body in taken.iter().chain(&refused) {
        for protocol in ALL {
            assert_eq!(
                super::response::usage_only_scanned(protocol, body.as_bytes()),
                super::response::usage_only_reference(protocol, body.as_bytes()),
                "{body}"
            );
        }
    }
    let first = super::response::usage_only_scanned(Frontend::OpenAiChat, taken[0].as_bytes());
    assert_eq!(first.flatten().and_then(|u| u.total_tokens), Some(194));
    // What it does not walk: a body broken before its closing `usage`
    // still yields that usage (documented in `extract::scan`).
    let broken = format!(r#"{{"a":[1,"usage":{usage}}}"#);
    assert!(super::response::closing_usage(broken.as_bytes()).is_some());
}

proptest! {
    #[test]
    fn essential_needles_are_found_as_one_needle_at_a_time(
        pieces in prop::collection::vec(prop_oneof![
            Just("tool_calls"), Just("tool_call"), Just("function_call"), Just("tool_use"),
            Just("_arguments"), Just("function_call_arguments"), Just("custom_tool_call_input"),
            Just("input_json_delta"), Just("error"), Just("server"), Just("_"), Just("\""),
            Just(":"), Just(" "), Just("null"), Just("[]"), Just("[ ]"), Just("\\"), Just("x"),
        ], 0..24),
        noise in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut data = pieces.concat().into_bytes();
        data.extend(noise);
        prop_assert_eq!(
            super::response::names_tools_or_errors(&data),
            super::response::names_tools_or_errors_reference(&data),
            "{}", String::from_utf8_lossy(&data)
        );
    }
}

// ------------------------------------------------------------- mock model

fn mock_requests(protocol: Frontend) -> Vec<Value> {
    let tools_chat = json!([{"type": "function", "function": {"name": "search_docs",
        "description": "Search", "parameters": {"type": "object"}}}]);
    match protocol {
        Frontend::OpenAiChat => vec![
            json!({"model": "mock", "messages": [{"role": "user", "content": "hello"}]}),
            json!({"model": "echo", "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "say \"quoted\" ünïcode 😀 words back"}]}),
            json!({"model": "gpt-4o", "tools": tools_chat,
                "messages": [{"role": "user", "content": "find \"rust\" async docs"}]}),
            json!({"model": "m", "tools": tools_chat, "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function",
                    "function": {"name": "search_docs", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c", "content": "sunny and warm"}]}),
        ],
        Frontend::AnthropicMessages => vec![
            json!({"model": "claude", "max_tokens": 64, "system": "terse",
                "messages": [{"role": "user", "content": "hello"}]}),
            json!({"model": "echo", "max_tokens": 64,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "ping me back ✓"}]}]}),
            json!({"model": "claude", "max_tokens": 64,
                "tools": [{"name": "search", "input_schema": {"type": "object"}}],
                "messages": [{"role": "user", "content": "rust \"async\" book"}]}),
            json!({"model": "claude", "max_tokens": 64,
                "tools": [{"name": "search", "input_schema": {"type": "object"}}],
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "search", "input": {}}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "found it"}]}]}),
        ],
        Frontend::OpenAiResponses => vec![
            json!({"model": "gpt-4.1", "input": "hello"}),
            json!({"model": "echo", "instructions": "be kind",
                "input": [{"role": "user", "content": [{"type": "input_text", "text": "echo this back ok"}]}]}),
            json!({"model": "gpt-4.1",
                "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
                "input": "look up \"x\" now"}),
            json!({"model": "gpt-4.1",
                "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
                "input": [{"role": "user", "content": "q"},
                          {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
                          {"type": "function_call_output", "call_id": "c1", "output": "42"}]}),
        ],
    }
}

fn expected_usage(protocol: Frontend, request: &Value) -> BackendUsage {
    let u = usage_for(protocol, request).unwrap();
    BackendUsage {
        prompt_tokens: Some(u.prompt_tokens),
        completion_tokens: Some(u.completion_tokens),
        total_tokens: Some(u.total_tokens),
        // The mock reports zero cache / reasoning details where the protocol has them.
        cached_tokens: Some(0),
        cache_creation_tokens: match protocol {
            Frontend::OpenAiChat => None,
            Frontend::AnthropicMessages | Frontend::OpenAiResponses => Some(0),
        },
        reasoning_tokens: match protocol {
            Frontend::AnthropicMessages => None,
            Frontend::OpenAiChat | Frontend::OpenAiResponses => Some(0),
        },
        cost: None,
    }
}

#[test]
fn mock_json_and_streams_agree_with_usage_for() {
    for protocol in ALL {
        for request in mock_requests(protocol) {
            let MockReply::Json { body, .. } =
                reply(protocol, &request, &MockOptions::default()).unwrap()
            else {
                panic!("expected JSON")
            };
            let json_facts = json_facts(protocol, &body);
            let expected = expected_usage(protocol, &request);
            assert_eq!(json_facts.usage.as_ref(), Some(&expected), "{request}");
            assert_eq!(
                json_facts.model.as_deref(),
                request["model"].as_str(),
                "{request}"
            );
            assert!(json_facts.finish_reason.is_some());
            assert_eq!(json_facts.error, None);

            let mut streaming = request.clone();
            streaming["stream"] = json!(true);
            if protocol == Frontend::OpenAiChat {
                streaming["stream_options"] = json!({"include_usage": true});
            }
            for chunks in [1, 3, 17] {
                let options = MockOptions {
                    chunk_count: Some(chunks),
                    ..MockOptions::default()
                };
                let MockReply::Stream { events } = reply(protocol, &streaming, &options).unwrap()
                else {
                    panic!("expected stream")
                };
                let stream: Vec<u8> = events.concat();
                for size in [1, 5, 13, 4096] {
                    let facts = feed(protocol, true, &stream, size);
                    assert_eq!(facts, json_facts, "{protocol:?} {request} {chunks} {size}");
                }
                // Events as frames, one push each.
                let mut acc = ResponseAccumulator::new(protocol, true);
                for event in &events {
                    acc.push(event);
                }
                assert_eq!(acc.finish(), json_facts);
            }
        }
    }
}

#[test]
fn mock_tool_arguments_reassemble_exactly() {
    for protocol in ALL {
        let request = &mock_requests(protocol)[2];
        let query = match protocol {
            Frontend::OpenAiChat => "find \"rust\" async docs",
            Frontend::AnthropicMessages => "rust \"async\" book",
            Frontend::OpenAiResponses => "look up \"x\" now",
        };
        let expected = json!({"query": query}).to_string();
        let mut streaming = request.clone();
        streaming["stream"] = json!(true);
        let options = MockOptions {
            chunk_count: Some(7),
            ..MockOptions::default()
        };
        let MockReply::Stream { events } = reply(protocol, &streaming, &options).unwrap() else {
            panic!("expected stream")
        };
        let facts = feed(protocol, true, &events.concat(), 3);
        assert_eq!(facts.tool_calls.len(), 1, "{protocol:?}");
        assert_eq!(facts.tool_calls[0].arguments, expected, "{protocol:?}");
        assert!(!facts.tool_calls[0].name.is_empty());
        assert_eq!(facts.text, "");
    }
}

#[test]
fn mock_stream_without_usage_chunk_and_faults() {
    // OpenAI chat stream without include_usage: no usage, text intact.
    let request = json!({"model": "echo", "stream": true,
        "messages": [{"role": "user", "content": "a b c"}]});
    let MockReply::Stream { events } =
        reply(Frontend::OpenAiChat, &request, &MockOptions::default()).unwrap()
    else {
        panic!("expected stream")
    };
    let facts = feed(Frontend::OpenAiChat, true, &events.concat(), 2);
    assert_eq!(facts.usage, None);
    assert_eq!(facts.text, "a b c");

    for protocol in ALL {
        let request = mock_requests(protocol)[0].clone();
        let status = MockOptions {
            fault: Some(llm_proxy_core::mock::MockFault::Status(503)),
            ..MockOptions::default()
        };
        let MockReply::Json { body, .. } = reply(protocol, &request, &status).unwrap() else {
            panic!("expected JSON")
        };
        let facts = json_facts(protocol, &body);
        assert!(facts.error.is_some(), "{protocol:?}");
        assert_eq!(facts.usage, None);

        let malformed = MockOptions {
            fault: Some(llm_proxy_core::mock::MockFault::MalformedJson),
            ..MockOptions::default()
        };
        let mut streaming = request.clone();
        streaming["stream"] = json!(true);
        for req in [&request, &streaming] {
            match reply(protocol, req, &malformed).unwrap() {
                MockReply::Json { body, .. } => {
                    let _ = json_facts(protocol, &body);
                }
                MockReply::Stream { events } => {
                    let _ = feed(protocol, true, &events.concat(), 4);
                }
            }
        }
    }
}

// ------------------------------------------------------------------- prompts

#[test]
fn prompt_openai_chat() {
    let request = json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "developer", "content": "Be terse."},
            {"role": "system", "content": [{"type": "text", "text": "No chit-chat."}]},
            {"role": "user", "name": "alice", "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "describe", "arguments": "{\"detail\":\"high\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "A cat on a mat."}
        ],
        "tools": [{"type": "function", "function": {"name": "describe",
            "description": "Describe an image",
            "parameters": {"type": "object", "properties": {"detail": {"type": "string"}}}}}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "out",
            "schema": {"type": "object"}}}
    });
    let facts = PromptFacts::from_json(Frontend::OpenAiChat, &request);
    assert_eq!(
        facts.text_for_counting,
        [
            "Be terse.",
            "No chit-chat.",
            "alice",
            "What is in this image?",
            "describe",
            "{\"detail\":\"high\"}",
            "A cat on a mat.",
            "describe",
            "Describe an image",
            "{\"properties\":{\"detail\":{\"type\":\"string\"}},\"type\":\"object\"}",
            "{\"type\":\"object\"}",
        ]
        .join("\n")
    );
    assert_eq!(facts.message_count, 5);
    assert_eq!(facts.image_count, 2);
    assert_eq!(facts.model.as_deref(), Some("gpt-4o"));
    assert_eq!(
        PromptFacts::from_body(Frontend::OpenAiChat, request.to_string().as_bytes()),
        facts
    );
}

#[test]
fn prompt_anthropic() {
    let request = json!({
        "model": "claude-sonnet-4-20250514", "max_tokens": 1024,
        "system": [{"type": "text", "text": "You are a helpful assistant.",
                    "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "get_weather", "description": "Get the weather",
                   "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                    "required": ["city"]}},
                  {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}],
        "messages": [
            {"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
                {"type": "text", "text": "Weather where this photo was taken?"}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Looks like Paris.", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                    {"type": "text", "text": "18°C, cloudy"},
                    {"type": "image", "source": {"type": "url", "url": "https://x/radar.png"}}]},
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Notes."}}]}
        ]
    });
    let facts = PromptFacts::from_json(Frontend::AnthropicMessages, &request);
    assert_eq!(
        facts.text_for_counting,
        [
            "You are a helpful assistant.",
            "Weather where this photo was taken?",
            "Looks like Paris.",
            "Checking.",
            "get_weather",
            "{\"city\":\"Paris\"}",
            "18°C, cloudy",
            "Notes.",
            "get_weather",
            "Get the weather",
            "{\"properties\":{\"city\":{\"type\":\"string\"}},\"required\":[\"city\"],\"type\":\"object\"}",
            "web_search",
        ]
        .join("\n")
    );
    assert_eq!(facts.message_count, 3);
    assert_eq!(facts.image_count, 2);

    let plain =
        json!({"model": "m", "system": "sys", "messages": [{"role": "user", "content": "hi"}]});
    let facts = PromptFacts::from_json(Frontend::AnthropicMessages, &plain);
    assert_eq!(facts.text_for_counting, "sys\nhi");
    assert_eq!(facts.message_count, 1);
}

#[test]
fn prompt_responses() {
    let request = json!({
        "model": "gpt-4.1",
        "instructions": "Answer in French.",
        "input": [
            {"role": "user", "content": [
                {"type": "input_text", "text": "Weather in Paris?"},
                {"type": "input_image", "image_url": "https://x/p.png"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Use the tool."}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather",
             "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "{\"temp\":18}"},
            {"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": "Il fait 18°C."}]},
            {"type": "item_reference", "id": "msg_0"}
        ],
        "tools": [{"type": "function", "name": "get_weather", "description": "Weather",
                   "parameters": {"type": "object"}, "strict": true},
                  {"type": "web_search_preview"}],
        "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "string"}}}
    });
    let facts = PromptFacts::from_json(Frontend::OpenAiResponses, &request);
    assert_eq!(
        facts.text_for_counting,
        [
            "Answer in French.",
            "Weather in Paris?",
            "Use the tool.",
            "get_weather",
            "{\"city\":\"Paris\"}",
            "{\"temp\":18}",
            "Il fait 18°C.",
            "get_weather",
            "Weather",
            "{\"type\":\"object\"}",
            "{\"type\":\"string\"}",
        ]
        .join("\n")
    );
    assert_eq!(facts.message_count, 6);
    assert_eq!(facts.image_count, 1);

    let simple = json!({"model": "gpt-4.1", "input": "hello"});
    let facts = PromptFacts::from_json(Frontend::OpenAiResponses, &simple);
    assert_eq!(facts.text_for_counting, "hello");
    assert_eq!(facts.message_count, 1);
}

#[test]
fn prompt_of_garbage_is_empty() {
    for protocol in ALL {
        assert_eq!(
            PromptFacts::from_body(protocol, b"not json"),
            PromptFacts::default()
        );
        let facts =
            PromptFacts::from_json(protocol, &json!({"messages": 3, "input": {}, "tools": "x"}));
        assert_eq!(facts.text_for_counting, "");
    }
}

#[test]
fn prompt_text_covers_every_word_the_mock_counts() {
    // The mock counts words of message text; our prompt text holds at least those.
    for protocol in ALL {
        for request in mock_requests(protocol) {
            let facts = PromptFacts::from_json(protocol, &request);
            let words = llm_proxy_core::mock::count_words(&facts.text_for_counting);
            let mock = usage_for(protocol, &request).unwrap().prompt_tokens;
            assert!(words >= mock, "{protocol:?} {request}: {words} < {mock}");
        }
    }
}
