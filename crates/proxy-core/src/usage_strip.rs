//! Removes the usage-only chunk from an OpenAI chat stream when the proxy,
//! not the client, asked for it (`stream_options.include_usage`): the
//! backend leg keeps it for accounting, the client sees what it asked for.
//!
//! Events are forwarded as soon as they are complete; only a partial event
//! at the end of a chunk waits for its remainder. A chunk made only of
//! complete events and holding no usage event passes through without a copy.

use bytes::{Bytes, BytesMut};

/// Filters SSE chunks, dropping `data: {... "choices": [], "usage": {...}}` events.
#[derive(Debug, Default)]
pub struct UsageChunkStripper {
    pending: BytesMut,
}

impl UsageChunkStripper {
    /// A stripper with nothing pending.
    pub fn new() -> UsageChunkStripper {
        UsageChunkStripper::default()
    }

    /// Feeds one upstream chunk; returns the bytes to send to the client now
    /// (possibly empty).
    pub fn push(&mut self, chunk: &Bytes) -> Bytes {
        if self.pending.is_empty()
            && last_event_end(chunk) == Some(chunk.len())
            && !contains_usage_event(chunk)
        {
            return chunk.clone();
        }
        self.pending.extend_from_slice(chunk);
        let Some(end) = last_event_end(&self.pending) else {
            return Bytes::new();
        };
        let complete = self.pending.split_to(end).freeze();
        if contains_usage_event(&complete) {
            filter_events(&complete)
        } else {
            complete
        }
    }

    /// What is left when the stream ends (an unterminated last event), as is.
    pub fn finish(&mut self) -> Bytes {
        std::mem::take(&mut self.pending).freeze()
    }
}

/// Offset just past the last blank line (event terminator) in `buf`.
fn last_event_end(buf: &[u8]) -> Option<usize> {
    let mut i = buf.len();
    while i >= 2 {
        if buf[i - 1] == b'\n'
            && (buf[i - 2] == b'\n' || (i >= 3 && buf[i - 2] == b'\r' && buf[i - 3] == b'\n'))
        {
            return Some(i);
        }
        if buf[i - 1] == b'\r' && buf[i - 2] == b'\r' {
            return Some(i);
        }
        i -= 1;
    }
    None
}

/// A cheap pre-check before parsing anything.
fn contains_usage_event(buf: &[u8]) -> bool {
    memmem(buf, b"\"usage\"") && memmem(buf, b"\"choices\"")
}

fn memmem(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Re-emits the complete events of `buf` except usage-only ones.
fn filter_events(buf: &Bytes) -> Bytes {
    let mut out = BytesMut::with_capacity(buf.len());
    let mut start = 0;
    while start < buf.len() {
        let end = next_event_end(&buf[start..]).map_or(buf.len(), |e| start + e);
        let event = &buf[start..end];
        if !is_usage_only(event) {
            out.extend_from_slice(event);
        }
        start = end;
    }
    out.freeze()
}

/// Offset just past the first event terminator in `buf`.
fn next_event_end(buf: &[u8]) -> Option<usize> {
    (1..buf.len()).find_map(|i| {
        let lf_lf = buf[i] == b'\n' && buf[i - 1] == b'\n';
        let crlf_crlf = buf[i] == b'\n' && i >= 3 && &buf[i - 3..=i] == b"\r\n\r\n";
        let cr_cr = buf[i] == b'\r' && buf[i - 1] == b'\r';
        (lf_lf || crlf_crlf || cr_cr).then_some(i + 1)
    })
}

/// True for an event whose data is a chunk with empty `choices` and a `usage` object.
fn is_usage_only(event: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(event) else {
        return false;
    };
    let data: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect::<Vec<_>>()
        .join("\n");
    #[derive(serde::Deserialize)]
    struct Chunk {
        choices: Option<Vec<serde::de::IgnoredAny>>,
        usage: Option<serde_json::Map<String, serde_json::Value>>,
    }
    match serde_json::from_str::<Chunk>(&data) {
        Ok(c) => c.choices.is_some_and(|ch| ch.is_empty()) && c.usage.is_some(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}\n\n",
        "data: [DONE]\n\n",
    );

    fn expected() -> String {
        STREAM.replace(
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}\n\n",
            "",
        )
    }

    #[test]
    fn drops_only_the_usage_chunk_whatever_the_chunking() {
        let bytes = STREAM.as_bytes();
        for split in 1..bytes.len() {
            for second in [split, (split + 7).min(bytes.len())] {
                let mut s = UsageChunkStripper::new();
                let mut out = Vec::new();
                for part in [&bytes[..split], &bytes[split..second], &bytes[second..]] {
                    out.extend_from_slice(&s.push(&Bytes::copy_from_slice(part)));
                }
                out.extend_from_slice(&s.finish());
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    expected(),
                    "split at {split}/{second}"
                );
            }
        }
    }

    #[test]
    fn whole_events_without_usage_pass_through_uncopied() {
        let chunk = Bytes::from_static(b"data: {\"choices\":[{\"delta\":{}}]}\n\n");
        let mut s = UsageChunkStripper::new();
        let out = s.push(&chunk);
        assert_eq!(out.as_ptr(), chunk.as_ptr());
    }

    #[test]
    fn crlf_events_are_understood() {
        let mut s = UsageChunkStripper::new();
        let out = s.push(&Bytes::from_static(
            b"data: {\"choices\":[],\"usage\":{\"total_tokens\":2}}\r\n\r\ndata: [DONE]\r\n\r\n",
        ));
        assert_eq!(&out[..], b"data: [DONE]\r\n\r\n");
    }
}
