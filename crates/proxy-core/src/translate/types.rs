//! The parts of the OpenAI chat and Anthropic messages wire formats that the
//! translation reads and writes. Structs are flat (a `type` string plus
//! optional fields) rather than tagged enums, so opaque JSON can stay a
//! [`RawValue`] both ways (serde cannot buffer a `RawValue` inside a tagged
//! enum). Unknown fields are ignored when reading.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A JSON value kept as its exact bytes.
pub type Raw = Box<RawValue>;

// ---------------------------------------------------------------- OpenAI chat

/// An OpenAI chat completions request.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ChatRequest {
    /// Model name.
    #[serde(default)]
    pub model: String,
    /// The conversation.
    #[serde(default)]
    pub messages: Vec<ChatMessage>,
    /// Streamed answer (`null` means no).
    #[serde(
        default,
        deserialize_with = "null_as_false",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub stream: bool,
    /// Stream options (`include_usage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Legacy output limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Output limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    /// Sampling temperature (0–2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Stop sequences: a string or a list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    /// Tool definitions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<ChatTool>>,
    /// `"auto"`, `"none"`, `"required"` or `{type: function, function: {name}}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ChatToolChoice>,
    /// Whether the model may call several tools at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// End-user id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Number of choices (only 1 translates).
    #[serde(skip_serializing)]
    pub n: Option<u64>,
    /// Log probabilities (not translatable).
    #[serde(skip_serializing)]
    pub logprobs: Option<bool>,
    /// Top log probabilities (not translatable).
    #[serde(skip_serializing)]
    pub top_logprobs: Option<u64>,
    /// Structured output (only `text` translates).
    #[serde(skip_serializing)]
    pub response_format: Option<TypeOnly>,
    /// Output modalities (only `text` translates).
    #[serde(skip_serializing)]
    pub modalities: Option<Vec<String>>,
    /// Token biases (not translatable).
    #[serde(skip_serializing)]
    pub logit_bias: Option<serde::de::IgnoredAny>,
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct StreamOptions {
    /// Send a usage-only chunk before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// An object read only for its `type`.
#[derive(Debug, Deserialize)]
pub struct TypeOnly {
    /// The `type` field.
    #[serde(rename = "type", default)]
    pub kind: String,
}

/// OpenAI `stop`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Stop {
    /// One sequence.
    One(String),
    /// Several sequences.
    Many(Vec<String>),
}

/// OpenAI `tool_choice`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ChatToolChoice {
    /// `"auto"`, `"none"` or `"required"`.
    Mode(String),
    /// A named function.
    Named {
        /// `function`.
        #[serde(rename = "type")]
        kind: String,
        /// The function.
        function: FunctionName,
    },
}

/// `{name}`.
#[derive(Debug, Deserialize, Serialize)]
pub struct FunctionName {
    /// Function name.
    pub name: String,
}

/// One chat message.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// A string, a list of parts, or null.
    #[serde(default)]
    pub content: Option<Raw>,
    /// Tool calls of an assistant message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ChatToolCall>>,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// One content part of a chat message.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ChatPart {
    /// `text`, `image_url`, `input_audio`, `file`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// Text of a `text` part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Image of an `image_url` part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<ImageUrl>,
}

/// `image_url`: an http(s) URL or a `data:` URL.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ImageUrl {
    /// The URL.
    pub url: String,
}

/// One tool call of an assistant message.
#[derive(Debug, Deserialize, Serialize)]
pub struct ChatToolCall {
    /// Call id.
    pub id: String,
    /// `function`.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// Name and JSON-text arguments.
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".to_owned()
}

/// A function call: name and arguments as JSON text.
#[derive(Debug, Deserialize, Serialize)]
pub struct FunctionCall {
    /// Function name.
    pub name: String,
    /// Arguments, a JSON document as a string.
    #[serde(default)]
    pub arguments: String,
}

/// One tool definition.
#[derive(Debug, Deserialize, Serialize)]
pub struct ChatTool {
    /// `function` (the only kind that translates).
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionDef>,
}

/// A function definition.
#[derive(Debug, Deserialize, Serialize)]
pub struct FunctionDef {
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON schema of the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Raw>,
}

/// A chat completion (non-streaming answer).
#[derive(Debug, Deserialize)]
pub struct ChatResponse {
    /// Completion id.
    #[serde(default)]
    pub id: String,
    /// Model that answered.
    #[serde(default)]
    pub model: String,
    /// Choices (the first is used).
    #[serde(default)]
    pub choices: Vec<ChatChoice>,
    /// Token usage.
    #[serde(default)]
    pub usage: Option<ChatUsage>,
}

/// One choice of a chat completion.
#[derive(Debug, Deserialize)]
pub struct ChatChoice {
    /// The answer.
    pub message: ChatMessage,
    /// Why generation stopped.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// OpenAI usage.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ChatUsage {
    /// Prompt tokens, cached ones included.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Completion tokens.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Prompt detail (cached tokens).
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

/// `prompt_tokens_details`.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens read from the cache.
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

// ------------------------------------------------------- Anthropic messages

/// An Anthropic messages request.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct MessagesRequest {
    /// Model name.
    #[serde(default)]
    pub model: String,
    /// Output limit (required by Anthropic).
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// System prompt: a string or text blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<Raw>,
    /// The conversation.
    #[serde(default)]
    pub messages: Vec<AnthropicMessage>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_sequences: Option<Vec<String>>,
    /// Sampling temperature (0–1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Top-k sampling (not translatable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u64>,
    /// Streamed answer (`null` means no).
    #[serde(
        default,
        deserialize_with = "null_as_false",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub stream: bool,
    /// Tool definitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<AnthropicTool>>,
    /// Tool choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<AnthropicToolChoice>,
    /// Request metadata (`user_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Extended thinking (only `disabled` translates).
    #[serde(default, skip_serializing)]
    pub thinking: Option<TypeOnly>,
}

/// Anthropic `metadata`.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Metadata {
    /// End-user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// One Anthropic message.
#[derive(Debug, Deserialize, Serialize)]
pub struct AnthropicMessage {
    /// `user` or `assistant`.
    pub role: String,
    /// A string or a list of blocks.
    pub content: Raw,
}

/// One Anthropic content block (any kind; fields by kind).
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Block {
    /// `text`, `image`, `tool_use`, `tool_result`, `thinking`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ImageSource>,
    /// `tool_use` id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `tool_use` name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `tool_use` input (a JSON object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Raw>,
    /// `tool_result`: the call answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_use_id: Option<String>,
    /// `tool_result` content: a string or blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Raw>,
    /// `tool_result` marks a failed call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_error: Option<bool>,
}

/// An image source: base64 data or a URL.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ImageSource {
    /// `base64` or `url`.
    #[serde(rename = "type")]
    pub kind: String,
    /// MIME type of base64 data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Base64 data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Image URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// One Anthropic tool definition.
#[derive(Debug, Deserialize, Serialize)]
pub struct AnthropicTool {
    /// Absent or `custom` for client tools; server tools have their own types.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON schema of the input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Raw>,
}

/// Anthropic `tool_choice`.
#[derive(Debug, Deserialize, Serialize)]
pub struct AnthropicToolChoice {
    /// `auto`, `any`, `tool` or `none`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The tool, for `tool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// At most one tool call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_parallel_tool_use: Option<bool>,
}

/// An Anthropic message answer (non-streaming).
#[derive(Debug, Deserialize)]
pub struct MessagesResponse {
    /// Message id.
    #[serde(default)]
    pub id: String,
    /// Model that answered.
    #[serde(default)]
    pub model: String,
    /// Content blocks.
    #[serde(default)]
    pub content: Vec<Block>,
    /// Why generation stopped.
    #[serde(default)]
    pub stop_reason: Option<String>,
    /// Token usage.
    #[serde(default)]
    pub usage: AnthropicUsage,
}

/// Anthropic usage (also the shape of stream `usage` objects).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct AnthropicUsage {
    /// Uncached input tokens.
    #[serde(default)]
    pub input_tokens: Option<u64>,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: Option<u64>,
    /// Input tokens read from the cache.
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
    /// Input tokens written to the cache.
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
}

/// A string-or-blocks content value, read.
#[derive(Debug)]
pub enum Content<T> {
    /// Plain text.
    Text(String),
    /// A list of parts or blocks.
    Parts(Vec<T>),
}

/// Reads a content value that is a string, a list, or (when `null_ok`) null.
pub fn read_content<T: serde::de::DeserializeOwned>(
    raw: Option<&RawValue>,
    what: &str,
) -> Result<Option<Content<T>>, String> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.get().trim_start();
    if text.starts_with("null") {
        return Ok(None);
    }
    if text.starts_with('"') {
        return serde_json::from_str::<String>(text)
            .map(|s| Some(Content::Text(s)))
            .map_err(|e| format!("{what}: {e}"));
    }
    serde_json::from_str::<Vec<T>>(text)
        .map(|v| Some(Content::Parts(v)))
        .map_err(|e| format!("{what} must be a string or a list: {e}"))
}

/// A JSON value serialized as raw bytes (never fails for plain data).
pub fn raw<T: Serialize>(value: &T) -> Raw {
    serde_json::value::to_raw_value(value).unwrap_or_else(|_| empty_object())
}

/// OpenAI tool-call `arguments` (JSON text) as an Anthropic `input`, which
/// must be a JSON object. An object crosses byte for byte; empty text is `{}`;
/// anything else (truncated at `max_tokens`, a bare value, not JSON at all) is
/// kept as `{"_raw": "<text>"}`, so the call is never refused or lost.
pub fn arguments_to_input(arguments: &str) -> Raw {
    let trimmed = arguments.trim();
    if trimmed.is_empty() {
        return empty_object();
    }
    if trimmed.starts_with('{')
        && let Ok(input) = RawValue::from_string(trimmed.to_owned())
    {
        return input;
    }
    tracing::debug!(
        len = arguments.len(),
        "tool call arguments are not a JSON object; sent as {{\"_raw\": text}}"
    );
    raw(&serde_json::json!({ "_raw": arguments }))
}

/// A boolean that may be `null` (read as `false`), as the protocols' own
/// servers accept it.
fn null_as_false<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// `{}`.
pub fn empty_object() -> Raw {
    RawValue::from_string("{}".to_owned()).unwrap_or_default()
}
