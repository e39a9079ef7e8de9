//! [`ResponseFacts`] and the streaming [`ResponseAccumulator`] that builds them.

use std::sync::LazyLock;

use bytes::Bytes;
use llm_proxy_core::Frontend;
use memchr::memmem::Finder;

use super::anthropic::{AnthropicIn, AnthropicState};
use super::json::truncate;
use super::lenient::{Field, parse, parse_str};
use super::openai_chat::{ChatIn, ChatState};
use super::responses::{ResponsesIn, ResponsesState};
use super::scan::{closes_the_object, sole_usage_value, usage_span};
use super::sse::SseParser;
use super::usage::{
    AnthropicUsage, UsageField, parse_usage_field, read_plain_usage_prefix, usage_from_field,
};
use crate::record::BackendUsage;

/// Largest JSON body buffered for extraction; a bigger body yields no facts.
const MAX_JSON_BODY_BYTES: usize = 64 * 1024 * 1024;
/// How much of a stream is kept, until its first event, in case it is a JSON body.
const MAX_SSE_PREFIX_BYTES: usize = 1024 * 1024;
/// Longest raw (non-JSON) error event data kept.
const MAX_RAW_ERROR_BYTES: usize = 2048;

/// What a response (backend → proxy, or proxy → client) said.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseFacts {
    /// Usage reported in the response, normalized (see the module docs).
    pub usage: Option<BackendUsage>,
    /// The generated text: message content, refusals (OpenAI), text blocks.
    /// Separate choices / output items are joined with `\n`.
    pub text: String,
    /// Reasoning text the backend returned (Anthropic `thinking`, OpenAI-compatible
    /// `reasoning_content` / `reasoning`, Responses reasoning summaries and text).
    /// Not part of `text`; it is completion tokens too.
    pub reasoning: String,
    /// Tool calls in output order, arguments reassembled from streamed pieces.
    pub tool_calls: Vec<ToolCall>,
    /// OpenAI `finish_reason`, Anthropic `stop_reason`, Responses
    /// `incomplete_details.reason` or else the terminal `status`.
    pub finish_reason: Option<String>,
    /// An error reported in the body or as an error event (`"<code or type>: <message>"`).
    pub error: Option<String>,
    /// The model as the response reports it (the latest seen).
    pub model: Option<String>,
}

impl ResponseFacts {
    /// Facts of a complete JSON body.
    pub fn from_json(protocol: Frontend, body: &[u8]) -> ResponseFacts {
        let mut acc = ResponseAccumulator::new(protocol, false);
        acc.push(body);
        acc.finish()
    }

    /// Facts of a complete SSE stream.
    pub fn from_sse(protocol: Frontend, stream: &[u8]) -> ResponseFacts {
        let mut acc = ResponseAccumulator::new(protocol, true);
        acc.push(stream);
        acc.finish()
    }
}

/// A tool call made by the model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCall {
    /// The tool (function) name.
    pub name: String,
    /// The arguments as JSON text (streamed pieces concatenated; Anthropic
    /// non-streamed `input` serialized compactly).
    pub arguments: String,
}

/// Builds [`ResponseFacts`] from a response body fed chunk by chunk.
///
/// JSON bodies are buffered and read at [`finish`](Self::finish); SSE streams
/// are parsed as chunks arrive (chunk boundaries may fall anywhere), so
/// finishing early (a client that left) gives the facts seen so far. Never
/// panics: garbage only means fewer facts. Lenient about a wrong `is_sse`: a
/// "JSON" body that is an event stream is read as one, and a "stream" whose
/// whole content is a JSON object (an upstream error body) is read as JSON.
#[derive(Debug)]
pub struct ResponseAccumulator {
    state: State,
    mode: Mode,
    protocol: Frontend,
    /// Only usage, tool calls and errors are wanted (see [`Self::essentials`]).
    essentials_only: bool,
}

#[derive(Debug)]
enum Mode {
    Json {
        buf: Vec<u8>,
        overflow: bool,
    },
    Sse {
        parser: SseParser,
        events: u64,
        prefix: Vec<u8>,
        prefix_overflow: bool,
    },
}

impl ResponseAccumulator {
    /// An accumulator for a response in `protocol`, an SSE stream when `is_sse`.
    pub fn new(protocol: Frontend, is_sse: bool) -> ResponseAccumulator {
        let mode = if is_sse {
            Mode::Sse {
                parser: SseParser::new(),
                events: 0,
                prefix: Vec::new(),
                prefix_overflow: false,
            }
        } else {
            Mode::Json {
                buf: Vec::new(),
                overflow: false,
            }
        };
        ResponseAccumulator {
            state: State::new(protocol),
            mode,
            protocol,
            essentials_only: false,
        }
    }

    /// An accumulator for what every usage record needs: the usage and the
    /// tool calls' names. Stream events that cannot carry them (text,
    /// reasoning and argument deltas: nearly every event) are skipped
    /// unparsed, and a JSON body with no tool call or error is read for its
    /// `usage` alone. The other facts (text, reasoning, arguments, finish
    /// reason, model, error) may be incomplete: [`Self::new`] reads them all.
    pub fn essentials(protocol: Frontend, is_sse: bool) -> ResponseAccumulator {
        ResponseAccumulator {
            essentials_only: true,
            ..ResponseAccumulator::new(protocol, is_sse)
        }
    }

    /// Feeds the next chunk of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        match &mut self.mode {
            Mode::Json { buf, overflow } => {
                if *overflow {
                    return;
                }
                if buf.len().saturating_add(chunk.len()) > MAX_JSON_BODY_BYTES {
                    *overflow = true;
                    *buf = Vec::new();
                } else {
                    buf.extend_from_slice(chunk);
                }
            }
            Mode::Sse {
                parser,
                events,
                prefix,
                prefix_overflow,
            } => {
                if *events == 0 && !*prefix_overflow {
                    if prefix.len().saturating_add(chunk.len()) > MAX_SSE_PREFIX_BYTES {
                        *prefix_overflow = true;
                        *prefix = Vec::new();
                    } else {
                        prefix.extend_from_slice(chunk);
                    }
                }
                let state = &mut self.state;
                let all = !self.essentials_only;
                parser.feed_borrowed(chunk, |name, data| {
                    *events += 1;
                    if all || carries_essentials(name, data) {
                        state.sse_event(name, data);
                    }
                });
                if *events > 0 && !prefix.is_empty() {
                    *prefix = Vec::new();
                }
            }
        }
    }

    /// Ends the body and returns what was found.
    pub fn finish(self) -> ResponseFacts {
        let ResponseAccumulator {
            mut state,
            mode,
            protocol,
            essentials_only,
        } = self;
        match mode {
            Mode::Json { buf, overflow } => {
                if overflow {
                    return state.finish();
                }
                return read_json_body(state, protocol, essentials_only, &buf);
            }
            Mode::Sse {
                mut parser,
                mut events,
                prefix,
                prefix_overflow,
            } => {
                parser.finish_borrowed(|name, data| {
                    events += 1;
                    if !essentials_only || carries_essentials(name, data) {
                        state.sse_event(name, data);
                    }
                });
                if events == 0 && !prefix_overflow {
                    state.body(&prefix, true);
                }
            }
        }
        state.finish()
    }
}

/// What every usage record needs (see [`ResponseAccumulator::essentials`])
/// from a response that arrived as `chunks`: a JSON body in one chunk (the
/// usual case) is read where it lies, without a copy.
pub fn essentials_of(protocol: Frontend, is_sse: bool, chunks: &[Bytes]) -> ResponseFacts {
    if let [body] = chunks
        && !is_sse
        && body.len() <= MAX_JSON_BODY_BYTES
    {
        return read_json_body(State::new(protocol), protocol, true, body);
    }
    let mut acc = ResponseAccumulator::essentials(protocol, is_sse);
    for c in chunks {
        acc.push(c);
    }
    acc.finish()
}

/// Reads a whole (not SSE-framed) JSON response body.
fn read_json_body(
    mut state: State,
    protocol: Frontend,
    essentials_only: bool,
    body: &[u8],
) -> ResponseFacts {
    if essentials_only && let Some(usage) = usage_only(protocol, body) {
        return ResponseFacts {
            usage,
            ..ResponseFacts::default()
        };
    }
    if !state.body(body, false) && looks_like_sse(body) {
        let mut parser = SseParser::new();
        parser.feed_borrowed(body, |name, data| state.sse_event(name, data));
        parser.finish_borrowed(|name, data| state.sse_event(name, data));
    }
    state.finish()
}

/// Byte strings whose presence means an event or body may make or name a
/// tool call or report an error (suffix matches: `tool_use"` also finds
/// `server_tool_use"`; the Responses argument events make a tool call too),
/// searched one at a time (the reference of [`names_tools_or_errors`]).
#[cfg(test)]
const ESSENTIAL_KEYS: [&[u8]; 8] = [
    b"tool_calls\"",
    b"function_call\"",
    b"tool_call\"",
    b"tool_use\"",
    b"function_call_arguments",
    b"custom_tool_call_input",
    b"input_json_delta",
    b"\"error\"",
];

/// Whether an SSE event may carry usage, a tool call's name or an error.
/// Inside JSON strings quotes are escaped, so these byte strings can only be
/// keys (or whole string values); an event without any of them is a delta
/// of text, reasoning or arguments.
fn carries_essentials(name: Option<&str>, data: &str) -> bool {
    let named = name
        .is_some_and(|n| n == "error" || n.contains("function_call") || n.contains("tool_call"));
    named || names_tools_or_errors(data.as_bytes()) || has_usage(data.as_bytes())
}

/// Searchers built once (building one costs more than a search of an event).
#[cfg(test)]
static ESSENTIAL_FINDERS: LazyLock<Vec<Finder<'static>>> =
    LazyLock::new(|| ESSENTIAL_KEYS.iter().copied().map(Finder::new).collect());
static ERROR_FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"error\""));
pub(super) static USAGE_FINDER: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"usage\""));

/// An essential needle (a tool needle, see [`tool_needle_at`], or `"error"`)
/// occurs with a value (see [`found_with_a_value`]): two passes over `data` (every
/// `_`, then `"error"`) instead of one per needle.
pub(super) fn names_tools_or_errors(data: &[u8]) -> bool {
    names_tools(data) || found_with_a_value(&ERROR_FINDER, data)
}

/// A tool needle ([`tool_needle_at`]) occurs with a value: one pass over `data`.
pub(super) fn names_tools(data: &[u8]) -> bool {
    memchr::memchr_iter(b'_', data).any(|at| tool_needle_at(data, at))
}

/// A tool needle (every essential needle but `"error"`: `tool_calls"`,
/// `tool_call"`, `function_call"`, `function_call_arguments`, `tool_use"`,
/// `custom_tool_call_input`, `input_json_delta`) has its first `_` at `at`
/// and a value. The bytes around that `_` tell which needles may.
fn tool_needle_at(data: &[u8], at: usize) -> bool {
    let (Some(&before), Some(&after)) = (data.get(at.wrapping_sub(1)), data.get(at + 1)) else {
        return false;
    };
    // (needle, offset of its first `_`)
    let candidates: &[(&[u8], usize)] = match (before, after) {
        (b'l', b'c') => &[(b"tool_calls\"", 4), (b"tool_call\"", 4)],
        (b'n', b'c') => &[(b"function_call\"", 8), (b"function_call_arguments", 8)],
        (b'l', b'u') => &[(b"tool_use\"", 4)],
        (b'm', b't') => &[(b"custom_tool_call_input", 6)],
        (b't', b'j') => &[(b"input_json_delta", 5)],
        _ => return false,
    };
    candidates.iter().any(|&(needle, offset)| {
        at.checked_sub(offset)
            .and_then(|start| data.get(start..))
            .is_some_and(|from| {
                from.starts_with(needle)
                    && has_a_value(from.get(needle.len()..).unwrap_or_default())
            })
    })
}

/// [`names_tools_or_errors`] one needle at a time (its reference).
#[cfg(test)]
pub(super) fn names_tools_or_errors_reference(data: &[u8]) -> bool {
    ESSENTIAL_FINDERS
        .iter()
        .any(|f| found_with_a_value(f, data))
}

/// A `"usage"` key whose value is not `null` (OpenAI puts `"usage": null` in
/// every chunk of a stream that asked for usage, but the last).
fn has_usage(data: &[u8]) -> bool {
    found_with_a_value(&USAGE_FINDER, data)
}

/// `finder`'s needle occurs other than as a key whose value is `null` or
/// `[]` (servers repeat `"tool_calls": []` or `"error": null` in events
/// that carry neither).
fn found_with_a_value(finder: &Finder<'_>, data: &[u8]) -> bool {
    finder
        .find_iter(data)
        .any(|at| has_a_value(data.get(at + finder.needle().len()..).unwrap_or_default()))
}

/// Whether a needle followed by `rest` counts: unless it is a key whose
/// value is `null` or `[]`.
pub(super) fn has_a_value(rest: &[u8]) -> bool {
    match rest.trim_ascii_start().strip_prefix(b":") {
        Some(value) => {
            let value = value.trim_ascii_start();
            !(value.starts_with(b"null") || value.starts_with(b"[]"))
        }
        None => true,
    }
}

/// The usage of a JSON object body that names no tool call and reports no
/// error (then nothing else in it is essential): `Some(None)` when it has
/// none. `None` when the body needs the full reading. One pass over the
/// body ([`usage_span`]); only the `usage` value is parsed.
fn usage_only(protocol: Frontend, body: &[u8]) -> Option<Option<BackendUsage>> {
    // `usage_span` looks for `"error"` itself (it knows where strings end).
    if names_tools(body) {
        return None;
    }
    if let Some(usage) = closing_usage(body) {
        return Some(usage_of(protocol, &usage));
    }
    let usage = match usage_span(body)? {
        Some(span) => parse_usage_field(span)?,
        None => UsageField::default(),
    };
    Some(usage_of(protocol, &usage))
}

/// The shortcut of [`usage_only`] for a body whose one `"usage"` is its
/// last member (OpenAI's bodies): that value read by hand, the rest of the
/// body not walked (see `extract::scan`). `None`: take the whole pass.
pub(super) fn closing_usage(body: &[u8]) -> Option<UsageField> {
    let start = sole_usage_value(body)?;
    let (usage, rest) = read_plain_usage_prefix(body.get(start..)?)?;
    // `usage_span` refuses a body reporting an error; so does this.
    (closes_the_object(rest) && !found_with_a_value(&ERROR_FINDER, body)).then_some(usage)
}

/// The normalized usage of a body's `usage` field.
fn usage_of(protocol: Frontend, usage: &UsageField) -> Option<BackendUsage> {
    match protocol {
        Frontend::AnthropicMessages => {
            let mut merged = AnthropicUsage::default();
            merged.merge(usage);
            merged.normalized()
        }
        _ => usage_from_field(protocol, usage),
    }
}

/// The top-level keys read of a body when only its usage is wanted.
#[cfg(test)]
#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct UsageOnly {
    usage: UsageField,
}

/// [`usage_only`] as it was before [`usage_span`]: the essential-key
/// prefilter, then serde over the whole body (the scanner's reference).
#[cfg(test)]
pub(super) fn usage_only_reference(
    protocol: Frontend,
    body: &[u8],
) -> Option<Option<BackendUsage>> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body.get(start) != Some(&b'{') || names_tools_or_errors_reference(body) {
        return None;
    }
    let mut scratch = String::new();
    let parsed = parse::<Field<UsageOnly>>(body, &mut scratch)?.into_object()?;
    Some(usage_of(protocol, &parsed.usage))
}

/// [`usage_only`], for the scanner's tests.
#[cfg(test)]
pub(super) fn usage_only_scanned(protocol: Frontend, body: &[u8]) -> Option<Option<BackendUsage>> {
    usage_only(protocol, body)
}

fn looks_like_sse(buf: &[u8]) -> bool {
    let buf = buf.strip_prefix(&[0xEF, 0xBB, 0xBF][..]).unwrap_or(buf);
    let start = buf
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(buf.len());
    let buf = buf.get(start..).unwrap_or_default();
    buf.starts_with(b"data:") || buf.starts_with(b"event:") || buf.starts_with(b":")
}

/// The per-protocol state, fed JSON bodies and SSE events.
#[derive(Debug)]
enum State {
    Chat(ChatState),
    Anthropic(AnthropicState),
    Responses(ResponsesState),
}

impl State {
    fn new(protocol: Frontend) -> State {
        match protocol {
            Frontend::OpenAiChat => State::Chat(ChatState::default()),
            Frontend::AnthropicMessages => State::Anthropic(AnthropicState::default()),
            Frontend::OpenAiResponses => State::Responses(ResponsesState::default()),
        }
    }

    fn sse_event(&mut self, name: Option<&str>, data: &str) {
        let data = data.trim();
        if data.is_empty() || data == "[DONE]" {
            return;
        }
        let mut scratch = String::new();
        let parsed = match self {
            State::Chat(s) => parse_str::<Field<ChatIn<'_>>>(data, &mut scratch)
                .map(|value| s.value(&value.into_object_or_default())),
            State::Anthropic(s) => parse_str::<Field<AnthropicIn<'_>>>(data, &mut scratch)
                .map(|value| s.event(name, value.into_object_or_default())),
            State::Responses(s) => parse_str::<Field<ResponsesIn<'_>>>(data, &mut scratch)
                .map(|value| s.event(name, value.into_object_or_default(), data)),
        };
        if parsed.is_none() && name == Some("error") {
            let message = truncate(data.to_owned(), MAX_RAW_ERROR_BYTES);
            match self {
                State::Chat(s) => s.error = Some(message),
                State::Anthropic(s) => s.error = Some(message),
                State::Responses(s) => s.error = Some(message),
            }
        }
    }

    /// Reads a whole JSON body (when `only_object`, only a JSON object);
    /// false when it is not JSON.
    fn body(&mut self, body: &[u8], only_object: bool) -> bool {
        let mut scratch = String::new();
        match self {
            State::Chat(s) => parse::<Field<ChatIn<'_>>>(body, &mut scratch)
                .map(|value| {
                    if !only_object || value.object().is_some() {
                        s.value(&value.into_object_or_default());
                    }
                })
                .is_some(),
            State::Anthropic(s) => parse::<Field<AnthropicIn<'_>>>(body, &mut scratch)
                .map(|value| {
                    if !only_object || value.object().is_some() {
                        s.body(value.into_object_or_default());
                    }
                })
                .is_some(),
            State::Responses(s) => parse::<Field<ResponsesIn<'_>>>(body, &mut scratch)
                .map(|value| {
                    if !only_object || value.object().is_some() {
                        s.body(value.into_object_or_default());
                    }
                })
                .is_some(),
        }
    }

    fn finish(self) -> ResponseFacts {
        match self {
            State::Chat(s) => s.finish(),
            State::Anthropic(s) => s.finish(),
            State::Responses(s) => s.finish(),
        }
    }
}

/// Joins non-empty pieces with `\n`.
pub(crate) fn join_nonempty<'a>(pieces: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for piece in pieces.into_iter().filter(|p| !p.is_empty()) {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(piece);
    }
    out
}

/// Sets `slot` to `text`, allocating only when it changes (a stream repeats
/// its model in every event).
pub(crate) fn set_text(slot: &mut Option<String>, text: &str) {
    if slot.as_deref() != Some(text) {
        *slot = Some(text.to_owned());
    }
}
