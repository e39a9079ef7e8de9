//! Small, forgiving readers over `serde_json::Value`, for the rare fields
//! read whole (error values, tool inputs, request bodies).

use serde_json::Value;

/// Longest error message kept, in bytes.
const MAX_ERROR_BYTES: usize = 2048;

/// A non-empty string field.
fn string<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key)?.as_str().filter(|s| !s.is_empty())
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use super::*;
    use serde_json::json;

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
