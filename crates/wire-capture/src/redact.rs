//! Credential redaction: headers by name (and any header carrying a
//! configured key), bodies by the configured keys' text.

use http::HeaderMap;

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Header names whose values are always redacted.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "x-api-key",
    "api-key",
    "proxy-authorization",
];

/// Keys shorter than this are redacted in headers but not searched for in
/// bodies (a three-letter key would redact ordinary words).
const MIN_BODY_SECRET_LEN: usize = 6;

/// Removes credentials from captured heads and bodies.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<Vec<u8>>,
}

impl Redactor {
    /// A redactor that also removes each of `secrets` (configured backend and
    /// proxy keys) wherever it appears.
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Redactor {
        let mut secrets: Vec<Vec<u8>> = secrets
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(String::into_bytes)
            .collect();
        // Longest first, so a key that contains another is removed whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor { secrets }
    }

    /// The header value to record for `name: value`.
    pub fn header_value<'a>(&self, name: &str, value: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        if CREDENTIAL_HEADERS
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
        {
            return std::borrow::Cow::Borrowed(REDACTED.as_bytes());
        }
        if self.secrets.iter().any(|s| find(value, s).is_some()) {
            return std::borrow::Cow::Borrowed(REDACTED.as_bytes());
        }
        std::borrow::Cow::Borrowed(value)
    }

    /// Appends `name: value\r\n` lines for `headers`, redacted.
    pub fn write_headers(&self, headers: &HeaderMap, out: &mut Vec<u8>) {
        for (name, value) in headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(&self.header_value(name.as_str(), value.as_bytes()));
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Replaces every configured key in `data` (bodies, stream chunks).
    pub fn body(&self, data: Vec<u8>) -> Vec<u8> {
        let mut data = data;
        for s in self
            .secrets
            .iter()
            .filter(|s| s.len() >= MIN_BODY_SECRET_LEN)
        {
            if find(&data, s).is_none() {
                continue;
            }
            let mut out = Vec::with_capacity(data.len());
            let mut rest = &data[..];
            while let Some(i) = find(rest, s) {
                out.extend_from_slice(&rest[..i]);
                out.extend_from_slice(REDACTED.as_bytes());
                rest = &rest[i + s.len()..];
            }
            out.extend_from_slice(rest);
            data = out;
        }
        data
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_headers_and_configured_keys_are_redacted() {
        let r = Redactor::new(["sk-backend-123".to_owned(), "proxy-key-9".to_owned()]);
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer anything".parse().unwrap());
        h.insert("x-api-key", "k".parse().unwrap());
        h.insert("x-custom", "token sk-backend-123".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        let mut out = Vec::new();
        r.write_headers(&h, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.contains("anything") && !text.contains("sk-backend"),
            "{text}"
        );
        assert!(
            text.contains("content-type: application/json\r\n"),
            "{text}"
        );
        assert_eq!(text.matches(REDACTED).count(), 3, "{text}");
        let body = r.body(b"{\"k\":\"sk-backend-123\",\"p\":\"proxy-key-9proxy-key-9\"}".to_vec());
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "{\"k\":\"[REDACTED]\",\"p\":\"[REDACTED][REDACTED]\"}"
        );
    }

    #[test]
    fn short_keys_do_not_redact_ordinary_words_in_bodies() {
        let r = Redactor::new(["test".to_owned()]);
        assert_eq!(r.body(b"a test".to_vec()), b"a test");
        assert_eq!(&*r.header_value("x-other", b"test"), REDACTED.as_bytes());
    }
}
