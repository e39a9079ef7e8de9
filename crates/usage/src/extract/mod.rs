//! Facts extracted from the bodies the proxy sees on each leg of an
//! exchange: the prompt of a request ([`PromptFacts`]) and the usage, text,
//! tool calls, finish reason, error and model of a response
//! ([`ResponseFacts`], built incrementally by [`ResponseAccumulator`] from
//! JSON bodies or SSE chunks as they arrive).
//!
//! All three front-end protocols are read (OpenAI Chat Completions, OpenAI
//! Responses, Anthropic Messages). Nothing here panics on bad input: garbage
//! yields fewer facts, never an error.
//!
//! # Usage normalization (OpenAI semantics, see [`BackendUsage`])
//!
//! | field | OpenAI chat | Responses | Anthropic |
//! |---|---|---|---|
//! | `prompt_tokens` | `prompt_tokens` | `input_tokens` | `input_tokens + cache_read_input_tokens + cache_creation_input_tokens` |
//! | `completion_tokens` | `completion_tokens` | `output_tokens` | `output_tokens` |
//! | `total_tokens` | `total_tokens` (else prompt + completion) | `total_tokens` (else prompt + completion) | prompt + completion |
//! | `cached_tokens` | `prompt_tokens_details.cached_tokens` (else DeepSeek `prompt_cache_hit_tokens`) | `input_tokens_details.cached_tokens` | `cache_read_input_tokens` |
//! | `cache_creation_tokens` | `prompt_tokens_details.cache_write_tokens` / `cache_creation_tokens` | `input_tokens_details.cache_write_tokens` / `cache_creation_tokens` | `cache_creation_input_tokens` |
//! | `reasoning_tokens` | `completion_tokens_details.reasoning_tokens` | `output_tokens_details.reasoning_tokens` | — |
//! | `cost` | `cost` (OpenRouter) | `cost` | `cost` |
//!
//! A usage object whose keys are those of OpenAI chat (`prompt_tokens` /
//! `completion_tokens`) is read with the chat rules whatever the protocol.
//! In a stream the latest reported usage wins; for Anthropic each field is
//! taken from the latest event that carries it (`message_start`, then
//! `message_delta`, whose `output_tokens` is cumulative).
//!
//! [`BackendUsage`]: crate::record::BackendUsage

mod anthropic;
mod json;
mod lenient;
mod openai_chat;
mod prompt;
mod response;
mod responses;
mod scan;
mod sse;
mod usage;

#[cfg(test)]
mod tests;

pub use prompt::PromptFacts;
pub use response::{ResponseAccumulator, ResponseFacts, ToolCall, essentials_of};
pub use sse::{DEFAULT_MAX_EVENT_BYTES, SseEvent, SseParser};
pub use usage::usage_from_json;
