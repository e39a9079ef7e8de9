//! `GET /internal/health` (the SPEC §4 status) and `GET
//! /internal/health/events` (transitions as server-sent events), served
//! through the management-route seam.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use llm_proxy_core::handler::{
    ApiBody, BoxError, BoxFuture, RouteHandler, json_error, json_response,
};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::events::HealthEvent;
use crate::monitor::HealthMonitor;
use crate::telemetry;

/// Route paths served by [`HealthRoutes`].
pub const ROUTES: &[&str] = &["/internal/health", "/internal/health/events"];

/// A comment line sent when no event was sent for this long, so proxies and
/// clients keep the stream open.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// Serves the health routes.
#[derive(Debug, Clone)]
pub struct HealthRoutes {
    monitor: Arc<HealthMonitor>,
}

impl HealthRoutes {
    /// Routes answering from `monitor`.
    pub fn new(monitor: Arc<HealthMonitor>) -> HealthRoutes {
        HealthRoutes { monitor }
    }
}

impl RouteHandler for HealthRoutes {
    fn handle(&self, request: Request<Bytes>) -> BoxFuture<'_, Response<ApiBody>> {
        Box::pin(async move {
            if request.method() != Method::GET {
                return json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET on health routes");
            }
            match request.uri().path() {
                "/internal/health" => match serde_json::to_vec(&self.monitor.report()) {
                    Ok(body) => json_response(StatusCode::OK, body),
                    Err(e) => json_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("cannot render the health report: {e}"),
                    ),
                },
                "/internal/health/events" => event_stream(&self.monitor),
                other => json_error(StatusCode::NOT_FOUND, &format!("no health route {other}")),
            }
        })
    }
}

struct StreamState {
    events: broadcast::Receiver<Arc<HealthEvent>>,
    stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
    keepalive: tokio::time::Interval,
    started: bool,
    ended: bool,
}

/// The SSE stream: a `: connected` comment (the subscription is live from
/// then on), then one message per transition. A client that falls more than
/// [`crate::events::EVENT_BUFFER`] events behind gets a `lagged` event and
/// is disconnected; the broadcast never waits for it. Ends when the proxy
/// shuts down.
fn event_stream(monitor: &HealthMonitor) -> Response<ApiBody> {
    let state = StreamState {
        events: monitor.subscribe(),
        stopped: Box::pin(monitor.stopped()),
        keepalive: tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE),
        started: false,
        ended: false,
    };
    let frames = stream::unfold(state, |mut st| async move {
        if st.ended {
            return None;
        }
        if !st.started {
            st.started = true;
            return Some((data(": connected\n\n".to_owned()), st));
        }
        let text = tokio::select! {
            _ = &mut st.stopped => return None,
            _ = st.keepalive.tick() => ": keep-alive\n\n".to_owned(),
            received = st.events.recv() => match received {
                Ok(event) => {
                    st.keepalive.reset();
                    event.to_sse()
                }
                Err(RecvError::Lagged(missed)) => {
                    metrics::counter!(telemetry::EVENT_CLIENTS_DROPPED_TOTAL).increment(1);
                    tracing::warn!(missed, "health event client fell behind; disconnecting it");
                    st.ended = true;
                    format!("event: lagged\ndata: {{\"missed\":{missed}}}\n\n")
                }
                Err(RecvError::Closed) => return None,
            },
        };
        Some((data(text), st))
    });
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn data(text: String) -> Result<Frame<Bytes>, BoxError> {
    Ok(Frame::data(Bytes::from(text)))
}
