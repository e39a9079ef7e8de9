//! OpenAI Responses: `response` bodies and the `response.*` event stream.

use std::collections::{BTreeMap, HashMap};

use llm_proxy_core::Frontend;
use serde::Deserialize;
use serde_json::Value;

use super::json::error_message;
use super::lenient::{Field, Json, List, Num, PartIn, Str};
use super::response::{ResponseFacts, ToolCall, join_nonempty, set_text};
use super::usage::{UsageField, usage_from_field};
use crate::record::BackendUsage;

/// The keys read of an event's data, of a body or of a `response` (one
/// shape for all three): an event's keys, and a `response`'s.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ResponsesIn<'a> {
    #[serde(borrow, rename = "type")]
    kind: Str<'a>,
    #[serde(borrow)]
    response: Field<Box<ResponsesIn<'a>>>,
    #[serde(borrow)]
    item: Field<Box<ItemIn<'a>>>,
    output_index: Num,
    content_index: Num,
    #[serde(borrow)]
    item_id: Str<'a>,
    #[serde(borrow)]
    delta: Str<'a>,
    #[serde(borrow)]
    text: Str<'a>,
    #[serde(borrow)]
    refusal: Str<'a>,
    #[serde(borrow)]
    part: Field<PartIn<'a>>,
    #[serde(borrow)]
    arguments: Str<'a>,
    #[serde(borrow)]
    input: Str<'a>,
    #[serde(borrow)]
    name: Str<'a>,
    // The keys of a `response`.
    #[serde(borrow)]
    model: Str<'a>,
    #[serde(borrow)]
    status: Str<'a>,
    #[serde(borrow)]
    incomplete_details: Field<IncompleteIn<'a>>,
    error: Json,
    usage: UsageField,
    #[serde(borrow)]
    output: List<ItemIn<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct IncompleteIn<'a> {
    #[serde(borrow)]
    reason: Str<'a>,
}

/// An output item.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ItemIn<'a> {
    #[serde(borrow, rename = "type")]
    kind: Str<'a>,
    #[serde(borrow)]
    id: Str<'a>,
    #[serde(borrow)]
    name: Str<'a>,
    #[serde(borrow)]
    arguments: Str<'a>,
    #[serde(borrow)]
    input: Str<'a>,
    /// Message parts, or reasoning content parts.
    #[serde(borrow)]
    content: List<PartIn<'a>>,
    /// Reasoning summary parts.
    #[serde(borrow)]
    summary: List<PartIn<'a>>,
}

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
    fn from_json(item: ItemIn<'_>) -> Item {
        let text_of = |s: Str<'_>| s.into_text().map(String::from).unwrap_or_default();
        match item.kind.get() {
            Some("message") => {
                let mut parts = BTreeMap::new();
                for (position, part) in item.content.0.iter().enumerate() {
                    if let Some(text) = part.text_unless_refusal() {
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
                name: text_of(item.name),
                arguments: text_of(item.arguments),
                ..Item::default()
            },
            Some("custom_tool_call") => Item {
                kind: Kind::ToolCall,
                name: text_of(item.name),
                arguments: text_of(item.input),
                ..Item::default()
            },
            Some("reasoning") => {
                let texts = (item.summary.0.iter())
                    .chain(&item.content.0)
                    .filter_map(|part| part.text.get());
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

impl ResponsesState {
    /// One SSE event (its `type` field, else the SSE event name, says which);
    /// `raw` is the event's JSON text (an error event is read as a whole).
    pub(crate) fn event(&mut self, name: Option<&str>, mut data: ResponsesIn<'_>, raw: &str) {
        let kind = data.kind.nonempty().or(name).unwrap_or_default();
        match kind {
            "response.created"
            | "response.queued"
            | "response.in_progress"
            | "response.completed"
            | "response.incomplete"
            | "response.failed"
            | "response.cancelled" => {
                if let Field::Object(response) = data.response {
                    self.response(*response);
                }
            }
            "response.output_item.added" | "response.output_item.done"
                if data.item.is_present() =>
            {
                let item = std::mem::take(&mut data.item).into_object_or_default();
                let key = self.item_key(&data, &item);
                if kind == "response.output_item.added" {
                    self.items
                        .entry(key)
                        .or_insert_with(|| Item::from_json(*item));
                } else {
                    self.items.insert(key, Item::from_json(*item));
                }
            }
            "response.output_text.delta" | "response.refusal.delta" => {
                let item = self.item_mut(&data);
                item.becomes(Kind::Message);
                let part = data.content_index.index().unwrap_or(0);
                let piece = data.delta.get().unwrap_or_default();
                item.parts.entry(part).or_default().push_str(piece);
            }
            "response.output_text.done"
            | "response.refusal.done"
            | "response.content_part.done" => {
                let done = (data.text.get())
                    .or_else(|| data.refusal.get())
                    .or_else(|| data.part.object().and_then(PartIn::text_unless_refusal));
                if let Some(done) = done {
                    let done = done.to_owned();
                    let item = self.item_mut(&data);
                    item.becomes(Kind::Message);
                    let part = data.content_index.index().unwrap_or(0);
                    item.parts.insert(part, done);
                }
            }
            "response.function_call_arguments.delta" | "response.custom_tool_call_input.delta" => {
                let item = self.item_mut(&data);
                item.becomes(Kind::ToolCall);
                item.arguments
                    .push_str(data.delta.get().unwrap_or_default());
            }
            "response.function_call_arguments.done" | "response.custom_tool_call_input.done" => {
                let item = self.item_mut(&data);
                item.becomes(Kind::ToolCall);
                if let Some(arguments) = data.arguments.get().or_else(|| data.input.get()) {
                    item.arguments = arguments.to_owned();
                }
                if let Some(name) = data.name.nonempty() {
                    item.name = name.to_owned();
                }
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                let item = self.item_mut(&data);
                item.becomes(Kind::Reasoning);
                item.reasoning
                    .push_str(data.delta.get().unwrap_or_default());
            }
            "error" => {
                // Rare: read the whole event (its message may be at the top).
                let Ok(data) = serde_json::from_str::<Value>(raw) else {
                    return;
                };
                let error = match data.get("error") {
                    Some(inner) if !inner.is_null() => error_message(inner),
                    _ => error_message(&data),
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
    pub(crate) fn body(&mut self, body: ResponsesIn<'_>) {
        self.response(body);
    }

    fn response(&mut self, response: ResponsesIn<'_>) {
        if let Some(model) = response.model.nonempty() {
            set_text(&mut self.model, model);
        }
        if let Some(status) = response.status.nonempty() {
            set_text(&mut self.status, status);
        }
        let incomplete = response.incomplete_details.object();
        if let Some(reason) = incomplete.and_then(|d| d.reason.nonempty()) {
            set_text(&mut self.incomplete_reason, reason);
        }
        if let Some(error) = response.error.as_ref().and_then(error_message) {
            self.error = Some(error);
        }
        if let Some(usage) = usage_from_field(Frontend::OpenAiResponses, &response.usage) {
            self.usage = Some(usage);
        }
        // The terminal response carries the whole output: it is authoritative.
        for (position, item) in response.output.0.into_iter().enumerate() {
            let key = position as u64;
            if let Some(id) = item.id.nonempty() {
                self.ids.insert(id.to_owned(), key);
            }
            self.items.insert(key, Item::from_json(item));
        }
    }

    /// The output index an event or item is about: `output_index`, else the
    /// index known for its `item_id` / `id`, else after the last item.
    fn item_key(&mut self, data: &ResponsesIn<'_>, item: &ItemIn<'_>) -> u64 {
        let id = item.id.nonempty().or_else(|| data.item_id.nonempty());
        let key = (data.output_index.index())
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
    fn item_mut(&mut self, data: &ResponsesIn<'_>) -> &mut Item {
        let key = (data.output_index.index())
            .or_else(|| (data.item_id.nonempty()).and_then(|id| self.ids.get(id).copied()))
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
