//! OpenAI Chat Completions responses: `chat.completion` bodies and
//! `chat.completion.chunk` streams (also OpenRouter, vLLM, Ollama, DeepSeek…).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use llm_proxy_core::Frontend;
use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::json::error_message;
use super::lenient::{Field, Json, List, Num, PartIn, Str, skip_visits, text_visits};
use super::response::{ResponseFacts, ToolCall, join_nonempty, set_text};
use super::usage::{UsageField, usage_from_field};
use crate::record::BackendUsage;

/// Slot of the legacy `function_call` in a choice's tool-call map (after any real index).
const LEGACY_FUNCTION_CALL: u64 = u64::MAX;

/// The keys read of a `chat.completion` body or a `chat.completion.chunk`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ChatIn<'a> {
    error: Json,
    #[serde(borrow)]
    model: Str<'a>,
    usage: UsageField,
    #[serde(borrow)]
    choices: List<ChoiceIn<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ChoiceIn<'a> {
    index: Num,
    #[serde(borrow)]
    delta: Field<DeltaIn<'a>>,
    #[serde(borrow)]
    message: Field<DeltaIn<'a>>,
    #[serde(borrow)]
    text: Str<'a>,
    #[serde(borrow)]
    finish_reason: Str<'a>,
}

/// A `delta` (stream) or `message` (body).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DeltaIn<'a> {
    #[serde(borrow)]
    content: Content<'a>,
    #[serde(borrow)]
    refusal: Str<'a>,
    #[serde(borrow)]
    reasoning_content: Str<'a>,
    #[serde(borrow)]
    reasoning: Str<'a>,
    #[serde(borrow)]
    tool_calls: List<CallIn<'a>>,
    #[serde(borrow)]
    function_call: Field<FunctionIn<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CallIn<'a> {
    index: Num,
    #[serde(borrow)]
    id: Str<'a>,
    #[serde(borrow)]
    function: Field<FunctionIn<'a>>,
}

/// The `function` of a tool call, or a legacy `function_call`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FunctionIn<'a> {
    #[serde(borrow)]
    name: Str<'a>,
    #[serde(borrow)]
    arguments: Arguments<'a>,
}

/// Tool-call arguments: a string piece, or (some servers) an object.
#[derive(Debug, Default)]
enum Arguments<'a> {
    #[default]
    None,
    Text(Cow<'a, str>),
    Object(Value),
}

impl<'de: 'a, 'a> Deserialize<'de> for Arguments<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Arguments<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            text_visits!(Arguments::Text);
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                Value::deserialize(MapAccessDeserializer::new(map)).map(Arguments::Object)
            }
            skip_visits!(Arguments::None; bool i64 u64 f64 unit seq);
        }
        deserializer.deserialize_any(V)
    }
}

/// Text of an OpenAI-style content value: a string, or an array of parts whose
/// `text` (or else `refusal`) strings are concatenated.
#[derive(Debug, Default)]
struct Content<'a>(Option<Cow<'a, str>>);

/// One content part: a string, or an object's `text` (else `refusal`).
#[derive(Debug, Default)]
struct ContentPart<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            text_visits!(|text| Content(Some(text)));
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut text: Option<Cow<'de, str>> = None;
                while let Some(ContentPart(part)) = seq.next_element()? {
                    match (&mut text, part) {
                        (_, None) => {}
                        (None, part) => text = part,
                        (Some(text), Some(part)) => text.to_mut().push_str(&part),
                    }
                }
                Ok(Content(text))
            }
            skip_visits!(Content(None); bool i64 u64 f64 unit map);
        }
        deserializer.deserialize_any(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for ContentPart<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ContentPart<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            text_visits!(|text| ContentPart(Some(text)));
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let part = PartIn::deserialize(MapAccessDeserializer::new(map))?;
                Ok(ContentPart(part.into_text_or_refusal()))
            }
            skip_visits!(ContentPart(None); bool i64 u64 f64 unit seq);
        }
        deserializer.deserialize_any(V)
    }
}

#[derive(Debug, Default)]
pub(crate) struct ChatState {
    choices: BTreeMap<u64, Choice>,
    usage: Option<BackendUsage>,
    model: Option<String>,
    pub(crate) error: Option<String>,
}

#[derive(Debug, Default)]
struct Choice {
    text: String,
    reasoning: String,
    calls: BTreeMap<u64, PartialCall>,
    last_call: Option<u64>,
    finish_reason: Option<String>,
}

#[derive(Debug, Default)]
struct PartialCall {
    id: Option<String>,
    name: String,
    arguments: String,
}

impl PartialCall {
    /// Adds a name piece: set when empty, ignored when repeated, appended otherwise.
    fn add_name(&mut self, name: &str) {
        if self.name != name {
            self.name.push_str(name);
        }
    }

    /// Adds the `function` object of a tool call (or a legacy `function_call`).
    fn add_function(&mut self, function: &FunctionIn<'_>) {
        if let Some(name) = function.name.nonempty() {
            self.add_name(name);
        }
        match &function.arguments {
            Arguments::Text(piece) => self.arguments.push_str(piece),
            // Some servers send arguments as an object.
            Arguments::Object(args) => self.arguments.push_str(&args.to_string()),
            Arguments::None => {}
        }
    }
}

impl ChatState {
    /// One `chat.completion` body or one `chat.completion.chunk` (or an error object).
    pub(crate) fn value(&mut self, value: &ChatIn<'_>) {
        if let Some(message) = value.error.as_ref().and_then(error_message) {
            self.error = Some(message);
        }
        if let Some(model) = value.model.nonempty() {
            set_text(&mut self.model, model);
        }
        if let Some(usage) = usage_from_field(Frontend::OpenAiChat, &value.usage) {
            self.usage = Some(usage);
        }
        for (position, choice) in value.choices.0.iter().enumerate() {
            let key = choice.index.index().unwrap_or(position as u64);
            let state = self.choices.entry(key).or_default();
            // A `delta` key, whatever its value, hides `message`.
            let delta = if choice.delta.is_present() {
                &choice.delta
            } else {
                &choice.message
            };
            if let Some(delta) = delta.object() {
                state.add_delta(delta);
            }
            // Legacy completions-style `text` in a choice.
            if let Some(text) = choice.text.get() {
                state.text.push_str(text);
            }
            if let Some(reason) = choice.finish_reason.nonempty() {
                set_text(&mut state.finish_reason, reason);
            }
        }
    }

    pub(crate) fn finish(self) -> ResponseFacts {
        let finish_reason = self.choices.values().find_map(|c| c.finish_reason.clone());
        let text = join_nonempty(self.choices.values().map(|c| c.text.as_str()));
        let reasoning = join_nonempty(self.choices.values().map(|c| c.reasoning.as_str()));
        let tool_calls = self
            .choices
            .into_values()
            .flat_map(|c| c.calls.into_values())
            .map(|call| ToolCall {
                name: call.name,
                arguments: call.arguments,
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

impl Choice {
    fn add_delta(&mut self, delta: &DeltaIn<'_>) {
        if let Some(content) = &delta.content.0 {
            self.text.push_str(content);
        }
        if let Some(refusal) = delta.refusal.get() {
            self.text.push_str(refusal);
        }
        if let Some(reasoning) = delta.reasoning_content.get().or(delta.reasoning.get()) {
            self.reasoning.push_str(reasoning);
        }
        for (position, call) in delta.tool_calls.0.iter().enumerate() {
            let key = self.call_key(call, position);
            self.last_call = Some(key);
            let slot = self.calls.entry(key).or_default();
            if slot.id.is_none() {
                slot.id = call.id.nonempty().map(str::to_owned);
            }
            if let Some(function) = call.function.object() {
                slot.add_function(function);
            }
        }
        if let Some(function) = delta.function_call.object() {
            self.calls
                .entry(LEGACY_FUNCTION_CALL)
                .or_default()
                .add_function(function);
        }
    }

    /// Which call a `tool_calls[]` entry continues: its `index`; else the call
    /// with the same `id`; else a new call when it has an id (or none exists);
    /// else the last call.
    fn call_key(&self, call: &CallIn<'_>, position: usize) -> u64 {
        if let Some(i) = call.index.index().filter(|i| *i != LEGACY_FUNCTION_CALL) {
            return i;
        }
        let id = call.id.nonempty();
        if let Some(id) = id
            && let Some((key, _)) = self.calls.iter().find(|(_, c)| c.id.as_deref() == Some(id))
        {
            return *key;
        }
        let next = self
            .calls
            .keys()
            .rfind(|k| **k != LEGACY_FUNCTION_CALL)
            .map_or(position as u64, |k| {
                k.saturating_add(1).max(position as u64)
            });
        match (id, self.last_call) {
            (None, Some(last)) => last,
            _ => next,
        }
    }
}
