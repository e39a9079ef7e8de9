//! Complete answers and errors: Anthropic message ⇄ OpenAI chat completion,
//! with finish reasons and usage (cached tokens included) mapped.
//!
//! Usage: OpenAI `prompt_tokens` counts cached tokens, Anthropic
//! `input_tokens` does not, so `prompt_tokens = input_tokens +
//! cache_read_input_tokens + cache_creation_input_tokens` and
//! `prompt_tokens_details.cached_tokens = cache_read_input_tokens`; the other
//! way `input_tokens = prompt_tokens - cached_tokens`.

use bytes::Bytes;
use serde_json::{Value, json};

use super::TranslateError;
use super::types::*;
use crate::protocol::Frontend;

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// OpenAI `finish_reason` → Anthropic `stop_reason`.
pub fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic usage as an OpenAI `usage` object.
pub fn chat_usage(u: &AnthropicUsage) -> Value {
    let cached = u.cache_read_input_tokens.unwrap_or(0);
    let prompt = u.input_tokens.unwrap_or(0) + cached + u.cache_creation_input_tokens.unwrap_or(0);
    let completion = u.output_tokens.unwrap_or(0);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// OpenAI usage as an Anthropic `usage` object.
pub fn anthropic_usage(u: &ChatUsage) -> Value {
    let cached = u
        .prompt_tokens_details
        .as_ref()
        .and_then(|d| d.cached_tokens)
        .unwrap_or(0);
    json!({
        "input_tokens": u.prompt_tokens.saturating_sub(cached),
        "output_tokens": u.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    })
}

/// Seconds since the Unix epoch, for OpenAI `created`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An Anthropic message body as an OpenAI chat completion body.
pub fn anthropic_to_chat(body: &[u8]) -> Result<Bytes, TranslateError> {
    let m: MessagesResponse = serde_json::from_slice(body).map_err(|e| {
        TranslateError::Invalid(format!(
            "unexpected Anthropic message from the backend: {e}"
        ))
    })?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in m.content {
        match b.kind.as_str() {
            "text" => text.push_str(b.text.as_deref().unwrap_or_default()),
            "tool_use" => calls.push(json!({
                "id": b.id.unwrap_or_default(),
                "type": "function",
                "function": {
                    "name": b.name.unwrap_or_default(),
                    "arguments": b.input.map_or_else(|| "{}".to_owned(), |r| r.get().to_owned()),
                },
            })),
            _ => {}
        }
    }
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) },
        "refusal": null,
    });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let out = json!({
        "id": m.id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": m.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(m.stop_reason.as_deref()),
        }],
        "usage": chat_usage(&m.usage),
    });
    Ok(Bytes::from(out.to_string()))
}

/// An OpenAI chat completion body as an Anthropic message body.
pub fn chat_to_anthropic(body: &[u8]) -> Result<Bytes, TranslateError> {
    let r: ChatResponse = serde_json::from_slice(body).map_err(|e| {
        TranslateError::Invalid(format!(
            "unexpected OpenAI chat completion from the backend: {e}"
        ))
    })?;
    let Some(choice) = r.choices.into_iter().next() else {
        return Err(TranslateError::Invalid(
            "the backend's chat completion has no choices".into(),
        ));
    };
    let mut blocks: Vec<Block> = Vec::new();
    let text = match read_content::<ChatPart>(choice.message.content.as_deref(), "content")
        .map_err(TranslateError::Invalid)?
    {
        Some(Content::Text(t)) => t,
        Some(Content::Parts(parts)) => parts.into_iter().filter_map(|p| p.text).collect(),
        None => String::new(),
    };
    if !text.is_empty() {
        blocks.push(Block {
            kind: "text".into(),
            text: Some(text),
            ..Block::default()
        });
    }
    for call in choice.message.tool_calls.unwrap_or_default() {
        let input = arguments_to_input(&call.function.arguments);
        blocks.push(Block {
            kind: "tool_use".into(),
            id: Some(call.id),
            name: Some(call.function.name),
            input: Some(input),
            ..Block::default()
        });
    }
    #[derive(serde::Serialize)]
    struct Message<'a> {
        id: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
        role: &'static str,
        model: &'a str,
        content: &'a [Block],
        stop_reason: &'static str,
        stop_sequence: Option<()>,
        usage: Value,
    }
    let out = Message {
        id: &r.id,
        kind: "message",
        role: "assistant",
        model: &r.model,
        content: &blocks,
        stop_reason: stop_reason(choice.finish_reason.as_deref()),
        stop_sequence: None,
        usage: anthropic_usage(&r.usage.unwrap_or_default()),
    };
    serde_json::to_vec(&out)
        .map(Bytes::from)
        .map_err(|e| TranslateError::Invalid(format!("cannot encode the translated answer: {e}")))
}

/// The message of an error body in either protocol's style (or its text).
pub fn error_message(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Outer {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Inner {
        Object { message: String },
        Text(String),
    }
    if let Ok(o) = serde_json::from_slice::<Outer>(body) {
        return Some(match o.error {
            Inner::Object { message } | Inner::Text(message) => message,
        });
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    (!text.is_empty()).then(|| text.chars().take(500).collect())
}

/// A backend error (status, body) as the `client`'s error: the status mapped
/// where the protocols differ (Anthropic's 529 "overloaded" is 503 for
/// OpenAI clients) and the body in the client's style with the backend's message.
pub fn error(client: Frontend, status: u16, body: &[u8]) -> (u16, Bytes) {
    let status = match (client, status) {
        (Frontend::OpenAiChat | Frontend::OpenAiResponses, 529) => 503,
        _ => status,
    };
    let message = error_message(body)
        .map(|m| format!("backend error: {m}"))
        .unwrap_or_else(|| format!("backend answered HTTP {status}"));
    (status, client.error_body(status, &message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_answer_becomes_a_chat_completion() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[{"type":"text","text":"Let me look."},{"type":"tool_use","id":"toolu_1","name":"search","input":{"q":"x","n":2}}],"stop_reason":"tool_use","usage":{"input_tokens":10,"output_tokens":5,"cache_read_input_tokens":90,"cache_creation_input_tokens":0}}"#;
        let v: Value = serde_json::from_slice(&anthropic_to_chat(body).unwrap()).unwrap();
        let c = &v["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls");
        assert_eq!(c["message"]["content"], "Let me look.");
        assert_eq!(c["message"]["tool_calls"][0]["id"], "toolu_1");
        assert_eq!(
            c["message"]["tool_calls"][0]["function"]["arguments"],
            r#"{"q":"x","n":2}"#
        );
        assert_eq!(v["usage"]["prompt_tokens"], 100);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 90);
        assert_eq!(v["usage"]["total_tokens"], 105);
    }

    #[test]
    fn chat_completion_becomes_an_anthropic_message() {
        let body = br#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"b\":1,\"a\":2}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":8}}}"#;
        let out = chat_to_anthropic(body).unwrap();
        // Arguments keep their key order: they cross as raw bytes.
        assert!(
            std::str::from_utf8(&out)
                .unwrap()
                .contains(r#""input":{"b":1,"a":2}"#)
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(v["content"][0]["type"], "tool_use");
        assert_eq!(v["usage"]["input_tokens"], 4);
        assert_eq!(v["usage"]["cache_read_input_tokens"], 8);
        assert_eq!(v["usage"]["output_tokens"], 3);
    }

    #[test]
    fn tool_arguments_that_are_not_an_object_are_kept_as_raw_text() {
        // Truncated at max_tokens: the answer still translates, text preserved.
        let body = br#"{"id":"c","model":"gpt","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"city\": \"Par"}},{"id":"call_2","type":"function","function":{"name":"g","arguments":"[1,2]"}},{"id":"call_3","type":"function","function":{"name":"h","arguments":"null"}},{"id":"call_4","type":"function","function":{"name":"k","arguments":" "}}]},"finish_reason":"length"}]}"#;
        let v: Value = serde_json::from_slice(&chat_to_anthropic(body).unwrap()).unwrap();
        assert_eq!(v["stop_reason"], "max_tokens");
        assert_eq!(
            v["content"][0]["input"],
            json!({"_raw": r#"{"city": "Par"#})
        );
        assert_eq!(v["content"][1]["input"], json!({"_raw": "[1,2]"}));
        assert_eq!(v["content"][2]["input"], json!({"_raw": "null"}));
        assert_eq!(v["content"][3]["input"], json!({}));
    }

    #[test]
    fn errors_take_the_clients_style() {
        let (status, body) = error(
            Frontend::OpenAiChat,
            529,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(status, 503);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["message"], "backend error: Overloaded");
        let (status, body) = error(
            Frontend::AnthropicMessages,
            429,
            br#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#,
        );
        assert_eq!(status, 429);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["message"], "backend error: slow down");
    }
}
