//! Anthropic Messages rendering: `message` JSON and the named-event SSE stream.

use bytes::Bytes;
use serde_json::{Value, json};

use super::answer::{Answer, Render, sse_frame};

fn message(r: &Render<'_>, content: Value, stop_reason: Value, output_tokens: u64) -> Value {
    json!({
        "id": r.ids.with_prefix("msg_"),
        "type": "message",
        "role": "assistant",
        "model": r.conversation.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {
            "input_tokens": r.usage().prompt_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    })
}

fn stop_reason(answer: &Answer) -> &'static str {
    match answer {
        Answer::Text(_) => "end_turn",
        Answer::ToolCall { .. } => "tool_use",
    }
}

/// The `message` body.
pub(crate) fn json(r: &Render<'_>) -> Bytes {
    let block = match r.answer {
        Answer::Text(text) => json!({"type": "text", "text": text}),
        Answer::ToolCall { name, arguments } => json!({
            "type": "tool_use",
            "id": r.ids.with_prefix("toolu_"),
            "name": name,
            "input": serde_json::from_str::<Value>(arguments).unwrap_or_else(|_| json!({})),
        }),
    };
    let body = message(
        r,
        json!([block]),
        json!(stop_reason(r.answer)),
        r.usage().completion_tokens,
    );
    Bytes::from(body.to_string())
}

/// The SSE frames: `message_start`, `content_block_start`, `ping`,
/// `content_block_delta`…, `content_block_stop`, `message_delta`, `message_stop`.
pub(crate) fn stream(r: &Render<'_>) -> Vec<Bytes> {
    let mut events = Vec::with_capacity(r.chunk_count + 6);
    let event = |name: &str, data: Value| sse_frame(Some(name), &data);
    events.push(event(
        "message_start",
        json!({"type": "message_start", "message": message(r, json!([]), Value::Null, 1)}),
    ));
    let (block, deltas): (Value, Vec<Value>) = match r.answer {
        Answer::Text(text) => (
            json!({"type": "text", "text": ""}),
            r.pieces(text, false)
                .into_iter()
                .map(|piece| json!({"type": "text_delta", "text": piece}))
                .collect(),
        ),
        Answer::ToolCall { name, arguments } => (
            json!({"type": "tool_use", "id": r.ids.with_prefix("toolu_"), "name": name, "input": {}}),
            r.pieces(arguments, true)
                .into_iter()
                .map(|piece| json!({"type": "input_json_delta", "partial_json": piece}))
                .collect(),
        ),
    };
    events.push(event(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": block}),
    ));
    events.push(event("ping", json!({"type": "ping"})));
    for delta in deltas {
        events.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        ));
    }
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(event(
        "message_delta",
        json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(r.answer), "stop_sequence": null},
            "usage": {"output_tokens": r.usage().completion_tokens},
        }),
    ));
    events.push(event("message_stop", json!({"type": "message_stop"})));
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
    use crate::mock::{MockOptions, MockReply, reply};
    use serde_json::{Value, json};

    fn events(reply: MockReply) -> Vec<(String, Value)> {
        let MockReply::Stream { events } = reply else {
            panic!("expected stream")
        };
        events
            .iter()
            .map(|e| {
                let text = std::str::from_utf8(e).unwrap();
                let (event, data) = text.trim_end().split_once('\n').unwrap();
                let event = event.strip_prefix("event: ").unwrap().to_owned();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(data["type"], event.as_str());
                (event, data)
            })
            .collect()
    }

    #[test]
    fn json_text_shape() {
        let req = json!({"model": "echo", "max_tokens": 10, "system": "you are terse",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "ping me"}]}]});
        let MockReply::Json { status, body } =
            reply(Frontend::AnthropicMessages, &req, &MockOptions::default()).unwrap()
        else {
            panic!("expected JSON")
        };
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["id"].as_str().unwrap().starts_with("msg_"));
        assert_eq!(v["type"], "message");
        assert_eq!(v["role"], "assistant");
        assert_eq!(v["model"], "echo");
        assert_eq!(v["content"], json!([{"type": "text", "text": "ping me"}]));
        assert_eq!(v["stop_reason"], "end_turn");
        assert_eq!(v["stop_sequence"], Value::Null);
        assert_eq!(
            v["usage"],
            json!({"input_tokens": 5, "output_tokens": 2,
                   "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0})
        );
    }

    #[test]
    fn stream_event_sequence() {
        let req = json!({"model": "echo", "stream": true,
            "messages": [{"role": "user", "content": "a b c d e f g"}]});
        let evs =
            events(reply(Frontend::AnthropicMessages, &req, &MockOptions::default()).unwrap());
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(evs[0].1["message"]["usage"]["input_tokens"], 7);
        assert_eq!(evs[0].1["message"]["usage"]["output_tokens"], 1);
        let text: String = evs[3..8]
            .iter()
            .map(|(_, d)| d["delta"]["text"].as_str().unwrap())
            .collect();
        assert_eq!(text, "a b c d e f g");
        assert_eq!(evs[9].1["delta"]["stop_reason"], "end_turn");
        assert_eq!(evs[9].1["usage"]["output_tokens"], 7);
    }

    #[test]
    fn tool_use_json_and_stream() {
        let req = json!({"model": "claude", "max_tokens": 10,
            "tools": [{"name": "search", "input_schema": {"type": "object"}}],
            "messages": [{"role": "user", "content": "rust async"}]});
        let MockReply::Json { body, .. } =
            reply(Frontend::AnthropicMessages, &req, &MockOptions::default()).unwrap()
        else {
            panic!("expected JSON")
        };
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["stop_reason"], "tool_use");
        let block = &v["content"][0];
        assert_eq!(block["type"], "tool_use");
        assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
        assert_eq!(block["name"], "search");
        assert_eq!(block["input"], json!({"query": "rust async"}));

        let mut req = req;
        req["stream"] = json!(true);
        let evs =
            events(reply(Frontend::AnthropicMessages, &req, &MockOptions::default()).unwrap());
        assert_eq!(evs[1].1["content_block"]["type"], "tool_use");
        assert_eq!(evs[1].1["content_block"]["id"], block["id"]);
        let partial: Vec<&str> = evs
            .iter()
            .filter(|(n, _)| n == "content_block_delta")
            .map(|(_, d)| {
                assert_eq!(d["delta"]["type"], "input_json_delta");
                d["delta"]["partial_json"].as_str().unwrap()
            })
            .collect();
        assert!(partial.len() >= 2);
        let input: Value = serde_json::from_str(&partial.concat()).unwrap();
        assert_eq!(input, json!({"query": "rust async"}));
        let delta = evs.iter().find(|(n, _)| n == "message_delta").unwrap();
        assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
    }

    #[test]
    fn tool_result_is_acknowledged() {
        let req = json!({"model": "claude", "max_tokens": 10,
            "tools": [{"name": "search", "input_schema": {"type": "object"}}],
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "search", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "found it"}]}]});
        let MockReply::Json { body, .. } =
            reply(Frontend::AnthropicMessages, &req, &MockOptions::default()).unwrap()
        else {
            panic!("expected JSON")
        };
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["content"][0]["text"], "Tool result received: found it");
        assert_eq!(v["stop_reason"], "end_turn");
    }
}
