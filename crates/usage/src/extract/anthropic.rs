//! Anthropic Messages responses: `message` bodies and the
//! `message_start` … `message_stop` event stream.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::json::{compact, error_message};
use super::lenient::{Field, Json, List, Num, Str};
use super::response::{ResponseFacts, ToolCall, set_text};
use super::usage::{AnthropicUsage, UsageField};

/// The keys read of an event's data, of a body or of a `message` (one
/// shape for all three: a `message` is read by the same keys): an event's
/// `type`, `message`, `index`, `content_block`, `delta`, `usage`, `error`,
/// a message's `model`, `stop_reason`, `usage`, `content`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct AnthropicIn<'a> {
    #[serde(borrow, rename = "type")]
    kind: Str<'a>,
    #[serde(borrow)]
    message: Field<Box<AnthropicIn<'a>>>,
    index: Num,
    #[serde(borrow)]
    content_block: Field<BlockIn<'a>>,
    #[serde(borrow)]
    delta: Field<BlockIn<'a>>,
    error: Json,
    #[serde(borrow)]
    model: Str<'a>,
    #[serde(borrow)]
    stop_reason: Str<'a>,
    usage: UsageField,
    #[serde(borrow)]
    content: List<BlockIn<'a>>,
}

/// A content block, or a delta (`content_block_delta`'s or
/// `message_delta`'s): they share their keys.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BlockIn<'a> {
    #[serde(borrow, rename = "type")]
    kind: Str<'a>,
    #[serde(borrow)]
    text: Str<'a>,
    #[serde(borrow)]
    thinking: Str<'a>,
    #[serde(borrow)]
    name: Str<'a>,
    input: Json,
    #[serde(borrow)]
    partial_json: Str<'a>,
    #[serde(borrow)]
    stop_reason: Str<'a>,
}

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
    fn from_json(block: BlockIn<'_>) -> Block {
        let text_of = |s: Str<'_>| s.into_text().map(String::from).unwrap_or_default();
        match block.kind.get() {
            Some("text") => Block {
                kind: Kind::Text,
                text: text_of(block.text),
                ..Block::default()
            },
            Some("thinking") => Block {
                kind: Kind::Thinking,
                text: text_of(block.thinking),
                ..Block::default()
            },
            Some("tool_use") => Block {
                kind: Kind::ToolUse,
                name: text_of(block.name),
                input: block.input.as_ref().map(compact),
                ..Block::default()
            },
            _ => Block::default(),
        }
    }

    fn add_delta(&mut self, delta: &BlockIn<'_>) {
        match delta.kind.get() {
            Some("text_delta") => {
                if self.kind == Kind::Other {
                    self.kind = Kind::Text;
                }
                self.text.push_str(delta.text.get().unwrap_or_default());
            }
            Some("thinking_delta") => {
                if self.kind == Kind::Other {
                    self.kind = Kind::Thinking;
                }
                self.text.push_str(delta.thinking.get().unwrap_or_default());
            }
            Some("input_json_delta") => {
                if self.kind == Kind::Other {
                    self.kind = Kind::ToolUse;
                }
                self.partial
                    .push_str(delta.partial_json.get().unwrap_or_default());
            }
            _ => {}
        }
    }
}

impl AnthropicState {
    /// One SSE event (its `type` field, else the SSE event name, says which).
    pub(crate) fn event(&mut self, name: Option<&str>, data: AnthropicIn<'_>) {
        let kind = data.kind.nonempty().or(name).unwrap_or_default();
        match kind {
            "message_start" => {
                if let Field::Object(message) = data.message {
                    self.message(*message);
                }
            }
            "content_block_start" => {
                let key = self.block_key(&data, true);
                let block = data
                    .content_block
                    .into_object()
                    .map(Block::from_json)
                    .unwrap_or_default();
                self.blocks.insert(key, block);
            }
            "content_block_delta" => {
                let key = self.block_key(&data, false);
                if data.delta.is_present() {
                    let delta = data.delta.into_object_or_default();
                    self.blocks.entry(key).or_default().add_delta(&delta);
                }
            }
            "message_delta" => {
                let reason = data.delta.object().and_then(|d| d.stop_reason.nonempty());
                if let Some(reason) = reason {
                    set_text(&mut self.stop_reason, reason);
                }
                self.usage.merge(&data.usage);
            }
            "error" => self.set_error(&data),
            "message" => self.body(data),
            _ => {}
        }
    }

    /// A whole JSON body: a `message` or an `error`.
    pub(crate) fn body(&mut self, body: AnthropicIn<'_>) {
        self.set_error(&body);
        self.message(body);
    }

    fn set_error(&mut self, value: &AnthropicIn<'_>) {
        if let Some(message) = value.error.as_ref().and_then(error_message) {
            self.error = Some(message);
        }
    }

    fn message(&mut self, message: AnthropicIn<'_>) {
        if let Some(model) = message.model.nonempty() {
            set_text(&mut self.model, model);
        }
        if let Some(reason) = message.stop_reason.nonempty() {
            set_text(&mut self.stop_reason, reason);
        }
        self.usage.merge(&message.usage);
        for (position, block) in message.content.0.into_iter().enumerate() {
            self.blocks.insert(position as u64, Block::from_json(block));
        }
    }

    /// The block an event is about: its `index`; without one, a new block
    /// after the last (`start`) or the last block (a delta).
    fn block_key(&self, data: &AnthropicIn<'_>, start: bool) -> u64 {
        data.index.index().unwrap_or_else(|| {
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
