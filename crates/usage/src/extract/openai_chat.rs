//! OpenAI Chat Completions responses: `chat.completion` bodies and
//! `chat.completion.chunk` streams (also OpenRouter, vLLM, Ollama, DeepSeek…).

use std::collections::BTreeMap;

use llm_proxy_core::Frontend;
use serde_json::Value;

use super::json::{content_text, error_message, index, string};
use super::response::{ResponseFacts, ToolCall, join_nonempty};
use super::usage::usage_from_json;
use crate::record::BackendUsage;

/// Slot of the legacy `function_call` in a choice's tool-call map (after any real index).
const LEGACY_FUNCTION_CALL: u64 = u64::MAX;

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
    fn add_function(&mut self, function: &Value) {
        if let Some(name) = string(function, "name") {
            self.add_name(name);
        }
        match function.get("arguments") {
            Some(Value::String(piece)) => self.arguments.push_str(piece),
            // Some servers send arguments as an object.
            Some(args @ Value::Object(_)) => self.arguments.push_str(&args.to_string()),
            _ => {}
        }
    }
}

impl ChatState {
    /// One `chat.completion` body or one `chat.completion.chunk` (or an error object).
    pub(crate) fn value(&mut self, value: &Value) {
        if let Some(message) = value.get("error").and_then(error_message) {
            self.error = Some(message);
        }
        if let Some(model) = string(value, "model") {
            self.model = Some(model.to_owned());
        }
        if let Some(usage) = value
            .get("usage")
            .and_then(|u| usage_from_json(Frontend::OpenAiChat, u))
        {
            self.usage = Some(usage);
        }
        let Some(choices) = value.get("choices").and_then(Value::as_array) else {
            return;
        };
        for (position, choice) in choices.iter().enumerate() {
            let key = index(choice, "index").unwrap_or(position as u64);
            let state = self.choices.entry(key).or_default();
            if let Some(delta) = choice.get("delta").or_else(|| choice.get("message")) {
                state.add_delta(delta);
            }
            // Legacy completions-style `text` in a choice.
            if let Some(text) = choice.get("text").and_then(Value::as_str) {
                state.text.push_str(text);
            }
            if let Some(reason) = string(choice, "finish_reason") {
                state.finish_reason = Some(reason.to_owned());
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
    fn add_delta(&mut self, delta: &Value) {
        if let Some(content) = delta.get("content") {
            content_text(content, &mut self.text);
        }
        if let Some(refusal) = delta.get("refusal").and_then(Value::as_str) {
            self.text.push_str(refusal);
        }
        for key in ["reasoning_content", "reasoning"] {
            if let Some(reasoning) = delta.get(key).and_then(Value::as_str) {
                self.reasoning.push_str(reasoning);
                break;
            }
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for (position, call) in calls.iter().enumerate() {
                let key = self.call_key(call, position);
                self.last_call = Some(key);
                let slot = self.calls.entry(key).or_default();
                if slot.id.is_none() {
                    slot.id = string(call, "id").map(str::to_owned);
                }
                if let Some(function) = call.get("function") {
                    slot.add_function(function);
                }
            }
        }
        if let Some(function) = delta.get("function_call").filter(|f| f.is_object()) {
            self.calls
                .entry(LEGACY_FUNCTION_CALL)
                .or_default()
                .add_function(function);
        }
    }

    /// Which call a `tool_calls[]` entry continues: its `index`; else the call
    /// with the same `id`; else a new call when it has an id (or none exists);
    /// else the last call.
    fn call_key(&self, call: &Value, position: usize) -> u64 {
        if let Some(i) = index(call, "index").filter(|i| *i != LEGACY_FUNCTION_CALL) {
            return i;
        }
        let id = string(call, "id");
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
