//! OpenAI Responses rendering: `response` JSON and the typed-event SSE stream.

use bytes::Bytes;
use serde_json::{Value, json};

use super::MOCK_CREATED_AT;
use super::answer::{Answer, Render, sse_frame};
use super::conversation::Usage;

fn usage_json(usage: Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    })
}

/// The request's value of `key`, or `default`.
fn echoed(r: &Render<'_>, key: &str, default: Value) -> Value {
    match r.conversation.request.get(key) {
        Some(Value::Null) | None => default,
        Some(value) => value.clone(),
    }
}

/// The full `response` object in the given state.
fn response(r: &Render<'_>, status: &str, output: Vec<Value>, usage: Option<Usage>) -> Value {
    json!({
        "id": r.ids.with_prefix("resp_"),
        "object": "response",
        "created_at": MOCK_CREATED_AT,
        "status": status,
        "background": false,
        "error": null,
        "incomplete_details": null,
        "instructions": echoed(r, "instructions", Value::Null),
        "max_output_tokens": echoed(r, "max_output_tokens", Value::Null),
        "model": r.conversation.model,
        "output": output,
        "parallel_tool_calls": echoed(r, "parallel_tool_calls", json!(true)),
        "previous_response_id": echoed(r, "previous_response_id", Value::Null),
        "reasoning": {"effort": null, "summary": null},
        "store": echoed(r, "store", json!(true)),
        "temperature": echoed(r, "temperature", json!(1.0)),
        "text": echoed(r, "text", json!({"format": {"type": "text"}})),
        "tool_choice": echoed(r, "tool_choice", json!("auto")),
        "tools": echoed(r, "tools", json!([])),
        "top_p": echoed(r, "top_p", json!(1.0)),
        "truncation": echoed(r, "truncation", json!("disabled")),
        "usage": usage.map(usage_json),
        "user": echoed(r, "user", Value::Null),
        "metadata": echoed(r, "metadata", json!({})),
    })
}

/// The single output item, in progress (empty) or completed.
fn output_item(r: &Render<'_>, completed: bool) -> Value {
    let status = if completed {
        "completed"
    } else {
        "in_progress"
    };
    match r.answer {
        Answer::Text(text) => json!({
            "type": "message",
            "id": r.ids.with_prefix("msg_"),
            "status": status,
            "role": "assistant",
            "content": if completed { json!([output_text(text)]) } else { json!([]) },
        }),
        Answer::ToolCall { name, arguments } => json!({
            "type": "function_call",
            "id": r.ids.with_prefix("fc_"),
            "call_id": r.ids.with_prefix("call_"),
            "name": name,
            "arguments": if completed { arguments.as_str() } else { "" },
            "status": status,
        }),
    }
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": []})
}

/// The `response` body.
pub(crate) fn json(r: &Render<'_>) -> Bytes {
    let body = response(r, "completed", vec![output_item(r, true)], Some(r.usage()));
    Bytes::from(body.to_string())
}

/// The SSE frames, each `event: <type>` with a `sequence_number`.
pub(crate) fn stream(r: &Render<'_>) -> Vec<Bytes> {
    let mut payloads: Vec<Value> = Vec::with_capacity(r.chunk_count + 8);
    payloads.push(json!({
        "type": "response.created",
        "response": response(r, "in_progress", vec![], None),
    }));
    payloads.push(json!({
        "type": "response.in_progress",
        "response": response(r, "in_progress", vec![], None),
    }));
    payloads.push(json!({
        "type": "response.output_item.added",
        "output_index": 0,
        "item": output_item(r, false),
    }));
    match r.answer {
        Answer::Text(text) => {
            let item_id = r.ids.with_prefix("msg_");
            let part = |kind: &str, extra: Value| {
                let mut event = json!({
                    "type": kind,
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                });
                if let (Some(event), Value::Object(extra)) = (event.as_object_mut(), extra) {
                    event.extend(extra);
                }
                event
            };
            payloads.push(part(
                "response.content_part.added",
                json!({"part": output_text("")}),
            ));
            for piece in r.pieces(text, false) {
                payloads.push(part(
                    "response.output_text.delta",
                    json!({"delta": piece, "logprobs": []}),
                ));
            }
            payloads.push(part(
                "response.output_text.done",
                json!({"text": text, "logprobs": []}),
            ));
            payloads.push(part(
                "response.content_part.done",
                json!({"part": output_text(text)}),
            ));
        }
        Answer::ToolCall { name, arguments } => {
            let item_id = r.ids.with_prefix("fc_");
            for piece in r.pieces(arguments, true) {
                payloads.push(json!({
                    "type": "response.function_call_arguments.delta",
                    "item_id": item_id,
                    "output_index": 0,
                    "delta": piece,
                }));
            }
            payloads.push(json!({
                "type": "response.function_call_arguments.done",
                "item_id": item_id,
                "output_index": 0,
                "name": name,
                "arguments": arguments,
            }));
        }
    }
    payloads.push(json!({
        "type": "response.output_item.done",
        "output_index": 0,
        "item": output_item(r, true),
    }));
    payloads.push(json!({
        "type": "response.completed",
        "response": response(r, "completed", vec![output_item(r, true)], Some(r.usage())),
    }));
    payloads
        .into_iter()
        .enumerate()
        .map(|(sequence, mut payload)| {
            payload["sequence_number"] = json!(sequence);
            let kind = payload["type"].as_str().unwrap_or_default().to_owned();
            sse_frame(Some(&kind), &payload)
        })
        .collect()
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

    fn events(reply: MockReply) -> Vec<Value> {
        let MockReply::Stream { events } = reply else {
            panic!("expected stream")
        };
        events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let text = std::str::from_utf8(e).unwrap();
                let (event, data) = text.trim_end().split_once('\n').unwrap();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(event.strip_prefix("event: ").unwrap(), data["type"]);
                assert_eq!(data["sequence_number"], i);
                data
            })
            .collect()
    }

    fn body(reply: MockReply) -> Value {
        let MockReply::Json { status, body } = reply else {
            panic!("expected JSON")
        };
        assert_eq!(status, 200);
        serde_json::from_slice(&body).unwrap()
    }

    #[test]
    fn json_text_shape() {
        let req = json!({"model": "gpt-4.1", "input": "hello"});
        let v = body(reply(Frontend::OpenAiResponses, &req, &MockOptions::default()).unwrap());
        assert!(v["id"].as_str().unwrap().starts_with("resp_"));
        assert_eq!(v["object"], "response");
        assert_eq!(v["status"], "completed");
        assert_eq!(v["model"], "gpt-4.1");
        assert_eq!(v["tools"], json!([]));
        assert_eq!(v["tool_choice"], "auto");
        assert_eq!(v["parallel_tool_calls"], true);
        let item = &v["output"][0];
        assert_eq!(item["type"], "message");
        assert_eq!(item["status"], "completed");
        assert_eq!(item["role"], "assistant");
        assert_eq!(
            item["content"],
            json!([{"type": "output_text", "text": DEFAULT_ANSWER, "annotations": []}])
        );
        assert_eq!(
            v["usage"],
            json!({"input_tokens": 1, "output_tokens": 10, "total_tokens": 11,
                   "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                   "output_tokens_details": {"reasoning_tokens": 0}})
        );
    }

    #[test]
    fn stream_text_sequence() {
        let req = json!({"model": "echo", "stream": true,
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "stream me please"}]}]});
        let evs = events(reply(Frontend::OpenAiResponses, &req, &MockOptions::default()).unwrap());
        let types: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let text: String = evs[4..9]
            .iter()
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(text, "stream me please");
        assert_eq!(evs[9]["text"], "stream me please");
        let done = &evs[12]["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"][0]["content"][0]["text"], "stream me please");
        assert_eq!(done["usage"]["input_tokens"], 3);
        assert_eq!(done["usage"]["output_tokens"], 3);
        assert_eq!(evs[0]["response"]["status"], "in_progress");
        assert_eq!(evs[0]["response"]["usage"], Value::Null);
    }

    #[test]
    fn function_call_json_and_stream() {
        let tools =
            json!([{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]);
        let req = json!({"model": "m", "tools": tools, "input": "find docs"});
        let v = body(reply(Frontend::OpenAiResponses, &req, &MockOptions::default()).unwrap());
        let item = &v["output"][0];
        assert_eq!(item["type"], "function_call");
        assert_eq!(item["name"], "lookup");
        assert_eq!(item["status"], "completed");
        assert!(item["call_id"].as_str().unwrap().starts_with("call_"));
        let args = item["arguments"].as_str().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(args).unwrap(),
            json!({"query": "find docs"})
        );
        assert_eq!(v["tools"], tools);

        let mut req = req;
        req["stream"] = json!(true);
        let evs = events(reply(Frontend::OpenAiResponses, &req, &MockOptions::default()).unwrap());
        let deltas: Vec<&str> = evs
            .iter()
            .filter(|e| e["type"] == "response.function_call_arguments.delta")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert!(deltas.len() >= 2);
        assert_eq!(deltas.concat(), args);
        let done = evs
            .iter()
            .find(|e| e["type"] == "response.function_call_arguments.done")
            .unwrap();
        assert_eq!(done["arguments"], args);
        assert_eq!(evs[2]["item"]["arguments"], "");
        assert_eq!(evs.last().unwrap()["response"]["output"][0], *item);
    }

    #[test]
    fn function_call_output_is_acknowledged() {
        let req = json!({"model": "m",
            "tools": [{"type": "function", "name": "lookup"}],
            "input": [
                {"role": "user", "content": "find docs"},
                {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "3 docs"}]});
        let v = body(reply(Frontend::OpenAiResponses, &req, &MockOptions::default()).unwrap());
        assert_eq!(
            v["output"][0]["content"][0]["text"],
            "Tool result received: 3 docs"
        );
    }
}
