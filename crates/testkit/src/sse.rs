//! Parsing SSE text bodies in tests.

/// Parses an SSE text body into `(event name, data)` pairs, in order.
///
/// Follows the SSE rules tests need: events are separated by blank lines
/// (`\n\n` or `\r\n\r\n`), several `data:` lines join with `\n`, one space
/// after the colon is dropped, comment lines (`:`) and other fields are
/// ignored, a block without `data:` lines is skipped, and an unterminated
/// last block (no blank line after it) is dropped, as a browser would.
pub fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    let mut events = Vec::new();
    let mut event: Option<String> = None;
    let mut data: Option<String> = None;
    let mut dispatch = |event: &mut Option<String>, data: &mut Option<String>| {
        if let Some(data) = data.take() {
            events.push((event.take(), data));
        }
        *event = None;
    };
    for line in body.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            dispatch(&mut event, &mut data);
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => event = Some(value.to_owned()),
            "data" => match data.as_mut() {
                Some(existing) => {
                    existing.push('\n');
                    existing.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
    events
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn parses_named_and_unnamed_events() {
        let body = "event: message_start\ndata: {\"a\":1}\n\n: comment\ndata: x\r\ndata: y\r\n\r\nevent: ping\n\ndata: [DONE]\n\n";
        assert_eq!(
            sse_events(body),
            vec![
                (Some("message_start".to_owned()), "{\"a\":1}".to_owned()),
                (None, "x\ny".to_owned()),
                (None, "[DONE]".to_owned()),
            ]
        );
    }

    #[test]
    fn unterminated_last_event_is_dropped() {
        assert_eq!(
            sse_events("data:z\n\ndata: cut"),
            vec![(None, "z".to_owned())]
        );
        assert!(sse_events("").is_empty());
    }
}
