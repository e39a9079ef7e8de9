//! [`PromptFacts`]: what in a request body counts as prompt.

use llm_proxy_core::Frontend;
use serde_json::Value;

use super::json::compact;

/// What a request body (client → proxy or proxy → backend) holds as prompt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PromptFacts {
    /// Everything that counts as prompt, pieces joined with `\n`: system text
    /// (OpenAI `system` / `developer` messages, Anthropic `system`, Responses
    /// `instructions`), every message's text (string or text parts, refusals,
    /// thinking), tool definitions (name, description, JSON schema compact),
    /// tool calls in assistant messages (name, arguments), tool results
    /// (OpenAI `tool` messages, Anthropic `tool_result`, Responses
    /// `function_call_output`), structured-output schemas. Images add nothing.
    pub text_for_counting: String,
    /// Messages (OpenAI chat, Anthropic; the system prompt is not one unless it
    /// is a message) or input items (Responses; a string `input` is one).
    pub message_count: usize,
    /// Image parts / blocks, tool results included.
    pub image_count: usize,
    /// The `model` field.
    pub model: Option<String>,
}

impl PromptFacts {
    /// Reads a request body; a body that is not JSON gives empty facts.
    pub fn from_body(protocol: Frontend, body: &[u8]) -> PromptFacts {
        serde_json::from_slice::<Value>(body)
            .map(|request| PromptFacts::from_json(protocol, &request))
            .unwrap_or_default()
    }

    /// Reads a parsed request body of `protocol`.
    pub fn from_json(protocol: Frontend, request: &Value) -> PromptFacts {
        let mut b = Builder::default();
        match protocol {
            Frontend::OpenAiChat => b.openai_chat(request),
            Frontend::AnthropicMessages => b.anthropic(request),
            Frontend::OpenAiResponses => b.responses(request),
        }
        PromptFacts {
            text_for_counting: b.text,
            message_count: b.messages,
            image_count: b.images,
            model: request
                .get("model")
                .and_then(Value::as_str)
                .map(str::to_owned),
        }
    }
}

#[derive(Debug, Default)]
struct Builder {
    text: String,
    messages: usize,
    images: usize,
}

impl Builder {
    fn push(&mut self, piece: &str) {
        if piece.is_empty() {
            return;
        }
        if !self.text.is_empty() {
            self.text.push('\n');
        }
        self.text.push_str(piece);
    }

    fn push_str_field(&mut self, value: &Value, key: &str) {
        if let Some(s) = value.get(key).and_then(Value::as_str) {
            self.push(s);
        }
    }

    /// A JSON value that is sent as text: a string as is, anything else compact.
    fn push_json(&mut self, value: Option<&Value>) {
        match value {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => self.push(s),
            Some(other) => self.push(&compact(other)),
        }
    }

    fn openai_chat(&mut self, request: &Value) {
        let messages = array(request, "messages");
        self.messages = messages.len();
        for message in messages {
            self.push_str_field(message, "name");
            if let Some(content) = message.get("content") {
                self.content(content);
            }
            self.push_str_field(message, "refusal");
            for call in array(message, "tool_calls") {
                let function = call.get("function").unwrap_or(call);
                self.push_str_field(function, "name");
                self.push_json(function.get("arguments"));
                // Custom tool calls carry `custom.input`.
                if let Some(custom) = call.get("custom") {
                    self.push_str_field(custom, "name");
                    self.push_json(custom.get("input"));
                }
            }
            if let Some(call) = message.get("function_call").filter(|c| c.is_object()) {
                self.push_str_field(call, "name");
                self.push_json(call.get("arguments"));
            }
        }
        self.tools(request, "tools");
        self.tools(request, "functions");
        if let Some(format) = request.get("response_format") {
            let schema = format.get("json_schema").and_then(|s| s.get("schema"));
            self.push_json(schema);
        }
    }

    fn anthropic(&mut self, request: &Value) {
        if let Some(system) = request.get("system") {
            self.content(system);
        }
        let messages = array(request, "messages");
        self.messages = messages.len();
        for message in messages {
            if let Some(content) = message.get("content") {
                self.content(content);
            }
        }
        self.tools(request, "tools");
    }

    fn responses(&mut self, request: &Value) {
        match request.get("instructions") {
            Some(Value::Array(items)) => {
                for item in items {
                    self.responses_item(item);
                }
            }
            other => self.push_json(other),
        }
        match request.get("input") {
            Some(Value::String(input)) => {
                self.messages = 1;
                self.push(input);
            }
            Some(Value::Array(items)) => {
                self.messages = items.len();
                for item in items {
                    self.responses_item(item);
                }
            }
            _ => {}
        }
        self.tools(request, "tools");
        if let Some(format) = request.get("text").and_then(|t| t.get("format")) {
            self.push_json(format.get("schema"));
        }
    }

    fn responses_item(&mut self, item: &Value) {
        match item.get("type").and_then(Value::as_str) {
            Some("function_call") => {
                self.push_str_field(item, "name");
                self.push_json(item.get("arguments"));
            }
            Some("custom_tool_call") => {
                self.push_str_field(item, "name");
                self.push_json(item.get("input"));
            }
            Some("function_call_output" | "custom_tool_call_output") => {
                if let Some(output) = item.get("output") {
                    self.content(output);
                }
            }
            Some("reasoning") => {
                if let Some(summary) = item.get("summary") {
                    self.content(summary);
                }
            }
            Some("message") | None => {
                if let Some(content) = item.get("content") {
                    self.content(content);
                }
            }
            Some(_) => {}
        }
    }

    /// Tool definitions: name, description and schema of each.
    fn tools(&mut self, request: &Value, key: &str) {
        for tool in array(request, key) {
            // OpenAI chat nests the definition in `function` (or `custom`).
            let def = tool
                .get("function")
                .or_else(|| tool.get("custom"))
                .filter(|d| d.is_object())
                .unwrap_or(tool);
            self.push_str_field(def, "name");
            self.push_str_field(def, "description");
            for schema_key in ["parameters", "input_schema", "format"] {
                if let Some(schema) = def.get(schema_key).filter(|s| !s.is_null()) {
                    self.push(&compact(schema));
                }
            }
        }
    }

    /// A content value of any protocol: a string, one part, or an array of parts.
    fn content(&mut self, content: &Value) {
        match content {
            Value::String(s) => self.push(s),
            Value::Array(parts) => {
                for part in parts {
                    self.content(part);
                }
            }
            Value::Object(_) => self.part(content),
            _ => {}
        }
    }

    fn part(&mut self, part: &Value) {
        match part.get("type").and_then(Value::as_str) {
            Some("image_url" | "image" | "input_image") => self.images += 1,
            Some("refusal") => self.push_str_field(part, "refusal"),
            Some("thinking") => self.push_str_field(part, "thinking"),
            Some("tool_use" | "server_tool_use") => {
                self.push_str_field(part, "name");
                self.push_json(part.get("input"));
            }
            Some("tool_result") | Some("search_result") => {
                self.push_str_field(part, "title");
                if let Some(content) = part.get("content") {
                    self.content(content);
                }
            }
            Some("document") => {
                let source = part.get("source");
                match source.and_then(|s| s.get("type")).and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(source) = source {
                            self.push_str_field(source, "data");
                        }
                    }
                    Some("content") => {
                        if let Some(content) = source.and_then(|s| s.get("content")) {
                            self.content(content);
                        }
                    }
                    _ => {}
                }
            }
            Some("input_audio" | "file" | "input_file" | "redacted_thinking") => {}
            _ => self.push_str_field(part, "text"),
        }
    }
}

fn array<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value
        .get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}
