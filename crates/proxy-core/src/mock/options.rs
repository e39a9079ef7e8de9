//! Per-request knobs of the mock model, parsed from headers and the model name.

use std::time::Duration;

use http::HeaderMap;

use super::{
    HEADER_CHUNKS, HEADER_FAULT, HEADER_FIRST_TOKEN_DELAY_MS, HEADER_INTER_CHUNK_DELAY_MS,
    MockError,
};

/// The model-name marker that starts a fault suffix.
const FAULT_SUFFIX: &str = "+fault-";

/// Per-request knobs, from headers and the model name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MockOptions {
    /// The failure to simulate, if any.
    pub fault: Option<MockFault>,
    /// Wait before the first byte of the response (JSON: before the whole body).
    pub first_token_delay: Duration,
    /// Wait between SSE events.
    pub inter_chunk_delay: Duration,
    /// Number of content chunks (text deltas) in a stream; `None` means [`super::DEFAULT_CHUNK_COUNT`].
    pub chunk_count: Option<usize>,
}

/// A failure the mock simulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockFault {
    /// Answer this status with the protocol's JSON error body (`429` also gets `retry-after: 1`).
    Status(u16),
    /// Send about half of a stream, then abort the connection (JSON: abort before the body).
    ResetMidStream,
    /// Answer 200 with a truncated JSON body (stream: one good event, then one with truncated JSON data).
    MalformedJson,
    /// Accept the request and never send a response head.
    NeverAnswer,
}

impl MockFault {
    /// Parses a fault name: `reset`, `malformed`, `hang`, or a status `400..=599`.
    pub fn parse(name: &str) -> Option<MockFault> {
        match name.trim() {
            "reset" => Some(MockFault::ResetMidStream),
            "malformed" => Some(MockFault::MalformedJson),
            "hang" => Some(MockFault::NeverAnswer),
            other => other
                .parse::<u16>()
                .ok()
                .filter(|status| (400..=599).contains(status))
                .map(MockFault::Status),
        }
    }

    /// The name used in headers and model suffixes (`503`, `reset`, `malformed`, `hang`).
    pub fn name(self) -> String {
        match self {
            MockFault::Status(status) => status.to_string(),
            MockFault::ResetMidStream => "reset".to_owned(),
            MockFault::MalformedJson => "malformed".to_owned(),
            MockFault::NeverAnswer => "hang".to_owned(),
        }
    }
}

const FAULT_EXPECTED: &str = "expected reset, malformed, hang or a status 400..=599";

impl MockOptions {
    /// Merge knobs from request headers and the model name (header wins).
    pub fn from_request(headers: &HeaderMap, model: &str) -> Result<MockOptions, MockError> {
        MockOptions::from_request_with_defaults(&MockOptions::default(), headers, model)
    }

    /// Like [`MockOptions::from_request`], starting from `defaults` (suffix and headers override them).
    pub fn from_request_with_defaults(
        defaults: &MockOptions,
        headers: &HeaderMap,
        model: &str,
    ) -> Result<MockOptions, MockError> {
        let mut options = defaults.clone();
        if let Some(idx) = model.find(FAULT_SUFFIX) {
            let name = &model[idx + FAULT_SUFFIX.len()..];
            options.fault =
                Some(
                    MockFault::parse(name).ok_or_else(|| MockError::InvalidModelSuffix {
                        model: model.to_owned(),
                        reason: FAULT_EXPECTED,
                    })?,
                );
        }
        if let Some(value) = header_str(headers, HEADER_FAULT, FAULT_EXPECTED)? {
            options.fault = Some(
                MockFault::parse(value)
                    .ok_or_else(|| invalid(HEADER_FAULT, value, FAULT_EXPECTED))?,
            );
        }
        if let Some(ms) = header_u64(headers, HEADER_FIRST_TOKEN_DELAY_MS)? {
            options.first_token_delay = Duration::from_millis(ms);
        }
        if let Some(ms) = header_u64(headers, HEADER_INTER_CHUNK_DELAY_MS)? {
            options.inter_chunk_delay = Duration::from_millis(ms);
        }
        if let Some(n) = header_u64(headers, HEADER_CHUNKS)? {
            let n = usize::try_from(n)
                .ok()
                .filter(|n| (1..=100_000).contains(n))
                .ok_or_else(|| invalid(HEADER_CHUNKS, &n.to_string(), "expected 1..=100000"))?;
            options.chunk_count = Some(n);
        }
        Ok(options)
    }
}

/// `"gpt-4o+fault-503"` → `"gpt-4o"`; a name without a fault suffix is returned unchanged.
pub fn strip_fault_suffix(model: &str) -> &str {
    match model.find(FAULT_SUFFIX) {
        Some(idx) => &model[..idx],
        None => model,
    }
}

fn invalid(header: &'static str, value: &str, reason: &'static str) -> MockError {
    MockError::InvalidHeader {
        header,
        value: value.to_owned(),
        reason,
    }
}

fn header_str<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
    reason: &'static str,
) -> Result<Option<&'a str>, MockError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| invalid(name, &String::from_utf8_lossy(value.as_bytes()), reason)),
    }
}

fn header_u64(headers: &HeaderMap, name: &'static str) -> Result<Option<u64>, MockError> {
    const EXPECTED: &str = "expected a non-negative integer";
    match header_str(headers, name, EXPECTED)? {
        None => Ok(None),
        Some(value) => value
            .parse::<u64>()
            .map(Some)
            .map_err(|_| invalid(name, value, EXPECTED)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn strips_suffix() {
        assert_eq!(strip_fault_suffix("gpt-4o+fault-503"), "gpt-4o");
        assert_eq!(strip_fault_suffix("echo+fault-reset"), "echo");
        assert_eq!(strip_fault_suffix("claude-3"), "claude-3");
    }

    #[test]
    fn parses_suffix_faults() {
        let cases = [
            ("gpt-4o+fault-503", MockFault::Status(503)),
            ("m+fault-429", MockFault::Status(429)),
            ("echo+fault-reset", MockFault::ResetMidStream),
            ("echo+fault-malformed", MockFault::MalformedJson),
            ("echo+fault-hang", MockFault::NeverAnswer),
        ];
        for (model, fault) in cases {
            let o = MockOptions::from_request(&HeaderMap::new(), model).unwrap();
            assert_eq!(o.fault, Some(fault), "{model}");
            assert_eq!(MockFault::parse(&fault.name()), Some(fault));
        }
        assert!(matches!(
            MockOptions::from_request(&HeaderMap::new(), "m+fault-nope"),
            Err(MockError::InvalidModelSuffix { .. })
        ));
        assert!(MockOptions::from_request(&HeaderMap::new(), "m+fault-200").is_err());
    }

    #[test]
    fn parses_headers_and_header_wins() {
        let h = headers(&[
            (HEADER_FAULT, "500"),
            (HEADER_FIRST_TOKEN_DELAY_MS, "150"),
            (HEADER_INTER_CHUNK_DELAY_MS, " 20 "),
            (HEADER_CHUNKS, "7"),
        ]);
        let o = MockOptions::from_request(&h, "m+fault-reset").unwrap();
        assert_eq!(
            o,
            MockOptions {
                fault: Some(MockFault::Status(500)),
                first_token_delay: Duration::from_millis(150),
                inter_chunk_delay: Duration::from_millis(20),
                chunk_count: Some(7),
            }
        );
    }

    #[test]
    fn defaults_are_overridden() {
        let defaults = MockOptions {
            fault: Some(MockFault::Status(503)),
            chunk_count: Some(3),
            inter_chunk_delay: Duration::from_millis(5),
            ..MockOptions::default()
        };
        let o = MockOptions::from_request_with_defaults(
            &defaults,
            &headers(&[(HEADER_CHUNKS, "9")]),
            "m",
        )
        .unwrap();
        assert_eq!(o.fault, Some(MockFault::Status(503)));
        assert_eq!(o.chunk_count, Some(9));
        assert_eq!(o.inter_chunk_delay, Duration::from_millis(5));
        let o =
            MockOptions::from_request_with_defaults(&defaults, &HeaderMap::new(), "m+fault-hang")
                .unwrap();
        assert_eq!(o.fault, Some(MockFault::NeverAnswer));
    }

    #[test]
    fn bad_header_values_are_errors() {
        for (name, value) in [
            (HEADER_FAULT, "explode"),
            (HEADER_FAULT, "200"),
            (HEADER_FIRST_TOKEN_DELAY_MS, "-1"),
            (HEADER_INTER_CHUNK_DELAY_MS, "soon"),
            (HEADER_CHUNKS, "0"),
        ] {
            let err = MockOptions::from_request(&headers(&[(name, value)]), "m").unwrap_err();
            assert!(
                matches!(err, MockError::InvalidHeader { header, .. } if header == name),
                "{name}: {value}"
            );
        }
    }
}
