//! Backend-reported usage objects, normalized to OpenAI semantics (see the
//! table in the module docs of `extract`).

use llm_proxy_core::Frontend;
use serde::Deserialize;
use serde_json::Value;

use super::lenient::{Field, Num, parse};
use super::scan::next_stop;
use crate::record::BackendUsage;

/// A `usage` field, boxed: [`UsageIn`] is big and the field is mostly absent or null.
pub(crate) type UsageField = Field<Box<UsageIn>>;

/// The keys of a `usage` object of any protocol that are read.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct UsageIn {
    prompt_tokens: Num,
    completion_tokens: Num,
    total_tokens: Num,
    prompt_tokens_details: Field<DetailsIn>,
    completion_tokens_details: Field<DetailsIn>,
    prompt_cache_hit_tokens: Num,
    input_tokens: Num,
    output_tokens: Num,
    input_tokens_details: Field<DetailsIn>,
    output_tokens_details: Field<DetailsIn>,
    cache_read_input_tokens: Num,
    cache_creation_input_tokens: Num,
    cost: Num,
}

/// A `*_tokens_details` object.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DetailsIn {
    cached_tokens: Num,
    cache_write_tokens: Num,
    cache_creation_tokens: Num,
    reasoning_tokens: Num,
}

/// Normalizes one `usage` object of `protocol` to [`BackendUsage`].
///
/// The shape wins over the protocol when it is unambiguous: `prompt_tokens` /
/// `completion_tokens` keys are read as OpenAI chat, `cache_*_input_tokens`
/// keys as Anthropic, `*_tokens_details` with `input_tokens` as Responses.
/// Returns `None` when the object holds no count at all.
pub fn usage_from_json(protocol: Frontend, usage: &Value) -> Option<BackendUsage> {
    let usage = UsageField::deserialize(usage).ok()?;
    usage_from_field(protocol, &usage)
}

/// [`usage_from_json`] of a typed `usage` field.
pub(crate) fn usage_from_field(protocol: Frontend, usage: &UsageField) -> Option<BackendUsage> {
    let usage = usage.object()?;
    if usage.prompt_tokens.is_set() || usage.completion_tokens.is_set() {
        return openai_chat(usage);
    }
    if usage.cache_read_input_tokens.is_set() || usage.cache_creation_input_tokens.is_set() {
        return anthropic(usage);
    }
    if usage.input_tokens_details.is_set() || usage.output_tokens_details.is_set() {
        return responses(usage);
    }
    match protocol {
        Frontend::AnthropicMessages => anthropic(usage),
        Frontend::OpenAiChat | Frontend::OpenAiResponses => {
            responses(usage).or_else(|| openai_chat(usage))
        }
    }
}

fn anthropic(usage: &UsageIn) -> Option<BackendUsage> {
    let mut merged = AnthropicUsage::default();
    merged.merge_object(usage);
    merged.normalized()
}

/// OpenAI Chat Completions `usage` (also OpenRouter, DeepSeek, vLLM, …).
fn openai_chat(usage: &UsageIn) -> Option<BackendUsage> {
    let prompt_details = usage.prompt_tokens_details.object();
    let completion_details = usage.completion_tokens_details.object();
    let prompt = usage.prompt_tokens.count();
    let completion = usage.completion_tokens.count();
    finish(BackendUsage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: usage
            .total_tokens
            .count()
            .or_else(|| sum(prompt, completion)),
        cached_tokens: prompt_details
            .and_then(|d| d.cached_tokens.count())
            .or_else(|| usage.prompt_cache_hit_tokens.count()),
        cache_creation_tokens: prompt_details.and_then(DetailsIn::cache_creation),
        reasoning_tokens: completion_details.and_then(|d| d.reasoning_tokens.count()),
        cost: usage.cost.money(),
    })
}

/// OpenAI Responses `usage`.
fn responses(usage: &UsageIn) -> Option<BackendUsage> {
    let input_details = usage.input_tokens_details.object();
    let output_details = usage.output_tokens_details.object();
    let prompt = usage.input_tokens.count();
    let completion = usage.output_tokens.count();
    finish(BackendUsage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: usage
            .total_tokens
            .count()
            .or_else(|| sum(prompt, completion)),
        cached_tokens: input_details.and_then(|d| d.cached_tokens.count()),
        cache_creation_tokens: input_details.and_then(DetailsIn::cache_creation),
        reasoning_tokens: output_details.and_then(|d| d.reasoning_tokens.count()),
        cost: usage.cost.money(),
    })
}

impl DetailsIn {
    fn cache_creation(&self) -> Option<u64> {
        self.cache_write_tokens
            .count()
            .or_else(|| self.cache_creation_tokens.count())
    }
}

fn sum(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
    }
}

fn finish(usage: BackendUsage) -> Option<BackendUsage> {
    let empty = usage.prompt_tokens.is_none()
        && usage.completion_tokens.is_none()
        && usage.total_tokens.is_none()
        && usage.cost.is_none();
    (!empty).then_some(usage)
}

/// Anthropic usage merged over the events of a stream: each field is the
/// latest non-null value seen.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct AnthropicUsage {
    input: Option<u64>,
    output: Option<u64>,
    cache_read: Option<u64>,
    cache_creation: Option<u64>,
    cost: Option<f64>,
}

impl AnthropicUsage {
    /// Takes every readable field of an Anthropic `usage` field (an object).
    pub(crate) fn merge(&mut self, usage: &UsageField) {
        if let Some(usage) = usage.object() {
            self.merge_object(usage);
        }
    }

    fn merge_object(&mut self, usage: &UsageIn) {
        let take = |slot: &mut Option<u64>, n: &Num| {
            if let Some(n) = n.count() {
                *slot = Some(n);
            }
        };
        take(&mut self.input, &usage.input_tokens);
        take(&mut self.output, &usage.output_tokens);
        take(&mut self.cache_read, &usage.cache_read_input_tokens);
        take(&mut self.cache_creation, &usage.cache_creation_input_tokens);
        if let Some(cost) = usage.cost.money() {
            self.cost = Some(cost);
        }
    }

    /// Normalized: prompt = input + cache read + cache creation.
    pub(crate) fn normalized(&self) -> Option<BackendUsage> {
        let prompt = match (self.input, self.cache_read, self.cache_creation) {
            (None, None, None) => None,
            (input, read, creation) => Some(
                input
                    .unwrap_or(0)
                    .saturating_add(read.unwrap_or(0))
                    .saturating_add(creation.unwrap_or(0)),
            ),
        };
        finish(BackendUsage {
            prompt_tokens: prompt,
            completion_tokens: self.output,
            total_tokens: sum(prompt, self.output),
            cached_tokens: self.cache_read,
            cache_creation_tokens: self.cache_creation,
            reasoning_tokens: None,
            cost: self.cost,
        })
    }
}

/// Reads the text of a `usage` value: a plain object of integer counts
/// (what nearly every backend sends) by hand, anything else (floats,
/// numeric strings, escaped or repeated keys, arrays) through serde.
pub(crate) fn parse_usage_field(text: &[u8]) -> Option<UsageField> {
    if let Some(usage) = PlainReader::new(text).usage() {
        return Some(usage);
    }
    parse::<UsageField>(text, &mut String::new())
}

/// A plain `usage` object (see [`parse_usage_field`]) at the start of
/// `text`, and what follows it; `None` when the hand reader cannot read it
/// (then the caller takes the whole-body path, which decides).
pub(crate) fn read_plain_usage_prefix(text: &[u8]) -> Option<(UsageField, &[u8])> {
    let mut reader = PlainReader::new(text);
    let usage = reader.usage_value()?;
    Some((usage, text.get(reader.at..)?))
}

/// The hand reader of [`parse_usage_field`]: `None` means "not plain, ask
/// serde", never an error. Its input was checked by the scan
/// (`extract::scan`), so it is a well-formed JSON value; or, for
/// [`read_plain_usage_prefix`], it is the tail of a body from a `usage`
/// value on, unchecked (see `extract::scan::sole_usage_value`).
struct PlainReader<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> PlainReader<'a> {
    fn new(text: &'a [u8]) -> Self {
        PlainReader { text, at: 0 }
    }

    /// The next non-whitespace byte (not consumed).
    fn peek(&mut self) -> Option<u8> {
        while let Some(&byte) = self.text.get(self.at) {
            if !matches!(byte, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(byte);
            }
            self.at += 1;
        }
        None
    }

    /// Consumes `byte` when it is next.
    fn eat(&mut self, byte: u8) -> bool {
        let next = self.peek() == Some(byte);
        if next {
            self.at += 1;
        }
        next
    }

    /// Consumes a `null` when one is next: `Some(true)`; `Some(false)` when
    /// another value is next; `None` at the end or on a broken literal.
    fn null(&mut self) -> Option<bool> {
        if self.peek()? != b'n' {
            return Some(false);
        }
        self.literal(b"null")?;
        Some(true)
    }

    fn usage(mut self) -> Option<UsageField> {
        let usage = self.usage_value()?;
        (self.peek().is_none()).then_some(usage)
    }

    /// The usage value at the reader's position (`null` or a plain object).
    fn usage_value(&mut self) -> Option<UsageField> {
        // serde checks the keys' UTF-8; checking all the text at once is
        // cheaper (and only stricter: serde then decides).
        std::str::from_utf8(self.text).ok()?;
        let usage = match self.peek()? {
            _ if self.null()? => Field::Null,
            b'{' => {
                let mut usage = Box::<UsageIn>::default();
                self.object(|reader, key| {
                    let slot = match key {
                        b"prompt_tokens" => &mut usage.prompt_tokens,
                        b"completion_tokens" => &mut usage.completion_tokens,
                        b"total_tokens" => &mut usage.total_tokens,
                        b"prompt_cache_hit_tokens" => &mut usage.prompt_cache_hit_tokens,
                        b"input_tokens" => &mut usage.input_tokens,
                        b"output_tokens" => &mut usage.output_tokens,
                        b"cache_read_input_tokens" => &mut usage.cache_read_input_tokens,
                        b"cache_creation_input_tokens" => &mut usage.cache_creation_input_tokens,
                        b"cost" => &mut usage.cost,
                        b"prompt_tokens_details" => {
                            return reader.details(&mut usage.prompt_tokens_details);
                        }
                        b"completion_tokens_details" => {
                            return reader.details(&mut usage.completion_tokens_details);
                        }
                        b"input_tokens_details" => {
                            return reader.details(&mut usage.input_tokens_details);
                        }
                        b"output_tokens_details" => {
                            return reader.details(&mut usage.output_tokens_details);
                        }
                        _ => return reader.skip(0),
                    };
                    reader.count(slot)
                })?;
                Field::Object(usage)
            }
            _ => return None,
        };
        Some(usage)
    }

    fn details(&mut self, slot: &mut Field<DetailsIn>) -> Option<()> {
        if !matches!(slot, Field::Absent) {
            return None;
        }
        if self.null()? {
            *slot = Field::Null;
            return Some(());
        }
        let mut details = DetailsIn::default();
        self.object(|reader, key| {
            let slot = match key {
                b"cached_tokens" => &mut details.cached_tokens,
                b"cache_write_tokens" => &mut details.cache_write_tokens,
                b"cache_creation_tokens" => &mut details.cache_creation_tokens,
                b"reasoning_tokens" => &mut details.reasoning_tokens,
                _ => return reader.skip(0),
            };
            reader.count(slot)
        })?;
        *slot = Field::Object(details);
        Some(())
    }

    /// An object, each member's value read by `member` (given the raw key).
    fn object(&mut self, mut member: impl FnMut(&mut Self, &[u8]) -> Option<()>) -> Option<()> {
        if !self.eat(b'{') {
            return None;
        }
        if self.eat(b'}') {
            return Some(());
        }
        loop {
            let key = self.plain_string()?;
            if !self.eat(b':') {
                return None;
            }
            member(self, key)?;
            if self.eat(b'}') {
                return Some(());
            }
            if !self.eat(b',') {
                return None;
            }
        }
    }

    /// A string without escapes; its raw content.
    fn plain_string(&mut self) -> Option<&'a [u8]> {
        if !self.eat(b'"') {
            return None;
        }
        let rest = self.text.get(self.at..)?;
        let end = next_stop(rest, 0)?;
        if rest.get(end) != Some(&b'"') {
            return None;
        }
        self.at += end + 1;
        rest.get(..end)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let rest = self.text.get(self.at..)?;
        rest.starts_with(word).then(|| self.at += word.len())
    }

    /// A count: `null` or a non-negative integer that fits a `u64` for
    /// sure (up to 19 digits), as serde reads them; the first value of its key.
    fn count(&mut self, slot: &mut Num) -> Option<()> {
        if !matches!(slot, Num::Absent) {
            return None;
        }
        if self.null()? {
            *slot = Num::Null;
            return Some(());
        }
        let rest = self.text.get(self.at..)?;
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 19 || matches!(rest.get(digits), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let mut n: u64 = 0;
        for &digit in rest.get(..digits)? {
            n = n * 10 + u64::from(digit - b'0');
        }
        self.at += digits;
        *slot = Num::U64(n);
        Some(())
    }

    /// Skips a value no field reads: a number, literal, plain string or a
    /// shallow object of those (Anthropic's `cache_creation`).
    fn skip(&mut self, depth: u8) -> Option<()> {
        match self.peek()? {
            b'"' => self.plain_string().map(|_| ()),
            b'{' if depth < 2 => self.object(|reader, _| reader.skip(depth + 1)),
            b'n' => self.literal(b"null"),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'-' | b'0'..=b'9' => {
                let rest = self.text.get(self.at..)?;
                let n = rest
                    .iter()
                    .take_while(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                    .count();
                self.at += n;
                Some(())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use super::*;

    /// The hand reader agrees with serde wherever it answers, and answers
    /// for the usual shapes.
    #[test]
    fn plain_usage_reader_agrees_with_serde() {
        let serde = |text: &str| {
            format!(
                "{:?}",
                parse::<UsageField>(text.as_bytes(), &mut String::new())
            )
        };
        let plain = |text: &str| PlainReader::new(text.as_bytes()).usage();
        for text in [
            r#"{"prompt_tokens":1117,"completion_tokens":146,"total_tokens":1263,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0}}"#,
            r#"{"input_tokens": 472, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2048, "output_tokens": 2, "service_tier": "standard", "cache_creation": {"ephemeral_5m_input_tokens": 0, "x": {"y": null}}}"#,
            r#" { "input_tokens" : 5 , "output_tokens_details" : null , "cost" : null , "é" : true , "z" : -1.5e3 } "#,
            r#"{}"#,
            "null",
            r#"{"total_tokens": 9999999999999999999}"#,
        ] {
            let fast = plain(text);
            assert!(fast.is_some(), "{text}");
            assert_eq!(format!("{fast:?}"), serde(text), "{text}");
        }
        for text in [
            r#"{"prompt_tokens": 1, "prompt_tokens": 2}"#,
            r#"{"prompt_tokens": "12"}"#,
            r#"{"prompt_tokens": 1.0}"#,
            r#"{"prompt_tokens": 1e3}"#,
            r#"{"prompt_tokens": -1}"#,
            r#"{"prompt_tokens": 18446744073709551615}"#,
            r#"{"prompt_tokens": true}"#,
            r#"{"prompt_tokens_details": 3}"#,
            r#"{"prompt_tokens_details": {"cached_tokens": 1, "cached_tokens": 2}}"#,
            r#"{"prompt_tok\u0065ns": 1}"#,
            r#"{"a": [1]}"#,
            r#"{"a": "\n"}"#,
            "[1]",
            "12",
        ] {
            assert!(plain(text).is_none(), "{text}");
        }
        assert!(PlainReader::new(b"{\"\xff\": 1}").usage().is_none());
    }
    use serde_json::json;

    #[test]
    fn openai_chat_with_details_and_cost() {
        let u = json!({
            "prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
            "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 192, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
            "cost": 0.0041, "is_byok": false
        });
        assert_eq!(
            usage_from_json(Frontend::OpenAiChat, &u).unwrap(),
            BackendUsage {
                prompt_tokens: Some(2006),
                completion_tokens: Some(300),
                total_tokens: Some(2306),
                cached_tokens: Some(1920),
                cache_creation_tokens: None,
                reasoning_tokens: Some(192),
                cost: Some(0.0041),
            }
        );
    }

    #[test]
    fn deepseek_cache_hit_and_missing_total() {
        let u = json!({"prompt_tokens": 100, "completion_tokens": 7,
            "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36});
        let n = usage_from_json(Frontend::OpenAiChat, &u).unwrap();
        assert_eq!(n.cached_tokens, Some(64));
        assert_eq!(n.total_tokens, Some(107));
    }

    #[test]
    fn responses_usage() {
        let u = json!({"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 1024},
            "output_tokens": 450, "output_tokens_details": {"reasoning_tokens": 384},
            "total_tokens": 1650});
        let n = usage_from_json(Frontend::OpenAiResponses, &u).unwrap();
        assert_eq!(n.prompt_tokens, Some(1200));
        assert_eq!(n.completion_tokens, Some(450));
        assert_eq!(n.total_tokens, Some(1650));
        assert_eq!(n.cached_tokens, Some(1024));
        assert_eq!(n.reasoning_tokens, Some(384));
        assert_eq!(n.cost, None);
    }

    #[test]
    fn anthropic_usage_includes_cache_in_prompt() {
        let u = json!({"input_tokens": 21, "cache_creation_input_tokens": 188,
            "cache_read_input_tokens": 2048, "output_tokens": 393,
            "service_tier": "standard"});
        let n = usage_from_json(Frontend::AnthropicMessages, &u).unwrap();
        assert_eq!(n.prompt_tokens, Some(21 + 188 + 2048));
        assert_eq!(n.completion_tokens, Some(393));
        assert_eq!(n.total_tokens, Some(21 + 188 + 2048 + 393));
        assert_eq!(n.cached_tokens, Some(2048));
        assert_eq!(n.cache_creation_tokens, Some(188));
        assert_eq!(n.reasoning_tokens, None);
        // The same object read under another protocol is still Anthropic by shape.
        assert_eq!(usage_from_json(Frontend::OpenAiChat, &u).unwrap(), n);
    }

    #[test]
    fn anthropic_merge_takes_latest_non_null() {
        let field = |v: Value| UsageField::deserialize(&v).unwrap();
        let mut m = AnthropicUsage::default();
        m.merge(&field(
            json!({"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 1}),
        ));
        m.merge(&field(json!({"output_tokens": 40, "input_tokens": null})));
        let n = m.normalized().unwrap();
        assert_eq!(n.prompt_tokens, Some(15));
        assert_eq!(n.completion_tokens, Some(40));
        assert_eq!(n.total_tokens, Some(55));
        assert_eq!(n.cache_creation_tokens, None);
    }

    #[test]
    fn nothing_is_none() {
        assert_eq!(usage_from_json(Frontend::OpenAiChat, &json!({})), None);
        assert_eq!(usage_from_json(Frontend::OpenAiChat, &json!(null)), None);
        assert_eq!(
            usage_from_json(Frontend::AnthropicMessages, &json!([1])),
            None
        );
        assert_eq!(AnthropicUsage::default().normalized(), None);
    }
}
