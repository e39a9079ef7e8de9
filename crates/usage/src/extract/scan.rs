//! One forward pass over a JSON object body that finds the span of its
//! top-level `usage` value, without building anything.
//!
//! The usage builder reads most non-streamed bodies for their usage alone
//! (once the essential-needle prefilter of [`super::response`] found no
//! tool call; the scan itself refuses a body with an `"error"` that has a
//! value, as the prefilter would); skipping the whole body with serde costs more than
//! walking it here and parsing only the `usage` value. Strings are skipped
//! 8 bytes at a time, long ones with `memchr2` (quote, backslash); the
//! grammar between strings (commas, colons, brackets, literals, numbers)
//! is checked as serde_json checks it. Anything unexpected (broken or
//! truncated structure, trailing bytes, a second top-level `usage`, an
//! escaped top-level key, nesting deeper than 127 levels) answers
//! "read the whole body", never a guess.
//!
//! Not checked, unlike serde_json: raw control bytes inside strings (invalid
//! JSON that no backend sends); such a body may still yield its usage here.
//!
//! Before the pass, a shortcut for the usual body (OpenAI's, whose `usage`
//! comes last): [`sole_usage_value`] finds the one `"usage"` of the body by
//! a byte search, and the caller reads its value and checks that the body's
//! closing brace follows. In a well-formed body that makes it the top-level
//! member; what comes before it is not walked, so a body broken before its
//! `usage` member may still yield that usage (serde would refuse it all).

use memchr::memchr2;

use super::response::{USAGE_FINDER, has_a_value};

/// Containers nested deeper than this are left to the full reading (the
/// depth is kept in one `u128` of bits).
const MAX_DEPTH: usize = 127;

/// Scans a JSON object body. `None`: the body needs the full reading (it is
/// not a well-formed JSON object, the scan cannot be sure to read it as
/// serde would, or it has an `"error"` with a value). `Some(span)`: `span` is the raw text of its top-level
/// `usage` value, if it has one.
pub(super) fn usage_span(body: &[u8]) -> Option<Option<&[u8]>> {
    let mut i = skip_whitespace(body, 0);
    if body.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    // Bit `d` is set when the container at depth `d` (1 = top) is an object.
    let mut objects: u128 = 1 << 1;
    let mut depth: usize = 1;
    // The container at `depth` is an object (bit `depth` of `objects`).
    let mut in_object = true;
    // Just after `{` or `[` (so it may close empty).
    let mut first = true;
    // A top-level `usage` key was read; where its value starts; its span.
    let mut usage_seen = false;
    let mut usage_from: Option<usize> = None;
    let mut usage: Option<&[u8]> = None;
    loop {
        // At a member (key, `:`, value) of an object or an element of an array.
        i = skip_whitespace(body, i);
        let mut byte = *body.get(i)?;
        let mut end = if first && byte == if in_object { b'}' } else { b']' } {
            depth -= 1;
            in_object = objects & (1 << depth) != 0;
            i + 1
        } else {
            if in_object {
                if byte != b'"' {
                    return None;
                }
                let (close, escaped) = string(body, i)?;
                if depth == 1 {
                    let key = body.get(i + 1..close)?;
                    // An escaped key may spell `usage`, and serde checks the
                    // top-level keys' UTF-8: serde decides.
                    if escaped || (!key.is_ascii() && std::str::from_utf8(key).is_err()) {
                        return None;
                    }
                    if key == b"usage" {
                        if usage_seen {
                            return None;
                        }
                        usage_seen = true;
                        usage_from = Some(usize::MAX);
                    }
                }
                i = skip_whitespace(body, close + 1);
                if body.get(i) != Some(&b':') {
                    return None;
                }
                i = skip_whitespace(body, i + 1);
                byte = *body.get(i)?;
                if usage_from == Some(usize::MAX) {
                    usage_from = Some(i);
                }
            }
            match byte {
                b'"' => string(body, i)?.0 + 1,
                b'{' | b'[' => {
                    if depth >= MAX_DEPTH {
                        return None;
                    }
                    depth += 1;
                    in_object = byte == b'{';
                    if in_object {
                        objects |= 1 << depth;
                    } else {
                        objects &= !(1 << depth);
                    }
                    first = true;
                    i += 1;
                    continue;
                }
                _ => literal(body, i)?,
            }
        };
        // A value ended at `end` (a container by its close): what follows
        // it, closing containers until a `,`.
        loop {
            if depth == 1
                && let Some(from) = usage_from.take()
            {
                usage = Some(body.get(from..end)?);
            }
            if depth == 0 {
                // The top-level object closed: only whitespace may follow.
                let rest = body.get(end..).unwrap_or_default();
                return rest.iter().all(|b| is_whitespace(*b)).then_some(usage);
            }
            i = skip_whitespace(body, end);
            match *body.get(i)? {
                b',' => break,
                b'}' if in_object => {}
                b']' if !in_object => {}
                _ => return None,
            }
            depth -= 1;
            in_object = objects & (1 << depth) != 0;
            end = i + 1;
        }
        first = false;
        i += 1;
    }
}

/// Where the value of the one `"usage"` key of an object body starts: the
/// body opens with `{`, has `"usage"` exactly once, its opening quote not
/// escaped, followed by `:`. Then, if the body is well-formed and that value
/// is followed only by the body's closing `}`, it is the top-level `usage`
/// value (a quote that is not escaped and is followed by `usage":` opens a
/// key; a second container would need a second closing brace).
pub(super) fn sole_usage_value(body: &[u8]) -> Option<usize> {
    if body.get(skip_whitespace(body, 0)) != Some(&b'{') {
        return None;
    }
    let mut found = USAGE_FINDER.find_iter(body);
    let at = found.next()?;
    if found.next().is_some() {
        return None;
    }
    let backslashes = body
        .get(..at)?
        .iter()
        .rev()
        .take_while(|b| **b == b'\\')
        .count();
    if backslashes % 2 == 1 {
        return None;
    }
    let colon = skip_whitespace(body, at + USAGE_FINDER.needle().len());
    (body.get(colon) == Some(&b':')).then(|| skip_whitespace(body, colon + 1))
}

/// Only JSON whitespace, then the closing `}` of an object, then only
/// whitespace.
pub(super) fn closes_the_object(rest: &[u8]) -> bool {
    let at = skip_whitespace(rest, 0);
    rest.get(at) == Some(&b'}')
        && rest
            .get(at + 1..)
            .is_some_and(|tail| tail.iter().all(|b| is_whitespace(*b)))
}

/// JSON whitespace (serde_json's: no form feed).
fn is_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\n' | b'\t' | b'\r')
}

fn skip_whitespace(body: &[u8], mut i: usize) -> usize {
    while body.get(i).is_some_and(|b| *b <= b' ' && is_whitespace(*b)) {
        i += 1;
    }
    i
}

/// Skips the string opening at `open`: `(index of its closing quote,
/// whether it has escapes)`. `None` when it is unterminated or has a bad
/// escape, or reports an error ([`reports_an_error`]).
fn string(body: &[u8], open: usize) -> Option<(usize, bool)> {
    let mut i = open + 1;
    let mut escaped = false;
    loop {
        let at = next_stop(body, i)?;
        match body.get(at)? {
            b'"' => return (!reports_an_error(body, at)).then_some((at, escaped)),
            b'\\' => {
                escaped = true;
                i = at + 2;
                match body.get(at + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        let hex = body.get(at + 2..at + 6)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        i = at + 6;
                    }
                    _ => return None,
                }
            }
            _ => return None,
        }
    }
}

/// The string closing at `close` is the prefilter's needle `"error"` (its
/// raw content is `error` or ends with `\"error`) with a value: in a body
/// the scan accepts, every `"error"` ends at a closing quote.
fn reports_an_error(body: &[u8], close: usize) -> bool {
    body.get(..close)
        .is_some_and(|content| content.last() == Some(&b'r') && content.ends_with(b"\"error"))
        && has_a_value(body.get(close + 1..).unwrap_or_default())
}

/// Bytes of a word, each repeated 8 times.
const fn repeated(byte: u8) -> u64 {
    u64::from_ne_bytes([byte; 8])
}

/// The high bit of each byte of `word` that is zero; exact up to the lowest
/// such byte (higher ones may be false positives, which no caller reads).
fn zero_bytes(word: u64) -> u64 {
    word.wrapping_sub(repeated(0x01)) & !word & repeated(0x80)
}

/// The first `"` or `\` at or after `from`. Strings are mostly short
/// (keys, ids, enum values): their first 24 bytes are looked at 8 at a time
/// here, cheaper than a call; the rest of a long one goes to `memchr2`.
#[inline]
pub(super) fn next_stop(body: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    for _ in 0..3 {
        let Some(chunk) = body.get(i..i + 8) else {
            break;
        };
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        let found = zero_bytes(word ^ repeated(b'"')) | zero_bytes(word ^ repeated(b'\\'));
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    Some(i + memchr2(b'"', b'\\', body.get(i..)?)?)
}

/// Checks the literal (`true`, `false`, `null`) or number at `start`;
/// where it ends.
fn literal(body: &[u8], start: usize) -> Option<usize> {
    let rest = body.get(start..)?;
    let word: &[u8] = match rest.first()? {
        b't' => b"true",
        b'f' => b"false",
        b'n' => b"null",
        _ => b"",
    };
    if !word.is_empty() {
        return rest.starts_with(word).then_some(start + word.len());
    }
    let digits = |from: usize| {
        let n = rest
            .get(from..)
            .unwrap_or_default()
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        (n > 0).then_some(from + n)
    };
    let mut i = usize::from(rest.first() == Some(&b'-'));
    i = match rest.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(i)?,
        _ => return None,
    };
    if rest.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
    }
    if matches!(rest.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(rest.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(i)?;
    }
    Some(start + i)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use super::*;

    /// The scanner's answer on a text: `None` (full reading), else the
    /// usage span as text.
    fn span(body: &str) -> Option<Option<&str>> {
        usage_span(body.as_bytes()).map(|s| s.map(|s| std::str::from_utf8(s).unwrap()))
    }

    #[test]
    fn takes_the_top_level_usage_span() {
        let body = r#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"a \"b\" c.\n","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"created":1741570283,"usage":{"prompt_tokens":1117,"d":{"c":0}},"service_tier":"default"}"#;
        assert_eq!(
            span(body),
            Some(Some(r#"{"prompt_tokens":1117,"d":{"c":0}}"#))
        );
        // Pretty, with every kind of whitespace, and a scalar usage.
        let pretty = "\r\n\t {\n  \"usage\" :\t[ 1 ,\n 2 ] ,\r\n  \"a\" : -0.5e+3 }\n\t ";
        assert_eq!(span(pretty), Some(Some("[ 1 ,\n 2 ]")));
        assert_eq!(span(r#"{"usage": 12}"#), Some(Some("12")));
        assert_eq!(span(r#"{"usage": "12"}"#), Some(Some(r#""12""#)));
        assert_eq!(span(r#"{"usage": null}"#), Some(Some("null")));
        assert_eq!(span(r#"{"usage":{}}"#), Some(Some("{}")));
        // No usage at all, an empty object.
        assert_eq!(
            span(r#"{"model": "m", "n": [true, false, null]}"#),
            Some(None)
        );
        assert_eq!(span("{}"), Some(None));
        assert_eq!(span(" { } "), Some(None));
    }

    #[test]
    fn only_depth_one_usage_counts() {
        assert_eq!(
            span(r#"{"response": {"usage": {"input_tokens": 3}}}"#),
            Some(None)
        );
        assert_eq!(
            span(r#"{"a": [{"usage": 1}], "usage": 2, "b": {"usage": 3}}"#),
            Some(Some("2"))
        );
        // A string value `usage` is not a key.
        assert_eq!(span(r#"{"kind": "usage", "x": 1}"#), Some(None));
    }

    #[test]
    fn strings_hide_their_content() {
        // An escaped `"usage"` inside a string, braces in strings, `\\`
        // right before a closing quote.
        let body = r#"{"text": "say \"usage\": {\"prompt_tokens\": 9}", "b": "}]{[", "c": "back\\", "usage": {"prompt_tokens": 1}}"#;
        assert_eq!(span(body), Some(Some(r#"{"prompt_tokens": 1}"#)));
        assert_eq!(
            span(r#"{"a": "\\\"", "usage": 5, "u": "\u00e9\ud83d\ude00"}"#),
            Some(Some("5"))
        );
        // A key with an escape at the top may spell `usage`: full reading.
        assert_eq!(span(r#"{"usag\u0065": 1}"#), None);
        assert_eq!(span(r#"{"a": {"k\"ey": 1}}"#), Some(None));
    }

    /// The prefilter and the scan, as `usage_only` runs them.
    fn essentials_then_span(body: &str) -> Option<Option<&str>> {
        if super::super::response::names_tools(body.as_bytes()) {
            return None;
        }
        span(body)
    }

    #[test]
    fn essential_needles_with_a_value_mean_full_reading() {
        let span = essentials_then_span;
        assert_eq!(span(r#"{"tool_calls": [{"id": "x"}]}"#), None);
        assert_eq!(span(r#"{"tool_calls": []}"#), Some(None));
        assert_eq!(
            span(r#"{"tool_calls" : [ ]}"#),
            None,
            "as the prefilter: `[ ]` counts"
        );
        assert_eq!(span(r#"{"tool_calls": null, "usage": 1}"#), Some(Some("1")));
        assert_eq!(span(r#"{"error": null}"#), Some(None));
        assert_eq!(span(r#"{"error": {"message": "m"}}"#), None);
        assert_eq!(span(r#"{"type": "error"}"#), None);
        // Suffix matches, as the prefilter's needles end with a quote.
        assert_eq!(span(r#"{"type": "server_tool_use"}"#), None);
        assert_eq!(span(r#"{"type": "function_call"}"#), None);
        assert_eq!(span(r#"{"a": {"x_tool_call": 1}}"#), None);
        assert_eq!(span(r#"{"type": "tool_user"}"#), Some(None));
        assert_eq!(span(r#"{"text": "say \"error"}"#), None);
        assert_eq!(span(r#"{"text": "no error"}"#), Some(None));
        // Anywhere in a string.
        assert_eq!(
            span(r#"{"type": "response.function_call_arguments.delta"}"#),
            None
        );
        assert_eq!(span(r#"{"t": "a custom_tool_call_input b"}"#), None);
        assert_eq!(span(r#"{"t": "input_json_delta"}"#), None);
        assert_eq!(span(r#"{"t": "input_json_delt"}"#), Some(None));
        // Inside a string, `: null` right after the needle hides it (as
        // the prefilter sees the bytes).
        assert_eq!(
            span(r#"{"t": "function_call_arguments : null"}"#),
            Some(None)
        );
        // Escaped, a needle is not one.
        assert_eq!(span(r#"{"t": "tool_calls\\"}"#), Some(None));
    }

    #[test]
    fn broken_bodies_mean_full_reading() {
        for body in [
            "",
            "   ",
            "[]",
            "\u{feff}{}",
            "\x0c{}",
            r#"{"usage": 1, "usage": 2}"#,
            r#"{"usage": {"prompt_tokens": 1}"#,
            r#"{"usage": {"prompt_tokens": 1}}}"#,
            r#"{"usage": 1} x"#,
            r#"{"usage": 1}{}"#,
            r#"{"a": "unterminated}"#,
            r#"{"a": "bad \q escape"}"#,
            r#"{"a": "\u12"}"#,
            r#"{"a": [1, 2}"#,
            r#"{"a": {"b": 1]}"#,
            r#"{"a" 1}"#,
            r#"{"a": 1,}"#,
            r#"{"a": [1,]}"#,
            r#"{,"a": 1}"#,
            r#"{"a": tru}"#,
            r#"{"a": nul}"#,
            r#"{"a": 01}"#,
            r#"{"a": 1.}"#,
            r#"{"a": -}"#,
            r#"{"a": 1e}"#,
            r#"{"a": +1}"#,
            r#"{"a": .5}"#,
            r#"{1: 2}"#,
            r#"{"a": 1 "b": 2}"#,
            "{\"a\": \"\\",
            "{\"a\": \"x\\u00",
        ] {
            assert_eq!(span(body), None, "{body:?}");
        }
        // Too deep for serde_json: full reading decides.
        let deep = format!("{{\"a\": {}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(span(&deep), None);
        let fine = format!("{{\"a\": {}{}}}", "[".repeat(100), "]".repeat(100));
        assert_eq!(span(&fine), Some(None));
        // Invalid UTF-8 in a top-level key (serde refuses it), not elsewhere.
        assert_eq!(usage_span(b"{\"\xff\": 1}"), None);
        assert_eq!(usage_span(b"{\"a\": \"\xff\"}"), Some(None));
    }

    #[test]
    fn every_prefix_of_a_body_is_refused() {
        let body = r#"{"id": "x", "usage": {"prompt_tokens": 10, "details": [1, 2.5e-3, "s"]}, "ok": true}"#;
        assert!(span(body).is_some());
        for end in 0..body.len() {
            assert_eq!(span(&body[..end]), None, "{:?}", &body[..end]);
        }
    }
}
