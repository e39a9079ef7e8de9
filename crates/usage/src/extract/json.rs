//! Small, forgiving readers over `serde_json::Value`.

use serde_json::Value;

/// Longest error message kept, in bytes.
const MAX_ERROR_BYTES: usize = 2048;

/// A token count: a non-negative integer, an integral float, or a numeric string.
pub(crate) fn count(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && f.fract() == 0.0 && *f < 1.0e19)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A cost: a finite non-negative number or numeric string.
pub(crate) fn money(value: Option<&Value>) -> Option<f64> {
    let f = match value? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    (f.is_finite() && f >= 0.0).then_some(f)
}

/// A non-empty string field.
pub(crate) fn string<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key)?.as_str().filter(|s| !s.is_empty())
}

/// An unsigned integer field (e.g. an `index`).
pub(crate) fn index(value: &Value, key: &str) -> Option<u64> {
    value.get(key)?.as_u64()
}

/// Compact JSON text of a value (arguments objects, schemas).
pub(crate) fn compact(value: &Value) -> String {
    value.to_string()
}

/// A readable message for an error value: `"<code or type>: <message>"`
/// for the OpenAI / Anthropic shapes, the string itself, or compact JSON.
pub(crate) fn error_message(error: &Value) -> Option<String> {
    let text = match error {
        Value::Null => return None,
        Value::String(s) if s.is_empty() => return None,
        Value::String(s) => s.clone(),
        Value::Object(_) => {
            let message = string(error, "message");
            let kind = string(error, "code")
                .or_else(|| string(error, "type"))
                .filter(|kind| *kind != "error");
            match (kind, message) {
                (Some(kind), Some(message)) => format!("{kind}: {message}"),
                (None, Some(message)) => message.to_owned(),
                (Some(kind), None) => kind.to_owned(),
                (None, None) => match error.get("error") {
                    Some(inner) if inner.is_object() || inner.is_string() => {
                        return error_message(inner);
                    }
                    _ => compact(error),
                },
            }
        }
        other => compact(other),
    };
    Some(truncate(text, MAX_ERROR_BYTES))
}

/// `s` cut to at most `max` bytes on a char boundary.
pub(crate) fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let cut = s.floor_char_boundary(max);
        s.truncate(cut);
    }
    s
}

/// Text of an OpenAI-style content value: a string, or an array of parts whose
/// `text` (or `refusal`) strings are concatenated.
pub(crate) fn content_text(content: &Value, out: &mut String) {
    match content {
        Value::String(s) => out.push_str(s),
        Value::Array(parts) => {
            for part in parts {
                match part {
                    Value::String(s) => out.push_str(s),
                    Value::Object(_) => {
                        if let Some(text) = part.get("text").and_then(Value::as_str) {
                            out.push_str(text);
                        } else if let Some(text) = part.get("refusal").and_then(Value::as_str) {
                            out.push_str(text);
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_are_forgiving() {
        assert_eq!(count(Some(&json!(12))), Some(12));
        assert_eq!(count(Some(&json!(12.0))), Some(12));
        assert_eq!(count(Some(&json!("12"))), Some(12));
        assert_eq!(count(Some(&json!(-1))), None);
        assert_eq!(count(Some(&json!(1.5))), None);
        assert_eq!(count(Some(&json!(null))), None);
        assert_eq!(count(None), None);
        assert_eq!(money(Some(&json!(0.00123))), Some(0.00123));
        assert_eq!(money(Some(&json!("0.5"))), Some(0.5));
        assert_eq!(money(Some(&json!(-0.5))), None);
    }

    #[test]
    fn error_messages() {
        let openai = json!({"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded", "param": null});
        assert_eq!(
            error_message(&openai).unwrap(),
            "rate_limit_exceeded: Rate limit reached"
        );
        let anthropic = json!({"type": "overloaded_error", "message": "Overloaded"});
        assert_eq!(
            error_message(&anthropic).unwrap(),
            "overloaded_error: Overloaded"
        );
        let responses = json!({"type": "error", "code": null, "message": "boom", "param": null});
        assert_eq!(error_message(&responses).unwrap(), "boom");
        assert_eq!(error_message(&json!("bad")).unwrap(), "bad");
        assert_eq!(error_message(&json!(null)), None);
        let long = "é".repeat(5000);
        assert!(error_message(&json!(long)).unwrap().len() <= MAX_ERROR_BYTES);
    }
}
