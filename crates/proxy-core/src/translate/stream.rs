//! The streaming transcoder: fed the backend's SSE bytes in any chunking, it
//! emits the same answer as the client protocol's SSE events — text deltas,
//! tool calls with their partial JSON arguments, the finish/stop reason,
//! usage and the terminal `[DONE]` / `message_stop`.
//!
//! Events are translated as soon as they are complete; a partial line waits
//! for its remainder, so the output never depends on where chunks split.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{Value, json};

use super::response::{anthropic_usage, chat_usage, finish_reason, stop_reason, unix_now};
use super::types::{AnthropicUsage, ChatUsage};
use crate::protocol::Frontend;

/// Most bytes of unfinished events held at once (the line being read plus
/// the data of the event being built). A backend that goes past it (never
/// sends a newline or a blank line) ends the stream with an error event.
pub const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;

/// Splits an SSE byte stream into `(event name, data)` pairs.
#[derive(Debug, Default)]
struct SseSplitter {
    line: Vec<u8>,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseSplitter {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<(Option<String>, String)>) {
        let mut rest = chunk;
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            self.line.extend_from_slice(&rest[..nl]);
            rest = &rest[nl + 1..];
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, out);
        }
        self.line.extend_from_slice(rest);
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<(Option<String>, String)>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.has_data {
                out.push((self.event.take(), std::mem::take(&mut self.data)));
            }
            self.event = None;
            self.has_data = false;
            return;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
    }

    /// Bytes held for events not complete yet.
    fn pending(&self) -> usize {
        self.line.len() + self.data.len()
    }

    fn finish(&mut self, out: &mut Vec<(Option<String>, String)>) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, out);
        }
        self.line_done(b"", out);
    }
}

/// Transcodes one backend SSE stream into the client's protocol.
#[derive(Debug)]
pub struct StreamTranscoder {
    splitter: SseSplitter,
    state: State,
    /// Why the stream was ended early (the client got an error event).
    failure: Option<String>,
}

#[derive(Debug)]
enum State {
    AnthropicToChat(AnthropicToChat),
    ChatToAnthropic(ChatToAnthropic),
}

impl StreamTranscoder {
    /// Anthropic backend stream → OpenAI chat chunks; a usage chunk is sent
    /// before `[DONE]` only when `include_usage`.
    pub fn anthropic_to_chat(include_usage: bool) -> StreamTranscoder {
        StreamTranscoder {
            splitter: SseSplitter::default(),
            failure: None,
            state: State::AnthropicToChat(AnthropicToChat {
                include_usage,
                created: unix_now(),
                ..AnthropicToChat::default()
            }),
        }
    }

    /// OpenAI chat backend stream → Anthropic message events.
    pub fn chat_to_anthropic() -> StreamTranscoder {
        StreamTranscoder {
            splitter: SseSplitter::default(),
            failure: None,
            state: State::ChatToAnthropic(ChatToAnthropic::default()),
        }
    }

    /// Feeds backend bytes; returns the client bytes ready now (maybe empty).
    /// Past [`MAX_PENDING_BYTES`] of unfinished events the answer ends with
    /// an error event in the client's protocol and [`Self::failure`] says why.
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        if self.failure.is_some() {
            return Bytes::new();
        }
        let mut events = Vec::new();
        self.splitter.push(chunk, &mut events);
        let out = self.translate(events, false);
        if self.splitter.pending() <= MAX_PENDING_BYTES {
            return out;
        }
        let message = format!(
            "backend stream error: an event exceeded {} MiB without ending",
            MAX_PENDING_BYTES / (1024 * 1024)
        );
        tracing::debug!(pending = self.splitter.pending(), "{message}");
        self.splitter = SseSplitter::default();
        let client = match self.state {
            State::AnthropicToChat(_) => Frontend::OpenAiChat,
            State::ChatToAnthropic(_) => Frontend::AnthropicMessages,
        };
        let mut out = BytesMut::from(&out[..]);
        out.extend_from_slice(&client.stream_error_event(502, &message));
        self.failure = Some(message);
        out.freeze()
    }

    /// Why the transcoder ended the stream early, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// The backend stream ended: translates what is left and closes the
    /// answer if the backend finished it without its terminal event.
    pub fn finish(&mut self) -> Bytes {
        if self.failure.is_some() {
            return Bytes::new();
        }
        let mut events = Vec::new();
        self.splitter.finish(&mut events);
        self.translate(events, true)
    }

    /// The backend stream broke off: drops the unfinished event and closes
    /// nothing, so the error event the caller sends next is not preceded by
    /// a terminal event (`message_stop`, `[DONE]`) that clients stop at.
    pub fn abort(&mut self) -> Bytes {
        self.splitter = SseSplitter::default();
        Bytes::new()
    }

    fn translate(&mut self, events: Vec<(Option<String>, String)>, end: bool) -> Bytes {
        let mut out = BytesMut::new();
        for (name, data) in events {
            match &mut self.state {
                State::AnthropicToChat(s) => s.event(name.as_deref(), &data, &mut out),
                State::ChatToAnthropic(s) => s.event(&data, &mut out),
            }
        }
        if end {
            match &mut self.state {
                State::AnthropicToChat(_) => {}
                State::ChatToAnthropic(s) => {
                    if s.finish.is_some() {
                        s.close(&mut out);
                    }
                }
            }
        }
        out.freeze()
    }
}

fn sse_data(out: &mut BytesMut, data: &Value) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

fn sse_event(out: &mut BytesMut, name: &str, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\n");
    sse_data(out, data);
}

/// HTTP-like status of a streamed error, from its type or code.
fn error_status(kind: &str) -> u16 {
    match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "permission_error" => 403,
        "not_found_error" => 404,
        "rate_limit_error" | "rate_limit_exceeded" => 429,
        "overloaded_error" => 503,
        "timeout_error" => 504,
        _ => 500,
    }
}

// ------------------------------------------------- Anthropic → OpenAI chat

#[derive(Debug, Default)]
struct AnthropicToChat {
    include_usage: bool,
    created: u64,
    id: String,
    model: String,
    usage: AnthropicUsage,
    /// Anthropic block index → OpenAI tool call index.
    tools: HashMap<u64, u64>,
    finished: bool,
    done: bool,
}

#[derive(Deserialize)]
struct AnthropicEvent {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    index: u64,
    #[serde(default)]
    message: Option<StartMessage>,
    #[serde(default)]
    content_block: Option<super::types::Block>,
    #[serde(default)]
    delta: Option<AnthropicDelta>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct AnthropicDelta {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    partial_json: Option<String>,
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    message: String,
}

fn merge_usage(into: &mut AnthropicUsage, from: AnthropicUsage) {
    into.input_tokens = from.input_tokens.or(into.input_tokens);
    into.output_tokens = from.output_tokens.or(into.output_tokens);
    into.cache_read_input_tokens = from
        .cache_read_input_tokens
        .or(into.cache_read_input_tokens);
    into.cache_creation_input_tokens = from
        .cache_creation_input_tokens
        .or(into.cache_creation_input_tokens);
}

impl AnthropicToChat {
    fn chunk(&self, out: &mut BytesMut, delta: Value, finish: Option<&str>) {
        sse_data(
            out,
            &json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            }),
        );
    }

    fn event(&mut self, _name: Option<&str>, data: &str, out: &mut BytesMut) {
        if self.done {
            return;
        }
        let Ok(ev) = serde_json::from_str::<AnthropicEvent>(data) else {
            tracing::debug!("skipped an Anthropic stream event that is not JSON");
            return;
        };
        match ev.kind.as_str() {
            "message_start" => {
                if let Some(m) = ev.message {
                    self.id = m.id;
                    self.model = m.model;
                    if let Some(u) = m.usage {
                        merge_usage(&mut self.usage, u);
                    }
                }
                self.chunk(out, json!({"role": "assistant", "content": ""}), None);
            }
            "content_block_start" => {
                let Some(block) = ev.content_block else {
                    return;
                };
                match block.kind.as_str() {
                    "tool_use" => {
                        let n = self.tools.len() as u64;
                        self.tools.insert(ev.index, n);
                        self.chunk(
                            out,
                            json!({"tool_calls": [{
                                "index": n,
                                "id": block.id.unwrap_or_default(),
                                "type": "function",
                                "function": {"name": block.name.unwrap_or_default(), "arguments": ""},
                            }]}),
                            None,
                        );
                    }
                    "text" => {
                        if let Some(t) = block.text.filter(|t| !t.is_empty()) {
                            self.chunk(out, json!({"content": t}), None);
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let Some(d) = ev.delta else { return };
                match d.kind.as_str() {
                    "text_delta" => {
                        self.chunk(out, json!({"content": d.text.unwrap_or_default()}), None);
                    }
                    "input_json_delta" => {
                        if let Some(n) = self.tools.get(&ev.index) {
                            self.chunk(
                                out,
                                json!({"tool_calls": [{
                                    "index": n,
                                    "function": {"arguments": d.partial_json.unwrap_or_default()},
                                }]}),
                                None,
                            );
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(u) = ev.usage {
                    merge_usage(&mut self.usage, u);
                }
                let reason = finish_reason(ev.delta.and_then(|d| d.stop_reason).as_deref());
                self.chunk(out, json!({}), Some(reason));
                self.finished = true;
            }
            "message_stop" => {
                if !self.finished {
                    self.chunk(out, json!({}), Some("stop"));
                }
                if self.include_usage {
                    sse_data(
                        out,
                        &json!({
                            "id": self.id,
                            "object": "chat.completion.chunk",
                            "created": self.created,
                            "model": self.model,
                            "choices": [],
                            "usage": chat_usage(&self.usage),
                        }),
                    );
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                self.done = true;
            }
            "error" => {
                let e = ev.error.unwrap_or(ErrorBody {
                    kind: String::new(),
                    code: None,
                    message: "backend stream error".into(),
                });
                out.extend_from_slice(&Frontend::OpenAiChat.stream_error_event(
                    error_status(&e.kind),
                    &format!("backend error: {}", e.message),
                ));
                self.done = true;
            }
            _ => {}
        }
    }
}

// ------------------------------------------------- OpenAI chat → Anthropic

#[derive(Debug, Default)]
struct ChatToAnthropic {
    started: bool,
    /// Index of the open block and whether it is text.
    open: Option<(u64, bool)>,
    next_block: u64,
    /// OpenAI tool call index → Anthropic block index.
    tools: HashMap<u64, u64>,
    finish: Option<String>,
    usage: Option<ChatUsage>,
    done: bool,
}

#[derive(Deserialize)]
struct ChatChunk {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<ChatUsage>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<ChunkDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ChunkToolCall>>,
}

#[derive(Deserialize)]
struct ChunkToolCall {
    #[serde(default)]
    index: u64,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<ChunkFunction>,
}

#[derive(Deserialize)]
struct ChunkFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

impl ChatToAnthropic {
    fn start(&mut self, id: &str, model: &str, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        sse_event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
        );
    }

    fn close_block(&mut self, out: &mut BytesMut) {
        if let Some((index, _)) = self.open.take() {
            sse_event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    fn open_block(&mut self, block: Value, text: bool, out: &mut BytesMut) -> u64 {
        self.close_block(out);
        let index = self.next_block;
        self.next_block += 1;
        self.open = Some((index, text));
        sse_event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        index
    }

    fn event(&mut self, data: &str, out: &mut BytesMut) {
        if self.done {
            return;
        }
        if data.trim() == "[DONE]" {
            self.close(out);
            return;
        }
        let Ok(chunk) = serde_json::from_str::<ChatChunk>(data) else {
            tracing::debug!("skipped an OpenAI stream chunk that is not JSON");
            return;
        };
        if let Some(e) = chunk.error {
            let kind = e
                .code
                .as_ref()
                .and_then(Value::as_str)
                .map_or(
                    e.kind.as_str(),
                    |c| if e.kind.is_empty() { c } else { &e.kind },
                );
            out.extend_from_slice(
                &Frontend::AnthropicMessages.stream_error_event(
                    error_status(kind),
                    &format!("backend error: {}", e.message),
                ),
            );
            self.done = true;
            return;
        }
        self.start(&chunk.id, &chunk.model, out);
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        for choice in chunk.choices {
            if let Some(d) = choice.delta {
                if let Some(text) = d.content.filter(|t| !t.is_empty()) {
                    let index = match self.open {
                        Some((i, true)) => i,
                        _ => self.open_block(json!({"type": "text", "text": ""}), true, out),
                    };
                    sse_event(
                        out,
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": index,
                                "delta": {"type": "text_delta", "text": text}}),
                    );
                }
                for call in d.tool_calls.unwrap_or_default() {
                    let function = call.function.unwrap_or(ChunkFunction {
                        name: None,
                        arguments: None,
                    });
                    let index = match self.tools.get(&call.index) {
                        Some(i) => *i,
                        None => {
                            let id = call
                                .id
                                .unwrap_or_else(|| format!("toolu_{}", self.next_block));
                            let i = self.open_block(
                                json!({"type": "tool_use", "id": id,
                                       "name": function.name.clone().unwrap_or_default(), "input": {}}),
                                false,
                                out,
                            );
                            self.tools.insert(call.index, i);
                            i
                        }
                    };
                    if let Some(args) = function.arguments.filter(|a| !a.is_empty()) {
                        sse_event(
                            out,
                            "content_block_delta",
                            &json!({"type": "content_block_delta", "index": index,
                                    "delta": {"type": "input_json_delta", "partial_json": args}}),
                        );
                    }
                }
            }
            if let Some(reason) = choice.finish_reason {
                self.finish = Some(reason);
            }
        }
    }

    /// Closes the open block and ends the message.
    fn close(&mut self, out: &mut BytesMut) {
        if self.done {
            return;
        }
        self.start("", "", out);
        self.close_block(out);
        let usage = anthropic_usage(&self.usage.take().unwrap_or_default());
        sse_event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": stop_reason(self.finish.as_deref()), "stop_sequence": null},
                    "usage": usage}),
        );
        sse_event(out, "message_stop", &json!({"type": "message_stop"}));
        self.done = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_without_newlines_is_cut_off_at_the_cap() {
        for (mut t, error_marker) in [
            (StreamTranscoder::chat_to_anthropic(), "event: error"),
            (
                StreamTranscoder::anthropic_to_chat(false),
                "data: {\"error\"",
            ),
        ] {
            let mb = vec![b'x'; 1024 * 1024];
            let mut out = Vec::new();
            let mut pushes = 0;
            while t.failure().is_none() && pushes < 20 {
                out.extend_from_slice(&t.push(&mb));
                pushes += 1;
            }
            assert_eq!(pushes, 17, "cut off just past 16 MiB");
            let text = String::from_utf8(out).unwrap();
            assert!(text.starts_with(error_marker), "{text}");
            assert!(text.contains("exceeded 16 MiB"), "{text}");
            assert!(t.failure().unwrap().contains("16 MiB"));
            // Nothing is held or sent after that.
            assert!(t.splitter.pending() == 0);
            assert!(t.push(b"\n\ndata: [DONE]\n\n").is_empty());
            assert!(t.finish().is_empty());
        }
        // Many data lines of one never-ending event count too.
        let mut t = StreamTranscoder::chat_to_anthropic();
        let line = [
            vec![b'd', b'a', b't', b'a', b':'],
            vec![b'y'; 1024 * 1024],
            vec![b'\n'],
        ]
        .concat();
        for _ in 0..17 {
            t.push(&line);
        }
        assert!(t.failure().is_some());
    }

    #[test]
    fn abort_after_the_finish_reason_closes_nothing() {
        let mut t = StreamTranscoder::chat_to_anthropic();
        let out = t.push(
            b"data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\n",
        );
        assert!(std::str::from_utf8(&out).unwrap().contains("text_delta"));
        let rest = t.abort();
        assert!(rest.is_empty(), "{rest:?}");
    }
}
