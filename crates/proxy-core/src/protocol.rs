//! The wire protocols clients speak to the proxy, and their error shapes.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The protocol a client speaks on a front-end route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frontend {
    /// OpenAI Chat Completions, `POST /v1/chat/completions`.
    #[serde(rename = "openai")]
    OpenAiChat,
    /// Anthropic Messages, `POST /v1/messages`.
    #[serde(rename = "anthropic")]
    AnthropicMessages,
    /// OpenAI Responses, `POST /v1/responses`.
    #[serde(rename = "responses")]
    OpenAiResponses,
}

impl Frontend {
    /// The `frontend_type` name used in usage records and filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Frontend::OpenAiChat => "openai",
            Frontend::AnthropicMessages => "anthropic",
            Frontend::OpenAiResponses => "responses",
        }
    }

    /// A human name for messages: `OpenAI chat`, `Anthropic messages`, `OpenAI responses`.
    pub fn describe(self) -> &'static str {
        match self {
            Frontend::OpenAiChat => "OpenAI chat",
            Frontend::AnthropicMessages => "Anthropic messages",
            Frontend::OpenAiResponses => "OpenAI responses",
        }
    }

    /// The route path (relative to the API version prefix) for this protocol.
    pub fn upstream_path(self) -> &'static str {
        match self {
            Frontend::OpenAiChat => "/chat/completions",
            Frontend::AnthropicMessages => "/messages",
            Frontend::OpenAiResponses => "/responses",
        }
    }

    /// The front-end protocol served at `path`, if any.
    pub fn from_path(path: &str) -> Option<Frontend> {
        match path {
            "/v1/chat/completions" => Some(Frontend::OpenAiChat),
            "/v1/messages" => Some(Frontend::AnthropicMessages),
            "/v1/responses" => Some(Frontend::OpenAiResponses),
            _ => None,
        }
    }

    /// A complete JSON error body in this protocol's style.
    pub fn error_body(self, status: u16, message: &str) -> Bytes {
        let body = match self {
            Frontend::AnthropicMessages => serde_json::json!({
                "type": "error",
                "error": {"type": anthropic_error_type(status), "message": message},
            }),
            Frontend::OpenAiChat | Frontend::OpenAiResponses => serde_json::json!({
                "error": {
                    "message": message,
                    "type": openai_error_type(status),
                    "param": null,
                    "code": openai_error_code(status),
                },
            }),
        };
        Bytes::from(body.to_string())
    }

    /// One SSE event that tells a streaming client the stream failed, in this
    /// protocol's style. Sent when an upstream fails after bytes reached the client.
    pub fn stream_error_event(self, status: u16, message: &str) -> Bytes {
        match self {
            Frontend::AnthropicMessages => {
                let body = serde_json::json!({
                    "type": "error",
                    "error": {"type": anthropic_error_type(status), "message": message},
                });
                Bytes::from(format!("event: error\ndata: {body}\n\n"))
            }
            Frontend::OpenAiResponses => {
                let body = serde_json::json!({
                    "type": "error",
                    "code": openai_error_code(status),
                    "message": message,
                    "param": null,
                });
                Bytes::from(format!("event: error\ndata: {body}\n\n"))
            }
            Frontend::OpenAiChat => {
                let body = serde_json::json!({
                    "error": {
                        "message": message,
                        "type": openai_error_type(status),
                        "param": null,
                        "code": openai_error_code(status),
                    },
                });
                Bytes::from(format!("data: {body}\n\n"))
            }
        }
    }
}

fn openai_error_type(status: u16) -> &'static str {
    match status {
        400 | 404 | 413 | 422 => "invalid_request_error",
        401 | 403 => "authentication_error",
        429 => "rate_limit_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

fn openai_error_code(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "invalid_api_key",
        403 => "permission_denied",
        404 => "not_found",
        413 => "request_too_large",
        429 => "rate_limit_exceeded",
        502 => "bad_gateway",
        503 => "service_unavailable",
        504 => "gateway_timeout",
        _ => "internal_error",
    }
}

fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

/// Whether `headers` announce a server-sent event stream: `Content-Type:
/// text/event-stream`, parameters allowed, in any case (media types are
/// case-insensitive, RFC 9110 §8.3.1).
pub fn is_event_stream(headers: &http::HeaderMap) -> bool {
    const SSE: &[u8] = b"text/event-stream";
    headers.get(http::header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.get(..SSE.len())
            .is_some_and(|t| t.eq_ignore_ascii_case(SSE))
            && v.get(SSE.len())
                .is_none_or(|b| matches!(b, b';' | b' ' | b'\t'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_streams_are_told_by_their_media_type_in_any_case() {
        let with = |v: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(v),
            );
            is_event_stream(&h)
        };
        assert!(with("text/event-stream"));
        assert!(with("text/event-stream; charset=utf-8"));
        assert!(with("Text/Event-Stream;charset=utf-8"));
        assert!(!with("text/event-streams"));
        assert!(!with("application/json"));
        assert!(!with("text/event"));
        assert!(!is_event_stream(&http::HeaderMap::new()));
    }

    #[test]
    fn error_bodies_match_each_protocol() {
        let v: serde_json::Value =
            serde_json::from_slice(&Frontend::AnthropicMessages.error_body(400, "bad")).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let v: serde_json::Value =
            serde_json::from_slice(&Frontend::OpenAiChat.error_body(504, "slow")).unwrap();
        assert_eq!(v["error"]["message"], "slow");
        assert_eq!(v["error"]["type"], "timeout_error");
    }

    #[test]
    fn stream_error_event_is_one_sse_event() {
        let ev = Frontend::OpenAiChat.stream_error_event(502, "upstream reset");
        let text = std::str::from_utf8(&ev).unwrap();
        assert!(text.starts_with("data: {"));
        assert!(text.ends_with("\n\n"));
        let ev = Frontend::AnthropicMessages.stream_error_event(502, "x");
        assert!(
            std::str::from_utf8(&ev)
                .unwrap()
                .starts_with("event: error\n")
        );
    }
}
