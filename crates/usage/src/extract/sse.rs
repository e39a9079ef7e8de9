//! An incremental Server-Sent Events parser (the WHATWG event-stream
//! grammar): feed byte chunks split anywhere, get whole events.

/// Default cap on one line and on one event's data, in bytes.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 * 1024 * 1024;

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];
/// Event data buffers bigger than this are released after their event, not reused.
const KEEP_BUFFER_BYTES: usize = 64 * 1024;

/// One dispatched SSE event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, `None` when absent or empty.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Incremental SSE parser.
///
/// * Lines end with `\r\n`, `\n` or `\r` (a `\r\n` split across chunks is one
///   line end).
/// * A UTF-8 BOM at the very start of the stream is skipped.
/// * `:` lines are comments; `id:` and `retry:` and unknown fields are ignored.
/// * One space after the field's colon is removed; `data:` lines are joined
///   with `\n`; an event with no `data:` line is not dispatched.
/// * Invalid UTF-8 is replaced (lossy), line by line.
/// * A line or an event's data longer than the cap drops that event.
/// * [`SseParser::finish`] delivers a last event left without its blank line
///   (lenient: the standard would drop it).
///
/// The events do not depend on how the input is split into chunks.
#[derive(Debug, Clone)]
pub struct SseParser {
    /// Bytes held until we know whether the stream starts with a BOM.
    start: Vec<u8>,
    start_done: bool,
    line: Vec<u8>,
    line_overflow: bool,
    after_cr: bool,
    event_type: String,
    data: String,
    event_overflow: bool,
    max_event_bytes: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new()
    }
}

impl SseParser {
    /// A parser with the default cap ([`DEFAULT_MAX_EVENT_BYTES`]).
    pub fn new() -> SseParser {
        SseParser::with_max_event_bytes(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A parser that drops events whose line or data exceeds `max` bytes.
    pub fn with_max_event_bytes(max: usize) -> SseParser {
        SseParser {
            start: Vec::new(),
            start_done: false,
            line: Vec::new(),
            line_overflow: false,
            after_cr: false,
            event_type: String::new(),
            data: String::new(),
            event_overflow: false,
            max_event_bytes: max.max(1),
        }
    }

    /// Feeds one chunk; returns the events it completes.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        self.feed(chunk, |event| out.push(event));
        out
    }

    /// Feeds one chunk, calling `on_event` for each event it completes.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(SseEvent)) {
        self.feed_borrowed(chunk, |event, data| on_event(owned(event, data)));
    }

    /// [`feed`](Self::feed) with borrowed events: `on_event(event, data)`
    /// (no allocation per event; the buffers are reused).
    pub(crate) fn feed_borrowed(
        &mut self,
        chunk: &[u8],
        mut on_event: impl FnMut(Option<&str>, &str),
    ) {
        if self.start_done {
            self.feed_bytes(chunk, &mut on_event);
            return;
        }
        self.start.extend_from_slice(chunk);
        if self.start.len() < BOM.len() && BOM.starts_with(&self.start) {
            return;
        }
        self.start_done = true;
        let start = std::mem::take(&mut self.start);
        let rest = start.strip_prefix(&BOM[..]).unwrap_or(&start);
        self.feed_bytes(rest, &mut on_event);
    }

    /// Ends the stream: returns a last event not followed by a blank line, if any.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let mut last = None;
        self.finish_borrowed(|event, data| last = Some(owned(event, data)));
        last
    }

    /// [`finish`](Self::finish) with a borrowed event.
    pub(crate) fn finish_borrowed(&mut self, mut on_event: impl FnMut(Option<&str>, &str)) {
        if !self.start_done {
            self.start_done = true;
            let start = std::mem::take(&mut self.start);
            self.feed_bytes(&start, &mut on_event);
        }
        if !self.line.is_empty() || self.line_overflow {
            self.end_line(&mut on_event);
        }
        self.after_cr = false;
        if !self.data.is_empty() || self.event_overflow {
            self.dispatch(&mut on_event);
        }
    }

    fn feed_bytes(&mut self, bytes: &[u8], on_event: &mut impl FnMut(Option<&str>, &str)) {
        let mut rest = bytes;
        // A `\r` ended the previous chunk: a `\n` starting this one belongs to it.
        // (An empty chunk changes nothing.)
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if let Some((b'\n', tail)) = rest.split_first() {
                rest = tail;
            }
        }
        while !rest.is_empty() {
            match find_line_end(rest) {
                Some(at) => {
                    let (content, tail) = rest.split_at(at);
                    if self.line.is_empty() && !self.line_overflow {
                        // The whole line is in this chunk: read it in place.
                        self.whole_line(content, on_event);
                    } else {
                        self.append_line(content);
                        self.end_line(on_event);
                    }
                    rest = match tail.split_first() {
                        Some((b'\r', after)) => match after.split_first() {
                            Some((b'\n', after_lf)) => after_lf,
                            Some(_) => after,
                            None => {
                                self.after_cr = true;
                                after
                            }
                        },
                        Some((_, after)) => after,
                        None => tail,
                    };
                }
                None => {
                    self.append_line(rest);
                    break;
                }
            }
        }
    }

    fn append_line(&mut self, bytes: &[u8]) {
        if self.line_overflow {
            return;
        }
        if self.line.len().saturating_add(bytes.len()) > self.max_event_bytes {
            self.line_overflow = true;
            self.line = Vec::new();
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    fn whole_line(&mut self, line: &[u8], on_event: &mut impl FnMut(Option<&str>, &str)) {
        if line.len() > self.max_event_bytes {
            self.event_overflow = true;
        } else if line.is_empty() {
            self.dispatch(on_event);
        } else {
            self.field(line);
        }
    }

    fn end_line(&mut self, on_event: &mut impl FnMut(Option<&str>, &str)) {
        if self.line_overflow {
            self.line_overflow = false;
            self.event_overflow = true;
            return;
        }
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            self.dispatch(on_event);
        } else {
            self.field(&line);
            // Keep the allocation for the next line.
            self.line = line;
            self.line.clear();
        }
    }

    fn field(&mut self, line: &[u8]) {
        if line.first() == Some(&b':') {
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let (name, value) = line.split_at(colon);
                let value = value.get(1..).unwrap_or_default();
                (name, value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"event" => {
                self.event_type.clear();
                push_lossy(&mut self.event_type, value);
            }
            b"data" => {
                if self.event_overflow {
                    return;
                }
                if self.data.len().saturating_add(value.len()) >= self.max_event_bytes {
                    self.event_overflow = true;
                    self.data = String::new();
                    return;
                }
                push_lossy(&mut self.data, value);
                self.data.push('\n');
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(Option<&str>, &str)) {
        if !std::mem::take(&mut self.event_overflow) && !self.data.is_empty() {
            let data = self.data.strip_suffix('\n').unwrap_or(&self.data);
            let event = (!self.event_type.is_empty()).then_some(self.event_type.as_str());
            on_event(event, data);
        }
        self.event_type.clear();
        if self.data.capacity() > KEEP_BUFFER_BYTES {
            self.data = String::new();
        } else {
            self.data.clear();
        }
    }
}

fn owned(event: Option<&str>, data: &str) -> SseEvent {
    SseEvent {
        event: event.map(str::to_owned),
        data: data.to_owned(),
    }
}

/// Appends `bytes` as UTF-8, invalid sequences replaced.
fn push_lossy(out: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => out.push_str(text),
        Err(_) => out.push_str(&String::from_utf8_lossy(bytes)),
    }
}

/// Position of the first `\n` or `\r`, eight bytes at a time.
fn find_line_end(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    let is_end = |b: &u8| *b == b'\n' || *b == b'\r';
    // Non-zero when a byte of `word` equals `byte` (the classic has-zero-byte test).
    let has = |word: u64, byte: u8| {
        let x = word ^ (ONES * u64::from(byte));
        x.wrapping_sub(ONES) & !x & HIGHS
    };
    let (words, tail) = bytes.as_chunks::<8>();
    for (n, word) in words.iter().enumerate() {
        let w = u64::from_le_bytes(*word);
        if has(w, b'\n') | has(w, b'\r') != 0
            && let Some(at) = word.iter().position(is_end)
        {
            return Some(n * 8 + at);
        }
    }
    tail.iter().position(is_end).map(|at| words.len() * 8 + at)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_owned),
            data: data.to_owned(),
        }
    }

    fn whole(input: &[u8]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = p.push(input);
        out.extend(p.finish());
        out
    }

    fn chunked(input: &[u8], cuts: &[usize]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.sort_unstable();
        let mut from = 0;
        for cut in cuts {
            out.extend(p.push(&input[from..cut]));
            from = cut;
        }
        out.extend(p.push(&input[from..]));
        out.extend(p.finish());
        out
    }

    #[test]
    fn basic_fields_comments_and_multiline_data() {
        let input = b": keep-alive\n\nevent: message_start\ndata: {\"a\":1}\n\ndata: line1\ndata:line2\nid: 7\nretry: 100\n\n";
        assert_eq!(
            whole(input),
            vec![
                ev(Some("message_start"), "{\"a\":1}"),
                ev(None, "line1\nline2"),
            ]
        );
    }

    #[test]
    fn line_endings_crlf_cr_lf_and_bom() {
        let input = b"\xEF\xBB\xBFdata: a\r\n\r\nevent: x\rdata: b\r\rdata: c\n\n";
        assert_eq!(
            whole(input),
            vec![ev(None, "a"), ev(Some("x"), "b"), ev(None, "c")]
        );
        // BOM split over chunks, CRLF split over chunks.
        assert_eq!(
            chunked(input, &[1, 2, 10, 11]),
            vec![ev(None, "a"), ev(Some("x"), "b"), ev(None, "c")]
        );
        // Only one BOM is removed: a second one makes the field name unknown.
        assert_eq!(whole("\u{feff}\u{feff}data: x\n\n".as_bytes()), vec![]);
        assert_eq!(
            whole("\u{feff}data: \u{feff}x\n\n".as_bytes()),
            vec![ev(None, "\u{feff}x")]
        );
    }

    #[test]
    fn events_without_data_are_not_dispatched_and_empty_data_is() {
        assert_eq!(whole(b"event: ping\n\ndata:\n\n"), vec![ev(None, "")]);
        // The event name does not leak into the next event.
        assert_eq!(whole(b"event: ping\n\ndata: x\n\n"), vec![ev(None, "x")]);
    }

    #[test]
    fn field_without_colon_and_one_space_only_stripped() {
        assert_eq!(whole(b"data\n\n"), vec![ev(None, "")]);
        assert_eq!(whole(b"data:  two\n\n"), vec![ev(None, " two")]);
        assert_eq!(whole(b"data: a:b\n\n"), vec![ev(None, "a:b")]);
    }

    #[test]
    fn finish_delivers_unterminated_last_event() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: {\"done\":true}").is_empty());
        assert_eq!(p.finish(), Some(ev(None, "{\"done\":true}")));
        assert_eq!(p.finish(), None);
        let mut p = SseParser::new();
        assert_eq!(p.push(b"data: x\n").len(), 0);
        assert_eq!(p.finish(), Some(ev(None, "x")));
        // A lone partial BOM is kept as data bytes (lossy).
        let mut p = SseParser::new();
        assert!(p.push(b"\xEF").is_empty());
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn oversized_events_are_dropped() {
        let mut p = SseParser::with_max_event_bytes(12);
        let out =
            p.push(b"data: 0123456789\n\ndata: ok\n\ndata: 123456\ndata: 789012\n\ndata: ok2\n\n");
        assert_eq!(out, vec![ev(None, "ok"), ev(None, "ok2")]);
    }

    #[test]
    fn empty_chunk_between_cr_and_lf() {
        let mut p = SseParser::new();
        let mut out = p.push(b"data: a\r");
        out.extend(p.push(b""));
        out.extend(p.push(b"\ndata: b\r"));
        out.extend(p.push(b""));
        out.extend(p.push(b"\n\r\n"));
        assert_eq!(out, vec![ev(None, "a\nb")]);
    }

    #[test]
    fn invalid_utf8_is_lossy() {
        assert_eq!(whole(b"data: a\xFFb\n\n"), vec![ev(None, "a\u{fffd}b")]);
    }

    fn stream_strategy() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"data: ".to_vec()),
            Just(b"data:".to_vec()),
            Just(b"event: ".to_vec()),
            Just(b": comment".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\n\n".to_vec()),
            Just(b"\xEF\xBB\xBF".to_vec()),
            Just("é€😀".as_bytes().to_vec()),
            Just(b"{\"choices\":[],\"usage\":{\"prompt_tokens\":3}}".to_vec()),
            prop::collection::vec(any::<u8>(), 0..6),
            "[a-z: ]{0,8}".prop_map(String::into_bytes),
        ];
        prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_events(
            input in stream_strategy(),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            prop_assert_eq!(chunked(&input, &cuts), whole(&input));
        }

        #[test]
        fn line_end_is_the_first_cr_or_lf(
            input in prop::collection::vec(prop::sample::select(vec![b'a', b'\n', b'\r', 0x0a ^ 0x80, 0xff, 0x00]), 0..40),
            skip in 0usize..40,
        ) {
            let naive = |bytes: &[u8]| bytes.iter().position(|b| *b == b'\n' || *b == b'\r');
            let from = skip.min(input.len());
            prop_assert_eq!(find_line_end(&input[from..]), naive(&input[from..]));
        }

        #[test]
        fn byte_by_byte_equals_whole(input in stream_strategy()) {
            let cuts: Vec<usize> = (0..=input.len()).collect();
            prop_assert_eq!(chunked(&input, &cuts), whole(&input));
        }

        #[test]
        fn small_cap_is_chunking_independent(
            input in stream_strategy(),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let run = |cuts: &[usize]| {
                let mut p = SseParser::with_max_event_bytes(16);
                let mut out = Vec::new();
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
                cuts.sort_unstable();
                let mut from = 0;
                for cut in cuts {
                    out.extend(p.push(&input[from..cut]));
                    from = cut;
                }
                out.extend(p.push(&input[from..]));
                out.extend(p.finish());
                out
            };
            prop_assert_eq!(run(&cuts), run(&[]));
        }
    }
}
