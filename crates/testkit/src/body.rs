//! A response body that yields pre-rendered SSE frames one at a time, with a
//! delay between them, and can end in an error that makes hyper abort the
//! connection (the `reset` fault).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::time::Sleep;

use crate::server::Shared;

/// How long a reset body pauses before failing, so earlier bytes reach the client.
const RESET_PAUSE: Duration = Duration::from_millis(10);

/// Yields each event as its own data frame when hyper polls for it: nothing is
/// buffered ahead, so a frame reaches the socket as soon as its delay is over.
pub(crate) struct EventBody {
    events: VecDeque<Bytes>,
    delay: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    reset_at_end: bool,
    finished: bool,
    paused: bool,
    next_index: usize,
    request_index: usize,
    shared: Arc<Shared>,
}

impl EventBody {
    /// A body sending `events` with `delay` between them; `reset_at_end` ends it with an error.
    pub(crate) fn new(
        events: Vec<Bytes>,
        delay: Duration,
        reset_at_end: bool,
        request_index: usize,
        shared: Arc<Shared>,
    ) -> EventBody {
        EventBody {
            events: events.into(),
            delay,
            sleep: None,
            reset_at_end,
            finished: false,
            paused: false,
            next_index: 0,
            request_index,
            shared,
        }
    }
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(sleep) = this.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleep = None;
            }
            if let Some(event) = this.events.pop_front() {
                this.shared
                    .record_sent_event(this.request_index, this.next_index, Instant::now());
                this.next_index += 1;
                if !this.events.is_empty() && !this.delay.is_zero() {
                    this.sleep = Some(Box::pin(tokio::time::sleep(this.delay)));
                }
                return Poll::Ready(Some(Ok(Frame::data(event))));
            }
            if this.reset_at_end && !this.paused {
                // Pause before the reset so hyper flushes the head and the events
                // sent so far: the client sees a stream that breaks, not nothing.
                this.paused = true;
                this.sleep = Some(Box::pin(tokio::time::sleep(this.delay.max(RESET_PAUSE))));
                continue;
            }
            if this.reset_at_end && !this.finished {
                this.finished = true;
                return Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "mock fault: connection reset mid-stream",
                ))));
            }
            this.finished = true;
            return Poll::Ready(None);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }
}
