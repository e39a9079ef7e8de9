//! One forward pass over a JSON object body that finds the span of its
//! top-level `usage` value and whether anything in it is essential (names a
//! tool call or reports an error), without building anything.
//!
//! The usage builder reads most non-streamed bodies for their usage alone;
//! skipping the whole body with serde costs several times more than walking
//! it here. Strings are skipped with `memchr3` (quote, backslash, and `_`,
//! the first byte of the essential needles that may match inside a string);
//! the grammar between strings (commas, colons, brackets, literals, numbers)
//! is checked as serde_json checks it. Anything unexpected (broken or
//! truncated structure, trailing bytes, a second top-level `usage`, an
//! escaped top-level key, nesting deeper than serde_json allows) answers
//! "read the whole body", never a guess.
//!
//! Not checked, unlike serde_json: raw control bytes inside strings (invalid
//! JSON that no backend sends); such a body may still yield its usage here.

use memchr::memchr3;

use super::response::has_a_value;

/// Containers nested deeper than this make serde_json give up (its
/// recursion limit is 128), so the scan gives up too.
const MAX_DEPTH: usize = 127;

/// Needles ending at a string's closing quote (suffixes of the raw content;
/// `tool_use` also finds `server_tool_use`).
const SUFFIX_NEEDLES: [&[u8]; 4] = [b"tool_calls", b"function_call", b"tool_call", b"tool_use"];

/// `(needle, offset of its first '_', the byte after that '_')` for needles
/// that may match anywhere in a string.
const INNER_NEEDLES: [(&[u8], usize, u8); 3] = [
    (b"function_call_arguments", 8, b'c'),
    (b"custom_tool_call_input", 6, b't'),
    (b"input_json_delta", 5, b'j'),
];

/// What the next token must be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    /// A value (after `:` or `,` in an array).
    Value,
    /// A value or `]` (after `[`).
    ValueOrClose,
    /// A key or `}` (after `{`).
    KeyOrClose,
    /// A key (after `,` in an object).
    Key,
    /// `:` after a key.
    Colon,
    /// `,` or the container's close after a value.
    CommaOrClose,
}

/// Scans a JSON object body. `None`: the body needs the full reading (it
/// names a tool call or reports an error the way the prefilter of
/// [`super::response`] would see it, or it is not a well-formed JSON
/// object). `Some(span)`: nothing essential in it, and `span` is the raw
/// text of its top-level `usage` value, if it has one.
pub(super) fn usage_span(body: &[u8]) -> Option<Option<&[u8]>> {
    let mut i = skip_whitespace(body, 0);
    if body.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    // Bit `d` is set when the container at depth `d` (1 = top) is an object.
    let mut objects: u128 = 1 << 1;
    let mut depth: usize = 1;
    let mut want = Want::KeyOrClose;
    // A top-level `usage` key was read; its value is next; where that
    // value starts; its span.
    let mut usage_seen = false;
    let mut usage_next = false;
    let mut usage_from: Option<usize> = None;
    let mut usage: Option<&[u8]> = None;
    loop {
        i = skip_whitespace(body, i);
        let byte = *body.get(i)?;
        // Where the value (or container) that ends here ends, exclusive.
        let value_end = match (want, byte) {
            (Want::ValueOrClose, b']') | (Want::KeyOrClose, b'}') => {
                depth -= 1;
                i + 1
            }
            (Want::Value | Want::ValueOrClose, _) => {
                if usage_next {
                    usage_next = false;
                    usage_from = Some(i);
                }
                match byte {
                    b'"' => string(body, i)?.0 + 1,
                    b'{' | b'[' => {
                        if depth >= MAX_DEPTH {
                            return None;
                        }
                        depth += 1;
                        if byte == b'{' {
                            objects |= 1 << depth;
                            want = Want::KeyOrClose;
                        } else {
                            objects &= !(1 << depth);
                            want = Want::ValueOrClose;
                        }
                        i += 1;
                        continue;
                    }
                    _ => literal(body, i)?,
                }
            }
            (Want::KeyOrClose | Want::Key, b'"') => {
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
                        usage_next = true;
                    }
                }
                want = Want::Colon;
                i = close + 1;
                continue;
            }
            (Want::Colon, b':') => {
                want = Want::Value;
                i += 1;
                continue;
            }
            (Want::CommaOrClose, b',') => {
                want = if objects & (1 << depth) != 0 {
                    Want::Key
                } else {
                    Want::Value
                };
                i += 1;
                continue;
            }
            (Want::CommaOrClose, b'}' | b']') => {
                if (byte == b'}') != (objects & (1 << depth) != 0) {
                    return None;
                }
                depth -= 1;
                i + 1
            }
            _ => return None,
        };
        want = Want::CommaOrClose;
        i = value_end;
        if depth == 1
            && let Some(from) = usage_from.take()
        {
            usage = Some(body.get(from..i)?);
        }
        if depth == 0 {
            // The top-level object closed: only whitespace may follow.
            let rest = body.get(i..).unwrap_or_default();
            return rest.iter().all(|b| is_whitespace(*b)).then_some(usage);
        }
    }
}

/// JSON whitespace (serde_json's: no form feed).
fn is_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\n' | b'\t' | b'\r')
}

fn skip_whitespace(body: &[u8], mut i: usize) -> usize {
    while body.get(i).is_some_and(|b| is_whitespace(*b)) {
        i += 1;
    }
    i
}

/// Skips the string opening at `open`: `(index of its closing quote,
/// whether it has escapes)`. `None` when it is unterminated, has a bad
/// escape, or holds an essential needle that has a value.
fn string(body: &[u8], open: usize) -> Option<(usize, bool)> {
    let mut i = open + 1;
    let mut escaped = false;
    loop {
        let at = i + memchr3(b'"', b'\\', b'_', body.get(i..)?)?;
        match body.get(at)? {
            b'"' => {
                if essential_suffix(body, at) {
                    return None;
                }
                return Some((at, escaped));
            }
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
            _ => {
                if essential_inside(body, at) {
                    return None;
                }
                i = at + 1;
            }
        }
    }
}

/// An essential needle ends at the closing quote at `close` and has a value.
fn essential_suffix(body: &[u8], close: usize) -> bool {
    let Some(content) = body.get(..close) else {
        return false;
    };
    let found = match content.last() {
        Some(b's' | b'l' | b'e') => SUFFIX_NEEDLES.iter().any(|n| content.ends_with(n)),
        Some(b'r') => content.ends_with(b"\"error"),
        _ => false,
    };
    found && has_a_value(body.get(close + 1..).unwrap_or_default())
}

/// An essential needle whose first `_` is at `at` matches and has a value.
fn essential_inside(body: &[u8], at: usize) -> bool {
    let Some(&next) = body.get(at + 1) else {
        return false;
    };
    INNER_NEEDLES.iter().any(|&(needle, offset, after)| {
        next == after
            && at.checked_sub(offset).is_some_and(|start| {
                body.get(start..).is_some_and(|from| {
                    from.starts_with(needle)
                        && has_a_value(from.get(needle.len()..).unwrap_or_default())
                })
            })
    })
}

/// Checks the literal (`true`, `false`, `null`) or number at `start`;
/// where it ends.
fn literal(body: &[u8], start: usize) -> Option<usize> {
    let rest = body.get(start..)?;
    for word in [&b"true"[..], b"false", b"null"] {
        if rest.starts_with(word) {
            return Some(start + word.len());
        }
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

    #[test]
    fn essential_needles_with_a_value_mean_full_reading() {
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
