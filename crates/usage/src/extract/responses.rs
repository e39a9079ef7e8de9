//! OpenAI Responses: `response` bodies and the `response.*` event stream.

use std::collections::{BTreeMap, HashMap};

use llm_proxy_core::Frontend;
use serde_json::Value;

use super::json::{error_message, index, string};
use super::response::{ResponseFacts, ToolCall, join_nonempty};
use super::usage::usage_from_json;
use crate::record::BackendUsage;

/// Statuses that end a response (others, e.g. `in_progress`, are no finish reason).
const TERMINAL_STATUSES: &[&str] = &["completed", "incomplete", "failed", "cancelled"];

#[derive(Debug, Default)]
pub(crate) struct ResponsesState {
    items: BTreeMap<u64, Item>,
    ids: HashMap<String, u64>,
    usage: Option<BackendUsage>,
    model: Option<String>,
    status: Option<String>,
    incomplete_reason: Option<String>,
    pub(crate) error: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Kind {
    #[default]
    Other,
    Message,
    /// `function_call` or `custom_tool_call` (its `input` is kept as arguments).
    ToolCall,
    Reasoning,
}

#[derive(Debug, Default)]
struct Item {
    kind: Kind,
    /// Message content parts by `content_index` (output_text text or refusal).
    parts: BTreeMap<u64, String>,
    name: String,
    arguments: String,
    reasoning: String,
}

impl Item {
    fn from_json(item: &Value) -> Item {
        let text_of = |key: &str| {
            item.get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                let mut parts = BTreeMap::new();
                let content = item.get("content").and_then(Value::as_array);
                for (position, part) in content.into_iter().flatten().enumerate() {
                    if let Some(text) = part_text(part) {
                        parts.insert(position as u64, text.to_owned());
                    }
                }
                Item {
                    kind: Kind::Message,
                    parts,
                    ..Item::default()
                }
            }
            Some("function_call") => Item {
                kind: Kind::ToolCall,
                name: text_of("name"),
                arguments: text_of("arguments"),
                ..Item::default()
            },
            Some("custom_tool_call") => Item {
                kind: Kind::ToolCall,
                name: text_of("name"),
                arguments: text_of("input"),
                ..Item::default()
            },
            Some("reasoning") => {
                let texts = ["summary", "content"]
                    .into_iter()
                    .filter_map(|key| item.get(key).and_then(Value::as_array))
                    .flatten()
                    .filter_map(|part| part.get("text").and_then(Value::as_str));
                Item {
                    kind: Kind::Reasoning,
                    reasoning: join_nonempty(texts),
                    ..Item::default()
                }
            }
            _ => Item::default(),
        }
    }

    fn becomes(&mut self, kind: Kind) {
        if self.kind == Kind::Other {
            self.kind = kind;
        }
    }
}

fn part_text(part: &Value) -> Option<&str> {
    part.get("text")
        .or_else(|| part.get("refusal"))
        .and_then(Value::as_str)
}

impl ResponsesState {
    /// One SSE event (its `type` field, else the SSE event name, says which).
    pub(crate) fn event(&mut self, name: Option<&str>, data: &Value) {
        let kind = string(data, "type").or(name).unwrap_or_default();
        let text = |key: &str| data.get(key).and_then(Value::as_str);
        match kind {
            "response.created"
            | "response.queued"
            | "response.in_progress"
            | "response.completed"
            | "response.incomplete"
            | "response.failed"
            | "response.cancelled" => {
                if let Some(response) = data.get("response") {
                    self.response(response);
                }
            }
            "response.output_item.added" => {
                if let Some(item) = data.get("item") {
                    let key = self.item_key(data, item);
                    self.items
                        .entry(key)
                        .or_insert_with(|| Item::from_json(item));
                }
            }
            "response.output_item.done" => {
                if let Some(item) = data.get("item") {
                    let key = self.item_key(data, item);
                    self.items.insert(key, Item::from_json(item));
                }
            }
            "response.output_text.delta" | "response.refusal.delta" => {
                let item = self.item_mut(data);
                item.becomes(Kind::Message);
                let part = index(data, "content_index").unwrap_or(0);
                let piece = text("delta").unwrap_or_default();
                item.parts.entry(part).or_default().push_str(piece);
            }
            "response.output_text.done"
            | "response.refusal.done"
            | "response.content_part.done" => {
                let done = text("text")
                    .or_else(|| text("refusal"))
                    .or_else(|| data.get("part").and_then(part_text));
                if let Some(done) = done {
                    let item = self.item_mut(data);
                    item.becomes(Kind::Message);
                    let part = index(data, "content_index").unwrap_or(0);
                    item.parts.insert(part, done.to_owned());
                }
            }
            "response.function_call_arguments.delta" | "response.custom_tool_call_input.delta" => {
                let item = self.item_mut(data);
                item.becomes(Kind::ToolCall);
                item.arguments.push_str(text("delta").unwrap_or_default());
            }
            "response.function_call_arguments.done" | "response.custom_tool_call_input.done" => {
                let arguments = text("arguments").or_else(|| text("input"));
                let name = string(data, "name");
                let item = self.item_mut(data);
                item.becomes(Kind::ToolCall);
                if let Some(arguments) = arguments {
                    item.arguments = arguments.to_owned();
                }
                if let Some(name) = name {
                    item.name = name.to_owned();
                }
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                let item = self.item_mut(data);
                item.becomes(Kind::Reasoning);
                item.reasoning.push_str(text("delta").unwrap_or_default());
            }
            "error" => {
                let error = match data.get("error") {
                    Some(inner) if !inner.is_null() => error_message(inner),
                    _ => error_message(data),
                };
                if let Some(error) = error {
                    self.error = Some(error);
                }
            }
            "response" => self.response(data),
            _ => {}
        }
    }

    /// A whole JSON body: a `response` object or an error body.
    pub(crate) fn body(&mut self, body: &Value) {
        self.response(body);
    }

    fn response(&mut self, response: &Value) {
        if let Some(model) = string(response, "model") {
            self.model = Some(model.to_owned());
        }
        if let Some(status) = string(response, "status") {
            self.status = Some(status.to_owned());
        }
        if let Some(reason) = response
            .get("incomplete_details")
            .and_then(|d| string(d, "reason"))
        {
            self.incomplete_reason = Some(reason.to_owned());
        }
        if let Some(error) = response.get("error").and_then(error_message) {
            self.error = Some(error);
        }
        if let Some(usage) = response
            .get("usage")
            .and_then(|u| usage_from_json(Frontend::OpenAiResponses, u))
        {
            self.usage = Some(usage);
        }
        // The terminal response carries the whole output: it is authoritative.
        if let Some(output) = response.get("output").and_then(Value::as_array) {
            for (position, item) in output.iter().enumerate() {
                let key = position as u64;
                if let Some(id) = string(item, "id") {
                    self.ids.insert(id.to_owned(), key);
                }
                self.items.insert(key, Item::from_json(item));
            }
        }
    }

    /// The output index an event or item is about: `output_index`, else the
    /// index known for its `item_id` / `id`, else after the last item.
    fn item_key(&mut self, data: &Value, item: &Value) -> u64 {
        let id = string(item, "id").or_else(|| string(data, "item_id"));
        let key = index(data, "output_index")
            .or_else(|| id.and_then(|id| self.ids.get(id).copied()))
            .unwrap_or_else(|| {
                self.items
                    .keys()
                    .next_back()
                    .map_or(0, |k| k.saturating_add(1))
            });
        if let Some(id) = id {
            self.ids.insert(id.to_owned(), key);
        }
        key
    }

    /// The item a delta event is about: by `output_index`, else `item_id`,
    /// else the last item.
    fn item_mut(&mut self, data: &Value) -> &mut Item {
        let key = index(data, "output_index")
            .or_else(|| string(data, "item_id").and_then(|id| self.ids.get(id).copied()))
            .or_else(|| self.items.keys().next_back().copied())
            .unwrap_or(0);
        self.items.entry(key).or_default()
    }

    pub(crate) fn finish(self) -> ResponseFacts {
        let finish_reason = self.incomplete_reason.or_else(|| {
            self.status
                .filter(|status| TERMINAL_STATUSES.contains(&status.as_str()))
        });
        let messages: Vec<String> = self
            .items
            .values()
            .filter(|item| item.kind == Kind::Message)
            .map(|item| item.parts.values().map(String::as_str).collect())
            .collect();
        let text = join_nonempty(messages.iter().map(String::as_str));
        let reasoning = join_nonempty(
            self.items
                .values()
                .filter(|item| item.kind == Kind::Reasoning)
                .map(|item| item.reasoning.as_str()),
        );
        let tool_calls = self
            .items
            .into_values()
            .filter(|item| item.kind == Kind::ToolCall)
            .map(|item| ToolCall {
                name: item.name,
                arguments: item.arguments,
            })
            .collect();
        ResponseFacts {
            usage: self.usage,
            text,
            reasoning,
            tool_calls,
            finish_reason,
            error: self.error,
            model: self.model,
        }
    }
}
