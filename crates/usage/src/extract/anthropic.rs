//! Anthropic Messages responses: `message` bodies and the
//! `message_start` … `message_stop` event stream.

use std::collections::BTreeMap;

use serde_json::Value;

use super::json::{compact, error_message, index, string};
use super::response::{ResponseFacts, ToolCall};
use super::usage::AnthropicUsage;

#[derive(Debug, Default)]
pub(crate) struct AnthropicState {
    blocks: BTreeMap<u64, Block>,
    usage: AnthropicUsage,
    stop_reason: Option<String>,
    model: Option<String>,
    pub(crate) error: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Kind {
    #[default]
    Other,
    Text,
    ToolUse,
    Thinking,
}

#[derive(Debug, Default)]
struct Block {
    kind: Kind,
    /// Text of a text block, thinking of a thinking block.
    text: String,
    name: String,
    /// The `input` object of a tool_use block, compact.
    input: Option<String>,
    /// Concatenated `input_json_delta.partial_json` pieces.
    partial: String,
}

impl Block {
    fn from_json(block: &Value) -> Block {
        let text_of = |key: &str| {
            block
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        match block.get("type").and_then(Value::as_str) {
            Some("text") => Block {
                kind: Kind::Text,
                text: text_of("text"),
                ..Block::default()
            },
            Some("thinking") => Block {
                kind: Kind::Thinking,
                text: text_of("thinking"),
                ..Block::default()
            },
            Some("tool_use") => Block {
                kind: Kind::ToolUse,
                name: text_of("name"),
                input: block.get("input").filter(|i| !i.is_null()).map(compact),
                ..Block::default()
            },
            _ => Block::default(),
        }
    }

    fn add_delta(&mut self, delta: &Value) {
        let piece = |key: &str| delta.get(key).and_then(Value::as_str);
        match delta.get("type").and_then(Value::as_str) {
            Some("text_delta") => {
                if self.kind == Kind::Other {
                    self.kind = Kind::Text;
                }
                self.text.push_str(piece("text").unwrap_or_default());
            }
            Some("thinking_delta") => {
                if self.kind == Kind::Other {
                    self.kind = Kind::Thinking;
                }
                self.text.push_str(piece("thinking").unwrap_or_default());
            }
            Some("input_json_delta") => {
                if self.kind == Kind::Other {
                    self.kind = Kind::ToolUse;
                }
                self.partial
                    .push_str(piece("partial_json").unwrap_or_default());
            }
            _ => {}
        }
    }
}

impl AnthropicState {
    /// One SSE event (its `type` field, else the SSE event name, says which).
    pub(crate) fn event(&mut self, name: Option<&str>, data: &Value) {
        let kind = string(data, "type").or(name).unwrap_or_default();
        match kind {
            "message_start" => {
                if let Some(message) = data.get("message") {
                    self.message(message);
                }
            }
            "content_block_start" => {
                let key = self.block_key(data, true);
                let block = data
                    .get("content_block")
                    .map(Block::from_json)
                    .unwrap_or_default();
                self.blocks.insert(key, block);
            }
            "content_block_delta" => {
                let key = self.block_key(data, false);
                if let Some(delta) = data.get("delta") {
                    self.blocks.entry(key).or_default().add_delta(delta);
                }
            }
            "message_delta" => {
                if let Some(reason) = data.get("delta").and_then(|d| string(d, "stop_reason")) {
                    self.stop_reason = Some(reason.to_owned());
                }
                if let Some(usage) = data.get("usage") {
                    self.usage.merge(usage);
                }
            }
            "error" => self.set_error(data),
            "message" => self.body(data),
            _ => {}
        }
    }

    /// A whole JSON body: a `message` or an `error`.
    pub(crate) fn body(&mut self, body: &Value) {
        self.set_error(body);
        self.message(body);
    }

    fn set_error(&mut self, value: &Value) {
        if let Some(message) = value.get("error").and_then(error_message) {
            self.error = Some(message);
        }
    }

    fn message(&mut self, message: &Value) {
        if let Some(model) = string(message, "model") {
            self.model = Some(model.to_owned());
        }
        if let Some(reason) = string(message, "stop_reason") {
            self.stop_reason = Some(reason.to_owned());
        }
        if let Some(usage) = message.get("usage") {
            self.usage.merge(usage);
        }
        if let Some(content) = message.get("content").and_then(Value::as_array) {
            for (position, block) in content.iter().enumerate() {
                self.blocks.insert(position as u64, Block::from_json(block));
            }
        }
    }

    /// The block an event is about: its `index`; without one, a new block
    /// after the last (`start`) or the last block (a delta).
    fn block_key(&self, data: &Value, start: bool) -> u64 {
        index(data, "index").unwrap_or_else(|| {
            let last = self.blocks.keys().next_back().copied();
            match (last, start) {
                (Some(last), true) => last.saturating_add(1),
                (Some(last), false) => last,
                (None, _) => 0,
            }
        })
    }

    pub(crate) fn finish(self) -> ResponseFacts {
        let mut facts = ResponseFacts {
            usage: self.usage.normalized(),
            finish_reason: self.stop_reason,
            error: self.error,
            model: self.model,
            ..ResponseFacts::default()
        };
        for block in self.blocks.into_values() {
            match block.kind {
                Kind::Text => facts.text.push_str(&block.text),
                Kind::Thinking => facts.reasoning.push_str(&block.text),
                Kind::ToolUse => facts.tool_calls.push(ToolCall {
                    name: block.name,
                    arguments: if block.partial.is_empty() {
                        block.input.unwrap_or_else(|| "{}".to_owned())
                    } else {
                        block.partial
                    },
                }),
                Kind::Other => {}
            }
        }
        facts
    }
}
