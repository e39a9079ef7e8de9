//! The facts the mock needs from a request body, read the same way for all three protocols.

use serde_json::Value;

use super::{MockError, count_words, strip_fault_suffix};
use crate::Frontend;

/// Token counts the mock reports (OpenAI names; Anthropic and Responses use input/output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Words across all text of the request.
    pub prompt_tokens: u64,
    /// Words of the answer text, or `max(1, words of the arguments JSON)` for a tool call.
    pub completion_tokens: u64,
    /// `prompt_tokens + completion_tokens`.
    pub total_tokens: u64,
}

/// What the last message of the conversation is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LastTurn {
    /// A user message that is not a tool result.
    User,
    /// A tool result, with its text.
    ToolResult(String),
    /// Anything else (assistant message, empty conversation).
    Other,
}

/// A request body, read.
#[derive(Debug)]
pub(crate) struct Conversation<'a> {
    /// The raw body, for fields a renderer echoes back.
    pub request: &'a Value,
    /// The model name without a fault suffix.
    pub model: String,
    /// `"stream": true`.
    pub stream: bool,
    /// OpenAI chat `stream_options.include_usage: true`.
    pub include_usage: bool,
    /// Words across all text of the request.
    pub prompt_words: u64,
    /// The kind of the last message.
    pub last_turn: LastTurn,
    /// The text of the last user message (empty when there is none).
    pub last_user_text: String,
    /// The name of the first declared function tool.
    pub first_tool: Option<String>,
}

impl<'a> Conversation<'a> {
    /// Reads `request` as a body of `frontend`'s protocol.
    pub fn parse(frontend: Frontend, request: &'a Value) -> Result<Conversation<'a>, MockError> {
        let object = request.as_object().ok_or_else(|| {
            MockError::InvalidRequest("request body must be a JSON object".to_owned())
        })?;
        let model = object
            .get("model")
            .and_then(Value::as_str)
            .ok_or_else(|| MockError::InvalidRequest("missing string field `model`".to_owned()))?;
        let stream = object.get("stream").and_then(Value::as_bool) == Some(true);
        let include_usage = frontend == Frontend::OpenAiChat
            && request
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                == Some(true);
        let mut conversation = Conversation {
            request,
            model: strip_fault_suffix(model).to_owned(),
            stream,
            include_usage,
            prompt_words: 0,
            last_turn: LastTurn::Other,
            last_user_text: String::new(),
            first_tool: None,
        };
        match frontend {
            Frontend::OpenAiChat => conversation.read_openai_chat()?,
            Frontend::AnthropicMessages => conversation.read_anthropic()?,
            Frontend::OpenAiResponses => conversation.read_responses()?,
        }
        Ok(conversation)
    }

    fn read_openai_chat(&mut self) -> Result<(), MockError> {
        let messages = messages(self.request)?;
        self.prompt_words = messages
            .iter()
            .map(|m| count_words(&content_text(m.get("content"))))
            .sum();
        self.last_user_text = messages
            .iter()
            .rev()
            .find(|m| role(m) == Some("user"))
            .map(|m| content_text(m.get("content")))
            .unwrap_or_default();
        self.last_turn = match messages.last() {
            Some(m) if role(m) == Some("tool") => {
                LastTurn::ToolResult(content_text(m.get("content")))
            }
            Some(m) if role(m) == Some("user") => LastTurn::User,
            _ => LastTurn::Other,
        };
        self.first_tool = tools(self.request)
            .find_map(|t| t.pointer("/function/name").and_then(Value::as_str))
            .map(str::to_owned);
        Ok(())
    }

    fn read_anthropic(&mut self) -> Result<(), MockError> {
        let messages = messages(self.request)?;
        self.prompt_words = count_words(&content_text(self.request.get("system")))
            + messages
                .iter()
                .map(|m| count_words(&content_text(m.get("content"))))
                .sum::<u64>();
        self.last_user_text = messages
            .iter()
            .rev()
            .find(|m| role(m) == Some("user"))
            .map(|m| user_text_only(m.get("content")))
            .unwrap_or_default();
        self.last_turn = match messages.last() {
            Some(m) if role(m) == Some("user") => {
                let results: Vec<&Value> = blocks(m.get("content"))
                    .filter(|b| block_type(b) == Some("tool_result"))
                    .collect();
                if results.is_empty() {
                    LastTurn::User
                } else {
                    LastTurn::ToolResult(join(
                        results.iter().map(|b| content_text(b.get("content"))),
                    ))
                }
            }
            _ => LastTurn::Other,
        };
        self.first_tool = tools(self.request)
            .find_map(|t| t.get("name").and_then(Value::as_str))
            .map(str::to_owned);
        Ok(())
    }

    fn read_responses(&mut self) -> Result<(), MockError> {
        let input = self.request.get("input");
        self.prompt_words = count_words(&content_text(self.request.get("instructions")))
            + count_words(&content_text(input));
        match input {
            Some(Value::String(text)) => {
                self.last_user_text = text.clone();
                self.last_turn = LastTurn::User;
            }
            Some(Value::Array(items)) => {
                self.last_user_text = items
                    .iter()
                    .rev()
                    .find(|i| role(i) == Some("user"))
                    .map(|i| content_text(i.get("content")))
                    .unwrap_or_default();
                self.last_turn = match items.last() {
                    Some(i) if block_type(i) == Some("function_call_output") => {
                        LastTurn::ToolResult(content_text(i.get("output")))
                    }
                    Some(i) if role(i) == Some("user") => LastTurn::User,
                    _ => LastTurn::Other,
                };
            }
            None | Some(Value::Null) => {}
            Some(_) => {
                return Err(MockError::InvalidRequest(
                    "`input` must be a string or an array".to_owned(),
                ));
            }
        }
        self.first_tool = tools(self.request)
            .filter(|t| block_type(t) == Some("function"))
            .find_map(|t| t.get("name").and_then(Value::as_str))
            .map(str::to_owned);
        Ok(())
    }
}

fn messages(request: &Value) -> Result<&Vec<Value>, MockError> {
    request
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| MockError::InvalidRequest("missing array field `messages`".to_owned()))
}

fn tools(request: &Value) -> impl Iterator<Item = &Value> {
    request
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn role(message: &Value) -> Option<&str> {
    message.get("role").and_then(Value::as_str)
}

fn block_type(block: &Value) -> Option<&str> {
    block.get("type").and_then(Value::as_str)
}

fn blocks(content: Option<&Value>) -> impl Iterator<Item = &Value> {
    content.and_then(Value::as_array).into_iter().flatten()
}

fn join(pieces: impl Iterator<Item = String>) -> String {
    pieces
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The text of a content value: a string is itself; an array contributes each
/// part's `text`, the nested `content` of tool results and the `output` of
/// `function_call_output` items, joined with single spaces.
pub(crate) fn content_text(content: Option<&Value>) -> String {
    let mut pieces = Vec::new();
    collect_text(content, &mut pieces);
    pieces.join(" ")
}

fn collect_text<'v>(content: Option<&'v Value>, out: &mut Vec<&'v str>) {
    match content {
        Some(Value::String(text)) if !text.is_empty() => out.push(text),
        Some(Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(_) => collect_text(Some(item), out),
                    Value::Object(part) => {
                        collect_text(part.get("text"), out);
                        collect_text(part.get("content"), out);
                        collect_text(part.get("output"), out);
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// The text of a user message's content without its tool results.
fn user_text_only(content: Option<&Value>) -> String {
    match content {
        Some(Value::Array(items)) => join(
            items
                .iter()
                .filter(|b| block_type(b) != Some("tool_result"))
                .filter_map(|b| match b {
                    Value::String(text) => Some(text.clone()),
                    _ => b.get("text").and_then(Value::as_str).map(str::to_owned),
                }),
        ),
        other => content_text(other),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn openai_chat_facts() {
        let req = json!({
            "model": "echo+fault-503",
            "stream": true,
            "stream_options": {"include_usage": true},
            "tools": [{"type": "function", "function": {"name": "search", "parameters": {}}},
                      {"type": "function", "function": {"name": "other"}}],
            "messages": [
                {"role": "system", "content": "be nice"},
                {"role": "user", "content": [{"type": "text", "text": "find cats"},
                                             {"type": "image_url", "image_url": {"url": "x"}}]},
            ],
        });
        let c = Conversation::parse(Frontend::OpenAiChat, &req).unwrap();
        assert_eq!(c.model, "echo");
        assert!(c.stream && c.include_usage);
        assert_eq!(c.prompt_words, 4);
        assert_eq!(c.last_turn, LastTurn::User);
        assert_eq!(c.last_user_text, "find cats");
        assert_eq!(c.first_tool.as_deref(), Some("search"));

        let req = json!({"model": "m", "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": null, "tool_calls": []},
            {"role": "tool", "tool_call_id": "c", "content": "42 degrees"}]});
        let c = Conversation::parse(Frontend::OpenAiChat, &req).unwrap();
        assert_eq!(c.last_turn, LastTurn::ToolResult("42 degrees".to_owned()));
        assert_eq!(c.prompt_words, 3);
    }

    #[test]
    fn anthropic_facts() {
        let req = json!({
            "model": "claude",
            "system": [{"type": "text", "text": "sys prompt"}],
            "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
            "messages": [
                {"role": "user", "content": "what is up"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "lookup", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                    "content": [{"type": "text", "text": "all good"}]}]},
            ],
        });
        let c = Conversation::parse(Frontend::AnthropicMessages, &req).unwrap();
        assert_eq!(c.prompt_words, 2 + 3 + 2);
        assert_eq!(c.last_turn, LastTurn::ToolResult("all good".to_owned()));
        assert_eq!(c.first_tool.as_deref(), Some("lookup"));
        assert!(!c.stream);
    }

    #[test]
    fn responses_facts() {
        let req = json!({"model": "m", "instructions": "two words", "input": "hello mock"});
        let c = Conversation::parse(Frontend::OpenAiResponses, &req).unwrap();
        assert_eq!(c.prompt_words, 4);
        assert_eq!(c.last_turn, LastTurn::User);
        assert_eq!(c.last_user_text, "hello mock");

        let req = json!({"model": "m",
            "tools": [{"type": "web_search"}, {"type": "function", "name": "f", "parameters": {}}],
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "go"}]},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c", "output": "done now"}]});
        let c = Conversation::parse(Frontend::OpenAiResponses, &req).unwrap();
        assert_eq!(c.prompt_words, 3);
        assert_eq!(c.last_user_text, "go");
        assert_eq!(c.last_turn, LastTurn::ToolResult("done now".to_owned()));
        assert_eq!(c.first_tool.as_deref(), Some("f"));
    }

    #[test]
    fn rejects_bad_bodies() {
        assert!(Conversation::parse(Frontend::OpenAiChat, &json!({"model": "m"})).is_err());
        assert!(
            Conversation::parse(Frontend::AnthropicMessages, &json!({"messages": []})).is_err()
        );
        assert!(
            Conversation::parse(
                Frontend::OpenAiResponses,
                &json!({"model": "m", "input": 3})
            )
            .is_err()
        );
    }
}
