//! The few facts the pipeline needs from a request body, found without
//! rebuilding it: the model (and where its value sits, so it can be spliced),
//! the stream flag, and the session hints.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde_json::value::RawValue;

use crate::error::ProxyError;

/// Routing-relevant facts of a client request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFacts {
    /// The `model` value as sent.
    pub model: String,
    /// Byte range of the `model` JSON value (including its quotes) in the body.
    model_span: Range<usize>,
    /// `"stream": true`.
    pub stream: bool,
    /// OpenAI `user` or Anthropic `metadata.user_id`.
    pub user: Option<String>,
    /// Byte range of the conversation (`messages` or `input`) value, if any.
    conversation_span: Option<Range<usize>>,
    /// Byte range of the Anthropic `system` value, if any.
    system_span: Option<Range<usize>>,
    /// Byte range of the `stream_options` value, if any.
    stream_options_span: Option<Range<usize>>,
    /// `stream_options.include_usage` is true.
    pub include_usage: bool,
    /// Offset just after the body's opening `{`.
    object_start: usize,
}

impl RequestFacts {
    /// Parses `body` as a JSON object and extracts the routing facts.
    /// Malformed JSON or a missing/non-string `model` is a client error.
    pub fn parse(body: &[u8]) -> Result<RequestFacts, ProxyError> {
        let text = std::str::from_utf8(body)
            .map_err(|_| ProxyError::BadRequest("request body is not valid UTF-8".into()))?;
        // Only the top-level fields below are kept (as raw slices); the rest
        // is checked and skipped. A `HashMap<String, &RawValue>` here cost an
        // allocation and a SipHash per field (~4 % of the request path).
        let fields: TopFields<'_> = serde_json::from_str(text).map_err(|e| {
            if e.classify() == serde_json::error::Category::Data {
                ProxyError::BadRequest("request body must be a JSON object".into())
            } else {
                ProxyError::BadRequest(format!("malformed JSON in request body: {e}"))
            }
        })?;
        let span_of = |raw: &RawValue| -> Range<usize> {
            let start = raw.get().as_ptr() as usize - text.as_ptr() as usize;
            start..start + raw.get().len()
        };
        let model_raw = fields
            .model
            .ok_or_else(|| ProxyError::BadRequest("missing required field `model`".into()))?;
        let model: String = serde_json::from_str(model_raw.get())
            .map_err(|_| ProxyError::BadRequest("field `model` must be a string".into()))?;
        if model.is_empty() {
            return Err(ProxyError::BadRequest(
                "field `model` must not be empty".into(),
            ));
        }
        let stream = match fields.stream {
            None => false,
            Some(raw) => match serde_json::from_str::<Option<bool>>(raw.get()) {
                Ok(v) => v.unwrap_or(false),
                Err(_) => {
                    return Err(ProxyError::BadRequest(
                        "field `stream` must be a boolean".into(),
                    ));
                }
            },
        };
        let user = fields
            .user
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
            .or_else(|| {
                #[derive(serde::Deserialize)]
                struct Metadata {
                    user_id: Option<String>,
                }
                fields
                    .metadata
                    .and_then(|raw| serde_json::from_str::<Metadata>(raw.get()).ok())
                    .and_then(|m| m.user_id)
            })
            .filter(|u| !u.is_empty());
        let conversation_span = fields.messages.or(fields.input).map(span_of);
        let system_span = fields.system.map(span_of);
        #[derive(serde::Deserialize)]
        struct StreamOptions {
            include_usage: Option<bool>,
        }
        let stream_options = fields.stream_options;
        let include_usage = stream_options
            .and_then(|raw| serde_json::from_str::<StreamOptions>(raw.get()).ok())
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        // The body parsed as an object, so its first non-blank byte is `{`.
        let object_start = text.bytes().position(|b| b == b'{').map_or(0, |p| p + 1);
        Ok(RequestFacts {
            model,
            model_span: span_of(model_raw),
            stream,
            user,
            conversation_span,
            system_span,
            stream_options_span: stream_options.map(span_of),
            include_usage,
            object_start,
        })
    }

    /// The body for the upstream: the `model` value replaced by `model` and,
    /// when `request_usage` is set, `stream_options.include_usage` turned on
    /// (so accounting never depends on the client's options). Every other
    /// byte is kept as sent; the body itself is returned when nothing changes.
    pub fn rewrite(&self, body: &Bytes, model: &str, request_usage: bool) -> Bytes {
        let mut edits: Vec<(Range<usize>, String)> = Vec::with_capacity(2);
        if model != self.model {
            edits.push((
                self.model_span.clone(),
                serde_json::Value::String(model.to_owned()).to_string(),
            ));
        }
        if request_usage && !self.include_usage {
            match &self.stream_options_span {
                Some(span) => {
                    let mut options = body
                        .get(span.clone())
                        .and_then(|raw| serde_json::from_slice::<serde_json::Value>(raw).ok())
                        .filter(serde_json::Value::is_object)
                        .unwrap_or_else(|| serde_json::json!({}));
                    options["include_usage"] = serde_json::Value::Bool(true);
                    edits.push((span.clone(), options.to_string()));
                }
                None => edits.push((
                    self.object_start..self.object_start,
                    r#""stream_options":{"include_usage":true},"#.to_owned(),
                )),
            }
        }
        if edits.is_empty() {
            return body.clone();
        }
        edits.sort_by_key(|(range, _)| range.start);
        let extra: usize = edits.iter().map(|(_, text)| text.len()).sum();
        let mut out = BytesMut::with_capacity(body.len() + extra);
        let mut at = 0;
        for (range, text) in edits {
            out.extend_from_slice(&body[at..range.start]);
            out.extend_from_slice(text.as_bytes());
            at = range.end;
        }
        out.extend_from_slice(&body[at..]);
        out.freeze()
    }

    /// A stable fingerprint of the conversation's opening (system prompt and
    /// messages up to the first user message) mixed with `credential`: the same
    /// agent conversation gets the same value on every turn and across restarts.
    pub fn conversation_fingerprint(&self, body: &[u8], credential: &str) -> Option<u64> {
        let span = self.conversation_span.clone()?;
        let conversation = std::str::from_utf8(body.get(span)?).ok()?;
        let mut hash = Fnv64::new();
        hash.write(credential.as_bytes());
        hash.write(&[0xff]);
        if let Some(system) = self.system_span.clone().and_then(|s| body.get(s)) {
            hash.write(system);
            hash.write(&[0xfe]);
        }
        // Only the leading messages are read: splitting the raw array (valid
        // JSON, checked by `parse`) stops at the first non-system message,
        // where parsing it into a `Vec` read the whole conversation.
        match ArrayElements::of(conversation) {
            Some(messages) => {
                #[derive(serde::Deserialize)]
                struct Role<'a> {
                    #[serde(borrow)]
                    role: Option<std::borrow::Cow<'a, str>>,
                }
                for m in messages {
                    hash.write(m.as_bytes());
                    hash.write(&[0xfd]);
                    let role = serde_json::from_str::<Role<'_>>(m)
                        .ok()
                        .and_then(|r| r.role);
                    if !matches!(role.as_deref(), Some("system" | "developer")) {
                        break;
                    }
                }
            }
            // Responses `input` may be a plain string.
            None => hash.write(conversation.as_bytes()),
        }
        Some(hash.finish())
    }
}

/// The top-level request fields [`RequestFacts::parse`] reads, as raw JSON
/// slices of the body. A repeated key keeps its last value.
#[derive(Default)]
struct TopFields<'a> {
    model: Option<&'a RawValue>,
    stream: Option<&'a RawValue>,
    user: Option<&'a RawValue>,
    metadata: Option<&'a RawValue>,
    messages: Option<&'a RawValue>,
    input: Option<&'a RawValue>,
    system: Option<&'a RawValue>,
    stream_options: Option<&'a RawValue>,
}

/// A top-level key of a request body.
enum TopKey {
    Model,
    Stream,
    User,
    Metadata,
    Messages,
    Input,
    System,
    StreamOptions,
    Other,
}

impl<'de> serde::Deserialize<'de> for TopKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TopKey, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = TopKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<TopKey, E> {
                Ok(match key {
                    "model" => TopKey::Model,
                    "stream" => TopKey::Stream,
                    "user" => TopKey::User,
                    "metadata" => TopKey::Metadata,
                    "messages" => TopKey::Messages,
                    "input" => TopKey::Input,
                    "system" => TopKey::System,
                    "stream_options" => TopKey::StreamOptions,
                    _ => TopKey::Other,
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

impl<'de> serde::Deserialize<'de> for TopFields<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TopFields<'de>, D::Error> {
        struct FieldsVisitor;
        impl<'de> serde::de::Visitor<'de> for FieldsVisitor {
            type Value = TopFields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TopFields<'de>, A::Error> {
                let mut t = TopFields::default();
                while let Some(key) = map.next_key::<TopKey>()? {
                    let slot = match key {
                        TopKey::Model => &mut t.model,
                        TopKey::Stream => &mut t.stream,
                        TopKey::User => &mut t.user,
                        TopKey::Metadata => &mut t.metadata,
                        TopKey::Messages => &mut t.messages,
                        TopKey::Input => &mut t.input,
                        TopKey::System => &mut t.system,
                        TopKey::StreamOptions => &mut t.stream_options,
                        TopKey::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value()?);
                }
                Ok(t)
            }
        }
        d.deserialize_map(FieldsVisitor)
    }
}

/// The elements of a JSON array, as raw text without surrounding blanks,
/// split lazily: reading stops with the last element asked for. For text
/// already checked to be valid JSON.
struct ArrayElements<'a> {
    text: &'a str,
    at: usize,
    done: bool,
}

impl<'a> ArrayElements<'a> {
    /// `None` when `text` is not an array.
    fn of(text: &'a str) -> Option<ArrayElements<'a>> {
        let trimmed = text.trim_start();
        let rest = trimmed.strip_prefix('[')?;
        Some(ArrayElements {
            text,
            at: text.len() - rest.len(),
            done: false,
        })
    }
}

impl<'a> Iterator for ArrayElements<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.done {
            return None;
        }
        let rest = self.text.get(self.at..)?;
        let element = rest.trim_start();
        if element.starts_with(']') {
            self.done = true;
            return None;
        }
        // serde_json skips one value (strings a word at a time) and stops
        // there: no check for what follows, so the rest is never read.
        let mut de = serde_json::Deserializer::from_str(element);
        let Ok(raw) = <&RawValue as serde::Deserialize>::deserialize(&mut de) else {
            self.done = true;
            return None;
        };
        let raw = raw.get();
        let end = raw.as_ptr() as usize - self.text.as_ptr() as usize + raw.len();
        let after = self.text.get(end..).unwrap_or("").trim_start();
        match after.strip_prefix(',') {
            Some(next) => self.at = self.text.len() - next.len(),
            None => self.done = true,
        }
        Some(raw)
    }
}

/// FNV-1a, 64 bit: stable across builds and platforms, unlike `DefaultHasher`.
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Fnv64 {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_model_and_splices_only_it() {
        let body = Bytes::from_static(
            br#"{"messages":[{"role":"user","content":"hi \"model\""}], "model" : "openai:gpt-4o","stream":true}"#,
        );
        let facts = RequestFacts::parse(&body).unwrap();
        assert_eq!(facts.model, "openai:gpt-4o");
        assert!(facts.stream);
        let out = facts.rewrite(&body, "gpt-4o", false);
        assert_eq!(
            &out[..],
            &br#"{"messages":[{"role":"user","content":"hi \"model\""}], "model" : "gpt-4o","stream":true}"#[..]
        );
    }

    #[test]
    fn escaped_model_names_round_trip() {
        let body = Bytes::from_static(br#"{"model":"mock:e\u0063ho"}"#);
        let facts = RequestFacts::parse(&body).unwrap();
        assert_eq!(facts.model, "mock:echo");
        assert_eq!(
            &facts.rewrite(&body, "a\"b", false)[..],
            br#"{"model":"a\"b"}"#
        );
    }

    #[test]
    fn stream_usage_is_requested_without_touching_the_rest() {
        let body = Bytes::from_static(br#" {"model":"m","stream":true,"messages":[]}"#);
        let f = RequestFacts::parse(&body).unwrap();
        assert!(!f.include_usage);
        let out = f.rewrite(&body, "m", true);
        assert_eq!(
            &out[..],
            &br#" {"stream_options":{"include_usage":true},"model":"m","stream":true,"messages":[]}"#[..]
        );
        let body = Bytes::from_static(
            br#"{"model":"a:m","stream_options":{"include_usage":false,"x":1},"stream":true}"#,
        );
        let f = RequestFacts::parse(&body).unwrap();
        let out = f.rewrite(&body, "m", true);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_usage": true, "x": 1})
        );
        assert_eq!(v["model"], "m");
        // Already asked for: nothing to do.
        let body = Bytes::from_static(br#"{"model":"m","stream_options":{"include_usage":true}}"#);
        let f = RequestFacts::parse(&body).unwrap();
        assert!(f.include_usage);
        assert_eq!(f.rewrite(&body, "m", true), body);
    }

    #[test]
    fn client_errors_are_named() {
        let err = |b: &[u8]| RequestFacts::parse(b).unwrap_err().to_string();
        assert!(err(b"{not json").contains("malformed JSON"));
        assert!(err(b"[1,2]").contains("JSON object"));
        assert!(err(br#"{"messages":[]}"#).contains("missing required field `model`"));
        assert!(err(br#"{"model":5}"#).contains("`model` must be a string"));
        assert!(err(br#"{"model":"x","stream":"yes"}"#).contains("`stream`"));
    }

    #[test]
    fn user_comes_from_user_or_metadata() {
        let f = RequestFacts::parse(br#"{"model":"m","user":"u1"}"#).unwrap();
        assert_eq!(f.user.as_deref(), Some("u1"));
        let f = RequestFacts::parse(br#"{"model":"m","metadata":{"user_id":"u2"}}"#).unwrap();
        assert_eq!(f.user.as_deref(), Some("u2"));
    }

    #[test]
    fn fingerprint_is_stable_across_turns_and_differs_by_credential() {
        let fp = |body: &[u8], key: &str| {
            RequestFacts::parse(body)
                .unwrap()
                .conversation_fingerprint(body, key)
                .unwrap()
        };
        let t1 = br#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"a"}]}"#;
        let t2 = br#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":"c"}]}"#;
        let other = br#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"z"}]}"#;
        assert_eq!(fp(t1, "k1"), fp(t2, "k1"));
        assert_ne!(fp(t1, "k1"), fp(t1, "k2"));
        assert_ne!(fp(t1, "k1"), fp(other, "k1"));
    }

    #[test]
    fn array_elements_split_raw_json_like_serde() {
        let cases = [
            r#"[]"#,
            r#" [ ] "#,
            r#"[1]"#,
            r#"[ {"role":"system","content":"a,]}\"[{"} , {"x":[1,{"y":"]"}]},"s\\",null ]"#,
            r#"[[1,2],[3,[4]],"",{}]"#,
        ];
        for text in cases {
            let expected: Vec<&str> = serde_json::from_str::<Vec<&RawValue>>(text)
                .unwrap()
                .into_iter()
                .map(RawValue::get)
                .collect();
            let split: Vec<&str> = ArrayElements::of(text).unwrap().collect();
            assert_eq!(split, expected, "{text}");
        }
        assert!(ArrayElements::of(r#""just text""#).is_none());
    }

    #[test]
    fn fingerprint_matches_the_whole_array_reading() {
        // The value a full `Vec<&RawValue>` reading gave (sessions stored
        // before this change keep their ids).
        fn reference(body: &[u8], credential: &str) -> u64 {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap();
            let mut hash = Fnv64::new();
            hash.write(credential.as_bytes());
            hash.write(&[0xff]);
            let text = std::str::from_utf8(body).unwrap();
            let fields: std::collections::HashMap<String, &RawValue> =
                serde_json::from_str(text).unwrap();
            if let Some(system) = fields.get("system") {
                hash.write(system.get().as_bytes());
                hash.write(&[0xfe]);
            }
            let messages: Vec<&RawValue> = serde_json::from_str(fields["messages"].get()).unwrap();
            for (m, value) in messages.iter().zip(v["messages"].as_array().unwrap()) {
                hash.write(m.get().as_bytes());
                hash.write(&[0xfd]);
                if !matches!(value["role"].as_str(), Some("system" | "developer")) {
                    break;
                }
            }
            hash.finish()
        }
        let bodies: [&[u8]; 3] = [
            br#"{"model":"m","messages":[ {"role":"system","content":"s, [x]"} ,{"role":"developer","content":"d"},{"role":"user","content":"u\"}"},{"role":"assistant","content":"a"}]}"#,
            br#"{"model":"m","system":"top","messages":[{"role":"user","content":[{"type":"text","text":"t"}]}]}"#,
            br#"{"messages":[{"content":"no role"}],"model":"m"}"#,
        ];
        for body in bodies {
            let facts = RequestFacts::parse(body).unwrap();
            assert_eq!(
                facts.conversation_fingerprint(body, "key"),
                Some(reference(body, "key"))
            );
        }
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value() {
        let f = RequestFacts::parse(br#"{"model":"a","x":{"model":"no"},"model":"b"}"#).unwrap();
        assert_eq!(f.model, "b");
        let f = RequestFacts::parse(br#"{"mod\u0065l":"escaped","stream":null}"#).unwrap();
        assert_eq!(f.model, "escaped");
        assert!(!f.stream);
    }
}
