//! OpenAI Chat Completions rendering: `chat.completion` JSON and `chat.completion.chunk` SSE.

use bytes::Bytes;
use serde_json::{Value, json};

use super::MOCK_CREATED_AT;
use super::answer::{Answer, Render, sse_frame};
use super::conversation::Usage;

const FINGERPRINT: &str = "fp_mock";

fn usage_json(usage: Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    })
}

/// The `chat.completion` body.
pub(crate) fn json(r: &Render<'_>) -> Bytes {
    let (message, finish_reason) = match r.answer {
        Answer::Text(text) => (
            json!({"role": "assistant", "content": text, "refusal": null}),
            "stop",
        ),
        Answer::ToolCall { name, arguments } => (
            json!({
                "role": "assistant",
                "content": null,
                "refusal": null,
                "tool_calls": [{
                    "id": r.ids.with_prefix("call_"),
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }],
            }),
            "tool_calls",
        ),
    };
    let body = json!({
        "id": r.ids.with_prefix("chatcmpl-"),
        "object": "chat.completion",
        "created": MOCK_CREATED_AT,
        "model": r.conversation.model,
        "system_fingerprint": FINGERPRINT,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_reason,
            "logprobs": null,
        }],
        "usage": usage_json(r.usage()),
    });
    Bytes::from(body.to_string())
}

/// The SSE frames: role chunk, content (or tool argument) chunks, finish chunk,
/// optional usage chunk, `[DONE]`.
pub(crate) fn stream(r: &Render<'_>) -> Vec<Bytes> {
    let id = r.ids.with_prefix("chatcmpl-");
    let chunk = |delta: Value, finish_reason: Option<&str>| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": MOCK_CREATED_AT,
            "model": r.conversation.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
        });
        if r.conversation.include_usage {
            chunk["usage"] = Value::Null;
        }
        sse_frame(None, &chunk)
    };
    let mut events = Vec::with_capacity(r.chunk_count + 4);
    let finish_reason = match r.answer {
        Answer::Text(text) => {
            events.push(chunk(
                json!({"role": "assistant", "content": "", "refusal": null}),
                None,
            ));
            for piece in r.pieces(text, false) {
                events.push(chunk(json!({"content": piece}), None));
            }
            "stop"
        }
        Answer::ToolCall { name, arguments } => {
            events.push(chunk(
                json!({
                    "role": "assistant",
                    "content": null,
                    "refusal": null,
                    "tool_calls": [{
                        "index": 0,
                        "id": r.ids.with_prefix("call_"),
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }],
                }),
                None,
            ));
            for piece in r.pieces(arguments, true) {
                events.push(chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                    None,
                ));
            }
            "tool_calls"
        }
    };
    events.push(chunk(json!({}), Some(finish_reason)));
    if r.conversation.include_usage {
        let usage_chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": MOCK_CREATED_AT,
            "model": r.conversation.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [],
            "usage": usage_json(r.usage()),
        });
        events.push(sse_frame(None, &usage_chunk));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]
mod tests {
    use crate::Frontend;
    use crate::mock::{DEFAULT_ANSWER, MockOptions, MockReply, reply};
    use serde_json::{Value, json};

    fn frames(reply: MockReply) -> Vec<Value> {
        let MockReply::Stream { events } = reply else {
            panic!("expected stream")
        };
        let last = events.last().unwrap();
        assert_eq!(&last[..], b"data: [DONE]\n\n");
        events[..events.len() - 1]
            .iter()
            .map(|e| {
                let text = std::str::from_utf8(e).unwrap();
                assert!(text.ends_with("\n\n"));
                serde_json::from_str(text.strip_prefix("data: ").unwrap().trim_end()).unwrap()
            })
            .collect()
    }

    #[test]
    fn json_text_shape() {
        let req = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi there"}]});
        let MockReply::Json { status, body } =
            reply(Frontend::OpenAiChat, &req, &MockOptions::default()).unwrap()
        else {
            panic!("expected JSON")
        };
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "gpt-4o");
        assert!(v["created"].is_u64());
        let choice = &v["choices"][0];
        assert_eq!(choice["index"], 0);
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(choice["message"]["content"], DEFAULT_ANSWER);
        assert_eq!(choice["message"]["refusal"], Value::Null);
        assert_eq!(choice["finish_reason"], "stop");
        assert_eq!(choice["logprobs"], Value::Null);
        assert_eq!(v["usage"]["prompt_tokens"], 2);
        assert_eq!(v["usage"]["completion_tokens"], 10);
        assert_eq!(v["usage"]["total_tokens"], 12);
    }

    #[test]
    fn stream_concatenates_to_echo_with_usage_chunk() {
        let req = json!({"model": "echo", "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "one two three four five six"}]});
        let options = MockOptions {
            chunk_count: Some(4),
            ..MockOptions::default()
        };
        let chunks = frames(reply(Frontend::OpenAiChat, &req, &options).unwrap());
        // role + 4 content + finish + usage
        assert_eq!(chunks.len(), 7);
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = chunks[1..5]
            .iter()
            .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(text, "one two three four five six");
        assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[5]["usage"], Value::Null);
        assert_eq!(chunks[6]["choices"], json!([]));
        assert_eq!(chunks[6]["usage"]["prompt_tokens"], 6);
        assert_eq!(chunks[6]["usage"]["completion_tokens"], 6);
        for c in &chunks {
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["id"], chunks[0]["id"]);
        }
    }

    #[test]
    fn stream_without_include_usage_has_no_usage() {
        let req = json!({"model": "m", "stream": true,
            "messages": [{"role": "user", "content": "x"}]});
        let chunks = frames(reply(Frontend::OpenAiChat, &req, &MockOptions::default()).unwrap());
        assert_eq!(chunks.len(), 1 + 5 + 1);
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    }

    #[test]
    fn tool_call_json_and_stream() {
        let req = json!({"model": "m",
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
            "messages": [{"role": "user", "content": "weather in Paris"}]});
        let MockReply::Json { body, .. } =
            reply(Frontend::OpenAiChat, &req, &MockOptions::default()).unwrap()
        else {
            panic!("expected JSON")
        };
        let v: Value = serde_json::from_slice(&body).unwrap();
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], Value::Null);
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_weather");
        let args = call["function"]["arguments"].as_str().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(args).unwrap(),
            json!({"query": "weather in Paris"})
        );
        assert_eq!(v["usage"]["completion_tokens"], 3);

        let mut req = req;
        req["stream"] = json!(true);
        let options = MockOptions {
            chunk_count: Some(1),
            ..MockOptions::default()
        };
        let chunks = frames(reply(Frontend::OpenAiChat, &req, &options).unwrap());
        let first = &chunks[0]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(first["function"]["name"], "get_weather");
        assert_eq!(first["id"], call["id"]);
        let pieces: Vec<&str> = chunks[1..chunks.len() - 1]
            .iter()
            .map(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert!(pieces.len() >= 2);
        assert_eq!(pieces.concat(), args);
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );
    }

    #[test]
    fn tool_result_is_acknowledged() {
        let req = json!({"model": "m",
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function",
                    "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c", "content": "sunny"}]});
        let MockReply::Json { body, .. } =
            reply(Frontend::OpenAiChat, &req, &MockOptions::default()).unwrap()
        else {
            panic!("expected JSON")
        };
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "Tool result received: sunny"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }
}
