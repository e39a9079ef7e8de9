//! The response body sent to the client. It forwards upstream chunks as they
//! arrive (never buffering), reports each chunk to the observers, turns a
//! mid-stream upstream failure into a protocol error event for SSE clients,
//! and reports the end of the exchange exactly once — including when the
//! client goes away and the body is dropped unfinished.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use crate::backend::UpstreamBody;
use crate::error::UpstreamError;
use crate::health::{AttemptOutcome, EndpointHealth};
use crate::observer::{
    AttemptInfo, Completion, ExchangeContext, ExchangeObserver, ExchangeOutcome, IncompleteReason,
    ObserverSet,
};
use crate::telemetry;
use crate::translate::StreamTranscoder;
use crate::usage_strip::UsageChunkStripper;

/// How upstream bytes become client bytes when they are not sent as they are.
#[derive(Debug)]
pub(crate) enum Stage {
    /// Hides the usage chunk the proxy (not the client) asked for.
    Strip(UsageChunkStripper),
    /// Translates the backend's SSE stream into the client's protocol.
    Transcode(Box<StreamTranscoder>),
    /// Sends this (already translated) body instead, when the upstream body ends.
    Replace(Option<Bytes>),
}

impl Stage {
    /// Client bytes for one upstream chunk (maybe empty).
    fn push(&mut self, chunk: &Bytes) -> Bytes {
        match self {
            Stage::Strip(s) => s.push(chunk),
            Stage::Transcode(t) => t.push(chunk),
            Stage::Replace(_) => Bytes::new(),
        }
    }

    /// What is left when the upstream body ends.
    fn finish(&mut self) -> Bytes {
        match self {
            Stage::Strip(s) => s.finish(),
            Stage::Transcode(t) => t.finish(),
            Stage::Replace(body) => body.take().unwrap_or_default(),
        }
    }

    /// What is left when the upstream body fails: a transcoder closes
    /// nothing, so the error event that follows is the stream's last word.
    fn abort(&mut self) -> Bytes {
        match self {
            Stage::Transcode(t) => t.abort(),
            _ => self.finish(),
        }
    }

    /// Why the stage ended the stream itself (its error event already sent).
    fn failure(&self) -> Option<String> {
        match self {
            Stage::Transcode(t) => t.failure().map(str::to_owned),
            _ => None,
        }
    }
}

/// Status recorded when the client went away before a response head existed
/// (the nginx convention for "client closed request").
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Book-keeping for one exchange until its end is reported. Reporting happens
/// exactly once: explicitly, or on drop (the client went away — the request
/// future or the response body was dropped unfinished).
pub(crate) struct Tracker {
    pub ctx: Arc<ExchangeContext>,
    pub observers: ObserverSet,
    pub health: Arc<dyn EndpointHealth>,
    /// The attempt whose response is being forwarded (None for proxy-made errors).
    pub served_by: Option<AttemptInfo>,
    pub attempts: u32,
    pub status: u16,
    /// Upstream time of earlier, failed attempts.
    pub upstream_time: Duration,
    /// When the served attempt's request was sent.
    pub sent_at: Option<Instant>,
    pub ttft: Option<Duration>,
    /// Completion reported when the body ends cleanly.
    pub clean_end: Completion,
    pub error: Option<String>,
    pub reported: bool,
}

impl Tracker {
    /// A tracker for a new exchange; nothing served yet.
    pub(crate) fn new(
        ctx: Arc<ExchangeContext>,
        observers: ObserverSet,
        health: Arc<dyn EndpointHealth>,
    ) -> Tracker {
        Tracker {
            ctx,
            observers,
            health,
            served_by: None,
            attempts: 0,
            status: CLIENT_CLOSED_REQUEST,
            upstream_time: Duration::ZERO,
            sent_at: None,
            ttft: None,
            clean_end: Completion::Completed,
            error: None,
            reported: false,
        }
    }

    /// Reports the end of the exchange; later calls do nothing.
    pub(crate) fn finish(&mut self, completion: Completion, at: Instant) {
        if self.reported {
            return;
        }
        self.reported = true;
        if let Some(sent) = self.sent_at {
            self.upstream_time += at.saturating_duration_since(sent);
        }
        if let Some(attempt) = &self.served_by {
            let outcome = match completion {
                Completion::Incomplete(IncompleteReason::ClientDisconnect) => {
                    AttemptOutcome::ClientGone
                }
                Completion::Incomplete(IncompleteReason::Timeout) => {
                    AttemptOutcome::Error(crate::error::UpstreamErrorKind::IdleTimeout)
                }
                Completion::Incomplete(_) => {
                    AttemptOutcome::Error(crate::error::UpstreamErrorKind::Protocol)
                }
                _ if self.status >= 500 || self.status == 429 => AttemptOutcome::Status {
                    status: self.status,
                    retry_after: None,
                },
                _ => AttemptOutcome::Success,
            };
            self.health.record_outcome(&attempt.backend, outcome);
        }
        let total = at.saturating_duration_since(self.ctx.started);
        let outcome = ExchangeOutcome {
            status: self.status,
            completion,
            served_by: self.served_by.take(),
            attempts: self.attempts,
            ttft: self.ttft,
            upstream_time: self.upstream_time.min(total),
            total,
            error: self.error.take(),
        };
        emit_metrics(&self.ctx, &outcome);
        match completion {
            // Failures were logged where they were handled.
            Completion::Completed | Completion::Failed => tracing::debug!(
                request_id = %self.ctx.request_id,
                status = outcome.status,
                total_ms = total.as_millis() as u64,
                "exchange ended"
            ),
            _ => tracing::info!(
                request_id = %self.ctx.request_id,
                status = outcome.status,
                completion = ?completion,
                error = outcome.error.as_deref().unwrap_or(""),
                "exchange did not complete"
            ),
        }
        self.observers.on_exchange_end(&self.ctx, &outcome);
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if !self.reported {
            self.finish(
                Completion::Incomplete(IncompleteReason::ClientDisconnect),
                Instant::now(),
            );
        }
    }
}

/// The name of "no backend" in metric labels.
static NO_BACKEND: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("none"));

fn emit_metrics(ctx: &ExchangeContext, outcome: &ExchangeOutcome) {
    use telemetry::LabelValue;
    let frontend = LabelValue::Static(ctx.frontend.as_str());
    let backend = LabelValue::Shared(
        outcome
            .served_by
            .as_ref()
            .map_or_else(|| Arc::clone(&NO_BACKEND), |a| Arc::clone(&a.backend)),
    );
    let completion = match outcome.completion {
        Completion::Completed => "completed",
        Completion::Failed => "failed",
        Completion::Incomplete(r) => r.as_str(),
    };
    // Cached handles: registering labelled metrics per exchange was ~8 % of
    // the request path (see telemetry's handle cache).
    telemetry::counter(
        telemetry::EXCHANGES_TOTAL,
        [
            ("frontend", frontend.clone()),
            ("backend", backend.clone()),
            (
                "status_class",
                telemetry::status_class(outcome.status).into(),
            ),
            ("outcome", completion.into()),
        ],
    )
    .increment(1);
    telemetry::histogram(
        telemetry::EXCHANGE_DURATION_SECONDS,
        [("frontend", frontend.clone()), ("backend", backend.clone())],
    )
    .record(outcome.total.as_secs_f64());
    if let Some(ttft) = outcome.ttft {
        telemetry::histogram(
            telemetry::TTFT_SECONDS,
            [("frontend", frontend.clone()), ("backend", backend)],
        )
        .record(ttft.as_secs_f64());
    }
    telemetry::histogram(telemetry::PROXY_OVERHEAD_SECONDS, [("frontend", frontend)]).record(
        outcome
            .total
            .saturating_sub(outcome.upstream_time)
            .as_secs_f64(),
    );
}

/// The body of every response to an LLM route.
pub struct ProxyBody {
    inner: UpstreamBody,
    tracker: Option<Tracker>,
    /// The response is an SSE stream: failures become error events.
    sse: bool,
    /// Stripping or translation between the upstream and the client.
    stage: Option<Stage>,
    /// The upstream body has ended; only the end is left to report.
    upstream_done: bool,
    done: bool,
}

impl ProxyBody {
    pub(crate) fn new(inner: UpstreamBody, tracker: Tracker, sse: bool) -> ProxyBody {
        let strip = sse
            && tracker
                .served_by
                .as_ref()
                .is_some_and(|a| a.stream_usage_requested);
        let stage = strip.then(|| Stage::Strip(UsageChunkStripper::new()));
        ProxyBody::with_stage(inner, tracker, sse, stage)
    }

    /// A body whose upstream bytes pass through `stage` on their way to the client.
    pub(crate) fn with_stage(
        inner: UpstreamBody,
        tracker: Tracker,
        sse: bool,
        stage: Option<Stage>,
    ) -> ProxyBody {
        ProxyBody {
            inner,
            tracker: Some(tracker),
            sse,
            stage,
            upstream_done: false,
            done: false,
        }
    }

    fn end_cleanly(&mut self, at: Instant) {
        let Some(t) = &self.tracker else { return };
        if let Some(attempt) = &t.served_by {
            t.observers
                .on_backend_response_end(&t.ctx, attempt, None, at);
        }
        let clean = t.clean_end;
        self.finish(clean, at);
    }

    fn finish(&mut self, completion: Completion, at: Instant) {
        self.done = true;
        if let Some(mut t) = self.tracker.take() {
            t.finish(completion, at);
        }
    }

    /// Reports bytes about to go to the client and stamps the first one.
    fn sent_to_client(&mut self, data: &Bytes, at: Instant) {
        if let Some(t) = self.tracker.as_mut()
            && !data.is_empty()
        {
            t.observers.on_client_response_chunk(&t.ctx, data, at);
            if t.ttft.is_none() {
                t.ttft = Some(at.saturating_duration_since(t.ctx.started));
            }
        }
    }

    /// The stage gave up on the upstream stream (`why`): the exchange ends
    /// as an incomplete backend error.
    fn fail_by_stage(&mut self, why: String, at: Instant) {
        tracing::warn!(error = %why, "translated stream ended early");
        if let Some(t) = self.tracker.as_mut() {
            if let Some(attempt) = &t.served_by {
                let err = UpstreamError::new(
                    attempt.backend.to_string(),
                    crate::error::UpstreamErrorKind::Protocol,
                    why.clone(),
                );
                t.observers
                    .on_backend_response_end(&t.ctx, attempt, Some(&err), at);
            }
            t.error = Some(why);
        }
        self.finish(Completion::Incomplete(IncompleteReason::BackendError), at);
    }

    /// What the stage still holds back (an unterminated last event, a translated body).
    fn held_back(&mut self) -> Bytes {
        self.stage.as_mut().map(Stage::finish).unwrap_or_default()
    }
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyBody")
            .field("sse", &self.sse)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if this.upstream_done {
                this.end_cleanly(Instant::now());
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    let now = Instant::now();
                    let frame = match frame.into_data() {
                        Ok(data) => {
                            if let Some(t) = &this.tracker
                                && let Some(attempt) = &t.served_by
                                && !data.is_empty()
                            {
                                t.observers
                                    .on_backend_response_chunk(&t.ctx, attempt, &data, now);
                            }
                            let mut out = match this.stage.as_mut() {
                                Some(s) => s.push(&data),
                                None => data,
                            };
                            if let Some(why) = this.stage.as_ref().and_then(Stage::failure) {
                                // The stage ended the answer with an error event.
                                this.sent_to_client(&out, now);
                                this.fail_by_stage(why, now);
                                return Poll::Ready(Some(Ok(Frame::data(out))));
                            }
                            if this.inner.is_end_stream() {
                                let rest = this.held_back();
                                if !rest.is_empty() {
                                    out = Bytes::from([&out[..], &rest[..]].concat());
                                }
                            }
                            if out.is_empty() && !this.inner.is_end_stream() {
                                // Held back until the event is complete: nothing to send yet.
                                continue;
                            }
                            this.sent_to_client(&out, now);
                            Frame::data(out)
                        }
                        Err(other) => other,
                    };
                    // A body of known length is not polled again after its last
                    // byte: report the end now, or it would look like a disconnect.
                    if this.inner.is_end_stream() {
                        this.end_cleanly(now);
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(None) => {
                    this.upstream_done = true;
                    let rest = this.held_back();
                    if !rest.is_empty() {
                        this.sent_to_client(&rest, Instant::now());
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    let now = Instant::now();
                    let reason = if err.kind.is_timeout() {
                        IncompleteReason::Timeout
                    } else {
                        IncompleteReason::BackendError
                    };
                    let mut event = None;
                    if this.sse {
                        let held = this.stage.as_mut().map(Stage::abort).unwrap_or_default();
                        let mut out = BytesMut::from(&held[..]);
                        if let Some(t) = &this.tracker {
                            let message = format!("upstream stream failed: {err}");
                            out.extend_from_slice(
                                &t.ctx.frontend.stream_error_event(err.status(), &message),
                            );
                        }
                        let out = out.freeze();
                        this.sent_to_client(&out, now);
                        event = Some(out);
                    }
                    if let Some(t) = this.tracker.as_mut() {
                        if let Some(attempt) = &t.served_by {
                            t.observers
                                .on_backend_response_end(&t.ctx, attempt, Some(&err), now);
                        }
                        t.error = Some(err.to_string());
                    }
                    tracing::warn!(error = %err, sse = this.sse, "upstream failed mid-response");
                    this.finish(Completion::Incomplete(reason), now);
                    return match event {
                        Some(ev) => Poll::Ready(Some(Ok(Frame::data(ev)))),
                        None => Poll::Ready(Some(Err(err))),
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Never claim the end before `poll_frame` has seen it: the end is
        // where the exchange is reported.
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        if self.done {
            SizeHint::with_exact(0)
        } else if self.sse || self.stage.is_some() {
            // An error event may be appended, or the body is rewritten: the length is not known.
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}
