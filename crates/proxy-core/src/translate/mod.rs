//! Cross-protocol translation: an OpenAI chat client served by an Anthropic
//! backend, and an Anthropic messages client served by an OpenAI-type backend.
//!
//! Everything here is a pure function over typed structs ([`types`]): the
//! request codec ([`request`]), the JSON response and error codec
//! ([`response`]) and a stateful SSE transcoder ([`stream`]) that is fed
//! upstream bytes in arbitrary chunk splits. The pipeline picks a
//! [`Translation`] only when the client's protocol and the backend's type
//! differ; same-protocol traffic never reaches this module.
//!
//! Opaque JSON (tool arguments, tool inputs, JSON schemas) is carried as
//! [`serde_json::value::RawValue`], so it crosses the translation byte for byte.

pub mod request;
pub mod response;
pub mod stream;
pub mod types;

use bytes::Bytes;

use crate::config::BackendType;
use crate::protocol::Frontend;

pub use stream::StreamTranscoder;

/// A request in one protocol that cannot be served in the other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TranslateError {
    /// The request uses a feature the target protocol lacks; names the feature.
    #[error("{feature} cannot be translated from {from} to {to}")]
    Unsupported {
        /// The feature, as the client would recognise it (e.g. `n > 1`).
        feature: String,
        /// Client protocol.
        from: &'static str,
        /// Backend protocol.
        to: &'static str,
    },
    /// The body does not have the shape its protocol requires.
    #[error("{0}")]
    Invalid(String),
}

/// The direction of a translation, named by the client's protocol first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Translation {
    /// OpenAI chat client, Anthropic backend.
    ChatToAnthropic,
    /// Anthropic messages client, OpenAI-type (chat completions) backend.
    AnthropicToChat,
}

impl Translation {
    /// The translation needed to serve `frontend` from a backend of
    /// `backend_type`: `Ok(None)` when the backend speaks it natively, an
    /// error when no translation exists.
    pub fn between(
        frontend: Frontend,
        backend_type: BackendType,
    ) -> Result<Option<Translation>, TranslateError> {
        if backend_type.serves(frontend) {
            return Ok(None);
        }
        match (frontend, backend_type) {
            (Frontend::OpenAiChat, BackendType::Anthropic) => {
                Ok(Some(Translation::ChatToAnthropic))
            }
            (Frontend::AnthropicMessages, BackendType::OpenAi) => {
                Ok(Some(Translation::AnthropicToChat))
            }
            _ => Err(TranslateError::Unsupported {
                feature: format!("the {} API", frontend.describe()),
                from: frontend.describe(),
                to: protocol_name(backend_type),
            }),
        }
    }

    /// The client's protocol.
    pub fn client(self) -> Frontend {
        match self {
            Translation::ChatToAnthropic => Frontend::OpenAiChat,
            Translation::AnthropicToChat => Frontend::AnthropicMessages,
        }
    }

    /// The protocol the backend is spoken to in.
    pub fn backend(self) -> Frontend {
        match self {
            Translation::ChatToAnthropic => Frontend::AnthropicMessages,
            Translation::AnthropicToChat => Frontend::OpenAiChat,
        }
    }

    /// The client's request body in the backend's protocol, for `model`.
    /// `stream_usage`: an OpenAI-type backend is asked for a streamed usage
    /// chunk (`stream_options.include_usage`).
    pub fn request(
        self,
        body: &[u8],
        model: &str,
        stream_usage: bool,
    ) -> Result<Bytes, TranslateError> {
        self.prepare(body)?.body_for(model, stream_usage)
    }

    /// Converts the client's request once; [`PreparedRequest::body_for`]
    /// then writes it for each target. Fails when the request cannot be
    /// translated (whatever the target), so the pipeline can tell before
    /// trying any target.
    pub fn prepare(self, body: &[u8]) -> Result<PreparedRequest, TranslateError> {
        Ok(match self {
            Translation::ChatToAnthropic => {
                let req: types::ChatRequest = serde_json::from_slice(body).map_err(|e| {
                    TranslateError::Invalid(format!("invalid OpenAI chat request: {e}"))
                })?;
                let client_max_tokens = req.max_completion_tokens.or(req.max_tokens);
                PreparedRequest::Messages {
                    request: request::chat_request_to_anthropic(req, "")?,
                    client_max_tokens,
                }
            }
            Translation::AnthropicToChat => {
                let req: types::MessagesRequest = serde_json::from_slice(body).map_err(|e| {
                    TranslateError::Invalid(format!("invalid Anthropic messages request: {e}"))
                })?;
                PreparedRequest::Chat(request::anthropic_request_to_chat(req, "", false)?)
            }
        })
    }

    /// A complete (non-streaming, successful) backend answer in the client's protocol.
    pub fn response(self, body: &[u8]) -> Result<Bytes, TranslateError> {
        match self {
            Translation::ChatToAnthropic => response::anthropic_to_chat(body),
            Translation::AnthropicToChat => response::chat_to_anthropic(body),
        }
    }

    /// A backend error answer (status and body) in the client's style.
    pub fn error(self, status: u16, body: &[u8]) -> (u16, Bytes) {
        response::error(self.client(), status, body)
    }

    /// A transcoder for the backend's SSE stream. `include_usage`: the client
    /// asked for a usage chunk (OpenAI `stream_options.include_usage`).
    pub fn stream(self, include_usage: bool) -> StreamTranscoder {
        match self {
            Translation::ChatToAnthropic => StreamTranscoder::anthropic_to_chat(include_usage),
            Translation::AnthropicToChat => StreamTranscoder::chat_to_anthropic(),
        }
    }
}

/// A translated request waiting for its target (see [`Translation::prepare`]).
#[derive(Debug)]
pub enum PreparedRequest {
    /// For an Anthropic backend.
    Messages {
        /// The translated request (model and `max_tokens` set per target).
        request: types::MessagesRequest,
        /// The output limit the client gave, if any.
        client_max_tokens: Option<u64>,
    },
    /// For an OpenAI-type backend.
    Chat(types::ChatRequest),
}

impl PreparedRequest {
    /// The body for a target serving `model`; `stream_usage` as in
    /// [`Translation::request`].
    pub fn body_for(&mut self, model: &str, stream_usage: bool) -> Result<Bytes, TranslateError> {
        match self {
            PreparedRequest::Messages {
                request,
                client_max_tokens,
            } => {
                model.clone_into(&mut request.model);
                request.max_tokens =
                    Some(client_max_tokens.unwrap_or_else(|| default_max_tokens(model)));
                request::to_bytes(request)
            }
            PreparedRequest::Chat(request) => {
                model.clone_into(&mut request.model);
                request.stream_options = request::stream_options(request.stream, stream_usage);
                request::to_bytes(request)
            }
        }
    }
}

fn protocol_name(backend_type: BackendType) -> &'static str {
    match backend_type {
        BackendType::Anthropic => "Anthropic messages",
        BackendType::OpenAi => "OpenAI chat",
        BackendType::Mock => "mock",
    }
}

/// The `max_tokens` sent to an Anthropic backend when an OpenAI client gives
/// none (Anthropic requires it): 4096 for the Claude 3 (3.0), Claude 2 and
/// Claude Instant families, whose output limit it is, else 8192. The family
/// may appear anywhere in the id (`anthropic.claude-3-haiku-…-v1:0`,
/// `anthropic/claude-3-haiku`).
pub fn default_max_tokens(model: &str) -> u64 {
    let m = model.to_ascii_lowercase();
    let small = [
        "claude-3-haiku",
        "claude-3-sonnet",
        "claude-3-opus",
        "claude-2",
        "claude-instant",
    ]
    .iter()
    .any(|p| m.contains(p));
    if small { 4096 } else { 8192 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cross_protocol_pairs_translate() {
        use BackendType::*;
        use Frontend::*;
        assert_eq!(Translation::between(OpenAiChat, OpenAi), Ok(None));
        assert_eq!(Translation::between(AnthropicMessages, Mock), Ok(None));
        assert_eq!(
            Translation::between(OpenAiChat, Anthropic),
            Ok(Some(Translation::ChatToAnthropic))
        );
        assert_eq!(
            Translation::between(AnthropicMessages, OpenAi),
            Ok(Some(Translation::AnthropicToChat))
        );
        let err = Translation::between(OpenAiResponses, Anthropic).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the OpenAI responses API cannot be translated from OpenAI responses to Anthropic messages"
        );
    }

    #[test]
    fn max_tokens_defaults_follow_the_model_family() {
        assert_eq!(default_max_tokens("claude-3-haiku-20240307"), 4096);
        assert_eq!(default_max_tokens("claude-3-5-sonnet-latest"), 8192);
        assert_eq!(default_max_tokens("claude-sonnet-4-5"), 8192);
        assert_eq!(
            default_max_tokens("anthropic.claude-3-haiku-20240307-v1:0"),
            4096
        );
        assert_eq!(default_max_tokens("anthropic/claude-3-haiku"), 4096);
        assert_eq!(default_max_tokens("claude-2.1"), 4096);
        assert_eq!(default_max_tokens("claude-instant-1.2"), 4096);
        assert_eq!(
            default_max_tokens("anthropic.claude-3-5-sonnet-20240620-v1:0"),
            8192
        );
    }
}
