//! What the mock answers, how it is split into stream deltas, and its ids.

use bytes::Bytes;
use serde_json::Value;

use super::DEFAULT_ANSWER;
use super::conversation::{Conversation, LastTurn, Usage};
use crate::Frontend;

/// Number of whitespace-separated words in `s` (the mock's token count).
pub fn count_words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// Splits `s` into exactly `n.max(1)` pieces of near-equal character counts:
/// piece `i` is characters `[i*L/n, (i+1)*L/n)` where `L` is the character count.
/// The pieces concatenate to `s`; when `L < n` some pieces are empty.
pub fn split_even(s: &str, n: usize) -> Vec<&str> {
    let n = n.max(1);
    let bounds: Vec<usize> = s
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(s.len()))
        .collect();
    let chars = bounds.len() - 1;
    (0..n)
        .map(|i| {
            let start = bounds[i * chars / n];
            let end = bounds[(i + 1) * chars / n];
            &s[start..end]
        })
        .collect()
}

/// The mock's answer to a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Assistant text.
    Text(String),
    /// A call of one tool.
    ToolCall {
        /// The tool's name.
        name: String,
        /// The arguments JSON, compact.
        arguments: String,
    },
}

impl Answer {
    /// Decides the answer (see the module docs of `mock`).
    pub fn for_conversation(conversation: &Conversation<'_>) -> Answer {
        match (&conversation.last_turn, &conversation.first_tool) {
            (LastTurn::ToolResult(text), _) => {
                Answer::Text(format!("Tool result received: {text}"))
            }
            (LastTurn::User, Some(tool)) => Answer::ToolCall {
                name: tool.clone(),
                arguments: serde_json::json!({ "query": conversation.last_user_text }).to_string(),
            },
            _ if conversation.model == "echo" => Answer::Text(conversation.last_user_text.clone()),
            _ => Answer::Text(DEFAULT_ANSWER.to_owned()),
        }
    }

    /// The usage numbers for this answer.
    pub fn usage(&self, conversation: &Conversation<'_>) -> Usage {
        let completion_tokens = match self {
            Answer::Text(text) => count_words(text),
            Answer::ToolCall { arguments, .. } => count_words(arguments).max(1),
        };
        Usage {
            prompt_tokens: conversation.prompt_words,
            completion_tokens,
            total_tokens: conversation.prompt_words + completion_tokens,
        }
    }
}

/// Deterministic ids derived from a hash of the protocol and the request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ids {
    hash: u64,
}

impl Ids {
    /// Ids for this request. `stream` and `stream_options` are left out of the
    /// hash, so a streamed and a JSON answer to the same conversation share ids.
    pub fn new(frontend: Frontend, request: &Value) -> Ids {
        let mut hash = fnv1a(FNV_OFFSET, frontend.as_str().as_bytes());
        match request.as_object() {
            Some(object) => {
                for (key, value) in object {
                    if key != "stream" && key != "stream_options" {
                        hash = fnv1a(hash, key.as_bytes());
                        hash = fnv1a(hash, value.to_string().as_bytes());
                    }
                }
            }
            None => hash = fnv1a(hash, request.to_string().as_bytes()),
        }
        Ids { hash }
    }

    /// An id with this prefix, e.g. `chatcmpl-mock0123456789abcdef`.
    pub fn with_prefix(&self, prefix: &str) -> String {
        format!("{prefix}mock{:016x}", self.hash)
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Everything a protocol renderer needs.
pub(crate) struct Render<'a> {
    /// The request, read.
    pub conversation: &'a Conversation<'a>,
    /// The answer.
    pub answer: &'a Answer,
    /// Deterministic ids.
    pub ids: &'a Ids,
    /// Number of content deltas in a stream (≥ 1).
    pub chunk_count: usize,
}

impl Render<'_> {
    /// The usage numbers of this reply.
    pub fn usage(&self) -> Usage {
        self.answer.usage(self.conversation)
    }

    /// Stream pieces of the answer text, or of the tool arguments (at least 2).
    pub fn pieces<'s>(&self, text: &'s str, is_arguments: bool) -> Vec<&'s str> {
        let n = if is_arguments {
            self.chunk_count.max(2)
        } else {
            self.chunk_count
        };
        split_even(text, n)
    }
}

/// One SSE frame: optional `event:` line, one `data:` line, blank line.
pub(crate) fn sse_frame(event: Option<&str>, data: &Value) -> Bytes {
    match event {
        Some(event) => Bytes::from(format!("event: {event}\ndata: {data}\n\n")),
        None => Bytes::from(format!("data: {data}\n\n")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn counts_words() {
        assert_eq!(count_words(""), 0);
        assert_eq!(count_words("  a b\n\tc  "), 3);
        assert_eq!(count_words(DEFAULT_ANSWER), 10);
    }

    #[test]
    fn split_is_exact_and_concatenates() {
        for text in [
            "",
            "a",
            "hello world",
            "héllo wörld ✓ multi-byte",
            DEFAULT_ANSWER,
        ] {
            for n in [0, 1, 2, 3, 5, 7, 40] {
                let pieces = split_even(text, n);
                assert_eq!(pieces.len(), n.max(1));
                assert_eq!(pieces.concat(), text);
            }
        }
        assert_eq!(split_even("abcdef", 3), vec!["ab", "cd", "ef"]);
        assert_eq!(split_even("abcdefg", 2), vec!["abc", "defg"]);
    }

    #[test]
    fn ids_are_stable() {
        let v = serde_json::json!({"model": "m"});
        let a = Ids::new(Frontend::OpenAiChat, &v).with_prefix("x-");
        assert_eq!(a, Ids::new(Frontend::OpenAiChat, &v).with_prefix("x-"));
        assert_ne!(
            a,
            Ids::new(Frontend::AnthropicMessages, &v).with_prefix("x-")
        );
        assert_eq!(a.len(), "x-mock".len() + 16);
    }
}
