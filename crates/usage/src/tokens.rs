//! Token counting with OpenAI's BPE encodings (`tiktoken-rs`).
//!
//! **Counting is CPU work for the background workers, never the request
//! path.** Building an encoding takes ~100–200 ms (once per process, shared by
//! every clone of a [`TokenCounter`]); counting costs roughly 1 µs per
//! 10 bytes of text, and long runs without whitespace (base64 blobs) grow
//! faster than linearly. When the workers fall behind, use [`estimate`]
//! instead and mark the record `token_source = "estimate"`.
//!
//! The BPE files are compiled into `tiktoken-rs`; nothing is fetched at run
//! time.
//!
//! OpenAI models are counted with their own encoding (exact). Other vendors'
//! models (Claude, Gemini, Llama, Mistral, …) have tokenizers we do not ship;
//! they are counted with `cl100k_base` as an approximation and
//! [`Encoding::for_model`] says so (`exact = false`).

use std::sync::{Arc, OnceLock};

use tiktoken_rs::CoreBPE;

/// A BPE encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `o200k_base`: GPT-4o, GPT-4.1, GPT-4.5, GPT-5, o-series, gpt-oss.
    O200kBase,
    /// `cl100k_base`: GPT-4, GPT-3.5, embeddings; the approximation for
    /// every non-OpenAI model.
    Cl100kBase,
}

impl Encoding {
    /// The encoding's tiktoken name.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
        }
    }

    /// The encoding for `model`, and whether it is the model's own
    /// tokenizer (`true`) or an approximation (`false`).
    ///
    /// Our `backend:` prefix and vendor path prefixes (`openai/`,
    /// `openrouter/openai/`) are ignored, and so is case; a fine-tune
    /// `ft:<base>:…` counts like its base model.
    pub fn for_model(model: &str) -> (Encoding, bool) {
        let lower = model.trim().to_ascii_lowercase();
        let mut name = lower.as_str();
        while let Some(rest) = crate::pricing::strip_backend_prefix(name) {
            name = rest;
        }
        if let Some(rest) = name.strip_prefix("ft:") {
            name = rest.split(':').next().unwrap_or(rest);
        }
        if let Some((_, last)) = name.rsplit_once('/') {
            name = last;
        }

        let is_family = |family: &str| {
            name.strip_prefix(family)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['-', '@']))
        };
        let o200k = ["gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-oss", "o1", "o3", "o4"]
            .into_iter()
            .any(is_family)
            || name.starts_with("gpt-4.")
            || name.starts_with("chatgpt-")
            || gpt_major_version(name).is_some_and(|major| (5..=20).contains(&major));
        if o200k {
            return (Encoding::O200kBase, true);
        }
        let cl100k = [
            "gpt-4",
            "gpt-3.5",
            "gpt-35",
            "text-embedding-3",
            "text-embedding-ada",
        ]
        .into_iter()
        .any(is_family)
            || name == "ada";
        (Encoding::Cl100kBase, cl100k)
    }
}

/// `gpt-5.1-mini` → 5, `gpt-6-luna` → 6 (Azure's `gpt-35-turbo` → 35, which
/// the caller must not take for a GPT-5 successor); `None` for other names.
fn gpt_major_version(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("gpt-")?;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest.get(..end)?.parse().ok()
}

/// An encoding could not be built (the embedded BPE data did not load).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot build the {encoding} tokenizer: {reason}")]
pub struct TokenizerError {
    /// The encoding's name.
    pub encoding: &'static str,
    /// What went wrong.
    pub reason: String,
}

/// Counts tokens; builds each encoding once, on first use, and shares it.
///
/// Cheap to clone (an `Arc`); `Send + Sync`, so one counter can serve many
/// worker threads. An encoding's tables take ~50 MB and ~100–200 ms to
/// build, so they are built when a record first needs them (a proxy that
/// only serves one model family never holds the other's tables); the
/// builder thread pays that once, off the request path.
#[derive(Debug, Clone, Default)]
pub struct TokenCounter {
    encoders: Arc<Encoders>,
}

#[derive(Default)]
struct Encoders {
    o200k: OnceLock<Result<CoreBPE, TokenizerError>>,
    cl100k: OnceLock<Result<CoreBPE, TokenizerError>>,
}

impl std::fmt::Debug for Encoders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoders")
            .field("o200k_built", &self.o200k.get().is_some())
            .field("cl100k_built", &self.cl100k.get().is_some())
            .finish()
    }
}

/// One message of a chat prompt, for [`TokenCounter::count_chat_prompt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatPromptMessage<'a> {
    /// `system`, `user`, `assistant`, `tool`, …
    pub role: &'a str,
    /// The optional participant name.
    pub name: Option<&'a str>,
    /// The message text, with any tool calls or tool results serialized
    /// into it by the caller.
    pub content: &'a str,
}

/// Tokens framing every message in OpenAI's chat format
/// (`<|start|>{role}<|message|>…<|end|>`), per OpenAI's cookbook.
pub const TOKENS_PER_MESSAGE: u64 = 3;
/// Extra tokens when a message carries a `name`.
pub const TOKENS_PER_NAME: u64 = 1;
/// Tokens priming the reply (`<|start|>assistant<|message|>`), once per prompt.
pub const REPLY_PRIMING_TOKENS: u64 = 3;

impl TokenCounter {
    /// A counter with no encoding built yet.
    pub fn new() -> TokenCounter {
        TokenCounter::default()
    }

    /// The process-wide counter: the encodings are built once per process,
    /// however many trackers start.
    pub fn shared() -> TokenCounter {
        static SHARED: std::sync::OnceLock<TokenCounter> = std::sync::OnceLock::new();
        SHARED.get_or_init(TokenCounter::new).clone()
    }

    /// Builds both encodings now (~100–200 ms each); call it from a worker,
    /// not the request path.
    pub fn warm_up(&self) -> Result<(), TokenizerError> {
        for encoding in [Encoding::O200kBase, Encoding::Cl100kBase] {
            self.bpe(encoding)?;
        }
        Ok(())
    }

    /// Tokens of `text` under `encoding`, counting special-token strings
    /// such as `<|endoftext|>` as ordinary text.
    ///
    /// Falls back to [`estimate`] if the encoding cannot be built (only if
    /// the embedded BPE data is broken; [`TokenCounter::warm_up`] reports
    /// that).
    pub fn count_text(&self, encoding: Encoding, text: &str) -> u64 {
        match self.bpe(encoding) {
            Ok(bpe) => bpe.count_ordinary(text) as u64,
            Err(_) => estimate(text),
        }
    }

    /// Tokens of a chat prompt with OpenAI's documented framing overhead:
    /// [`TOKENS_PER_MESSAGE`] plus the role and content per message,
    /// [`TOKENS_PER_NAME`] plus the name when present, and
    /// [`REPLY_PRIMING_TOKENS`] once. Exact for OpenAI chat models without
    /// tools; tool definitions are a (model-specific, undocumented) extra
    /// the caller adds, e.g. by counting their JSON with [`Self::count_text`].
    pub fn count_chat_prompt<'a>(
        &self,
        encoding: Encoding,
        messages: impl IntoIterator<Item = ChatPromptMessage<'a>>,
    ) -> u64 {
        messages
            .into_iter()
            .map(|message| {
                TOKENS_PER_MESSAGE
                    + self.count_text(encoding, message.role)
                    + self.count_text(encoding, message.content)
                    + message
                        .name
                        .map_or(0, |name| TOKENS_PER_NAME + self.count_text(encoding, name))
            })
            .sum::<u64>()
            + REPLY_PRIMING_TOKENS
    }

    /// Builds `encoding` now if it was not built yet (~100–200 ms once per
    /// encoding and process); a no-op after that.
    pub fn prepare(&self, encoding: Encoding) {
        let _ = self.bpe(encoding);
    }

    fn bpe(&self, encoding: Encoding) -> Result<&CoreBPE, TokenizerError> {
        let cell = match encoding {
            Encoding::O200kBase => &self.encoders.o200k,
            Encoding::Cl100kBase => &self.encoders.cl100k,
        };
        cell.get_or_init(|| {
            // `tiktoken-rs` reports `anyhow` errors; keep them out of our API.
            let built = match encoding {
                Encoding::O200kBase => tiktoken_rs::o200k_base(),
                Encoding::Cl100kBase => tiktoken_rs::cl100k_base(),
            };
            built.map_err(|e| {
                let err = TokenizerError {
                    encoding: encoding.as_str(),
                    reason: e.to_string(),
                };
                // Once per encoding and process (the cell keeps the error).
                tracing::warn!(error = %err, "tokenizer unavailable; token counts will be estimates");
                err
            })
        })
        .as_ref()
        .map_err(Clone::clone)
    }
}

/// A fast length-based estimate: characters / 4, rounded up. For when the
/// counting workers fall behind (`token_source = "estimate"`); typically
/// within ±30 % for English prose and code, worse for CJK text.
pub fn estimate(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: &[(&str, u64, u64)] = &[
        // (text, o200k_base, cl100k_base) — computed once with tiktoken-rs.
        ("", 0, 0),
        ("Hello, world!", 4, 4),
        ("The quick brown fox jumps over the lazy dog.", 10, 10),
        ("こんにちは世界", 2, 4),
        ("fn main() { println!(\"hi\"); }", 9, 9),
    ];

    #[test]
    fn tokens_known_counts_under_both_encodings() {
        let counter = TokenCounter::new();
        for &(text, o200k, cl100k) in SAMPLES {
            assert_eq!(
                counter.count_text(Encoding::O200kBase, text),
                o200k,
                "o200k {text:?}"
            );
            assert_eq!(
                counter.count_text(Encoding::Cl100kBase, text),
                cl100k,
                "cl100k {text:?}"
            );
        }
    }

    #[test]
    fn tokens_special_token_text_is_ordinary_text() {
        let counter = TokenCounter::new();
        // As a special token this would be 1; as text it is several.
        let n = counter.count_text(Encoding::Cl100kBase, "<|endoftext|>");
        assert!(n > 1, "{n}");
    }

    #[test]
    fn tokens_model_to_encoding() {
        let o200k = (Encoding::O200kBase, true);
        let cl100k = (Encoding::Cl100kBase, true);
        let approx = (Encoding::Cl100kBase, false);
        for model in [
            "gpt-4o",
            "gpt-4o-mini-2024-07-18",
            "gpt-4.2",
            "GPT-4.1-nano",
            "gpt-4.5-preview",
            "gpt-5",
            "gpt-5.1-codex",
            "gpt-6-luna",
            "o1",
            "o1-pro",
            "o3-mini",
            "o4-mini-2025-04-16",
            "chatgpt-4o-latest",
            "gpt-oss-120b",
            "openai:gpt-4o-mini",
            "openai/gpt-4o",
            "openrouter/openai/gpt-5-mini",
            "groq/openai/gpt-oss-20b",
            "ft:gpt-4o-mini-2024-07-18:acme::abc",
        ] {
            assert_eq!(Encoding::for_model(model), o200k, "{model}");
        }
        for model in [
            "gpt-4",
            "gpt-4-0613",
            "gpt-4-turbo",
            "gpt-3.5-turbo",
            "gpt-35-turbo",
            "text-embedding-3-small",
            "text-embedding-ada-002",
            "ada",
            "azure:gpt-4-32k",
            "ft:gpt-3.5-turbo-0125:acme::x",
        ] {
            assert_eq!(Encoding::for_model(model), cl100k, "{model}");
        }
        for model in [
            "claude-sonnet-4-5",
            "anthropic/claude-haiku-4-5",
            "gemini-2.5-pro",
            "llama-3.3-70b",
            "mistral-large-latest",
            "o1x",
            "o30",
            "gpt-4ox",
            "gpt-4x",
            "",
        ] {
            assert_eq!(Encoding::for_model(model), approx, "{model}");
        }
    }

    #[test]
    fn tokens_counter_is_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<TokenCounter>();

        let counter = TokenCounter::new();
        counter.warm_up().expect("embedded BPE data loads");
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(50);
        let expected = counter.count_text(Encoding::O200kBase, &text);
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let counter = counter.clone();
                let text = text.clone();
                std::thread::spawn(move || {
                    let encoding = if i % 2 == 0 {
                        Encoding::O200kBase
                    } else {
                        Encoding::Cl100kBase
                    };
                    (encoding, counter.count_text(encoding, &text))
                })
            })
            .collect();
        for handle in handles {
            let (encoding, n) = handle.join().expect("thread");
            if encoding == Encoding::O200kBase {
                assert_eq!(n, expected);
            } else {
                assert_eq!(n, counter.count_text(Encoding::Cl100kBase, &text));
            }
        }
    }

    #[test]
    fn tokens_lazy_build_from_several_threads_at_once() {
        // Nobody has built the encodings: all threads race on first use.
        let counter = TokenCounter::new();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    counter.count_text(Encoding::Cl100kBase, "Hello, world!")
                })
            })
            .collect();
        for handle in handles {
            assert_eq!(handle.join().expect("thread"), 4);
        }
    }

    #[test]
    fn tokens_chat_prompt_overhead() {
        let counter = TokenCounter::new();
        let enc = Encoding::O200kBase;
        let messages = [
            ChatPromptMessage {
                role: "system",
                name: None,
                content: "You are terse.",
            },
            ChatPromptMessage {
                role: "user",
                name: Some("alice"),
                content: "Hello, world!",
            },
        ];
        let text = |s| counter.count_text(enc, s);
        let expected = 3
            + text("system")
            + text("You are terse.")
            + 3
            + text("user")
            + text("Hello, world!")
            + 1
            + text("alice")
            + 3;
        assert_eq!(counter.count_chat_prompt(enc, messages), expected);
        // Documented OpenAI cookbook figure: an empty prompt is 3 tokens.
        assert_eq!(counter.count_chat_prompt(enc, []), 3);
    }

    #[test]
    fn tokens_estimate_is_chars_over_four_rounded_up() {
        assert_eq!(estimate(""), 0);
        assert_eq!(estimate("a"), 1);
        assert_eq!(estimate("abcd"), 1);
        assert_eq!(estimate("abcde"), 2);
        // Characters, not bytes: 7 CJK characters are 21 bytes.
        assert_eq!(estimate("こんにちは世界"), 2);
        let prose = "The quick brown fox jumps over the lazy dog. ".repeat(20);
        let exact = TokenCounter::new().count_text(Encoding::Cl100kBase, &prose);
        let est = estimate(&prose);
        assert!(
            est.abs_diff(exact) * 10 <= exact * 3,
            "estimate {est} vs {exact}"
        );
    }
}
