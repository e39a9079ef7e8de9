//! The in-process `mock` backend: the deterministic mock model of
//! [`crate::mock`] answered without a network hop, with the same per-request
//! knobs (delays, chunk count, faults) as the testkit mock upstream.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::sync::mpsc;

use super::{Backend, BackendRequest, BackendResponse, BoxFuture};
use crate::config::BackendType;
use crate::error::{UpstreamError, UpstreamErrorKind};
use crate::mock::{self, MockFault, MockOptions, MockReply};

/// The built-in mock backend.
pub struct MockBackend {
    name: Arc<str>,
}

impl MockBackend {
    /// A mock backend called `name`.
    pub fn new(name: &str) -> MockBackend {
        MockBackend {
            name: Arc::from(name),
        }
    }

    fn error(&self, kind: UpstreamErrorKind, detail: impl Into<String>) -> UpstreamError {
        UpstreamError::new(self.name.to_string(), kind, detail)
    }
}

impl Backend for MockBackend {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn backend_type(&self) -> BackendType {
        BackendType::Mock
    }

    fn uri_for(&self, request: &BackendRequest) -> Uri {
        format!(
            "mock://{}/v1{}",
            self.name,
            request.frontend.upstream_path()
        )
        .parse()
        .unwrap_or_else(|_| Uri::from_static("/"))
    }

    fn authorize(&self, _headers: &mut HeaderMap) {}

    fn send(
        &self,
        request: BackendRequest,
    ) -> BoxFuture<'_, Result<BackendResponse, UpstreamError>> {
        Box::pin(async move {
            let json_error = |status: u16, message: &str| BackendResponse {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                headers: json_headers(),
                body: Full::new(request.frontend.error_body(status, message))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            };
            let value: serde_json::Value = match serde_json::from_slice(&request.body) {
                Ok(v) => v,
                Err(e) => return Ok(json_error(400, &format!("mock: invalid JSON: {e}"))),
            };
            let model = value
                .get("model")
                .and_then(|m| m.as_str())
                .unwrap_or_default();
            let options = match MockOptions::from_request(&request.headers, model) {
                Ok(o) => o,
                Err(e) => return Ok(json_error(400, &e.to_string())),
            };
            if !options.first_token_delay.is_zero() {
                tokio::time::sleep(options.first_token_delay).await;
            }
            match options.fault {
                Some(MockFault::NeverAnswer) => std::future::pending::<()>().await,
                Some(MockFault::MalformedJson) => {
                    return Ok(BackendResponse {
                        status: StatusCode::OK,
                        headers: json_headers(),
                        body: Full::new(Bytes::from_static(b"{\"id\": \"broken"))
                            .map_err(|never| match never {})
                            .boxed_unsync(),
                    });
                }
                _ => {}
            }
            let reply = match mock::reply(request.frontend, &value, &options) {
                Ok(r) => r,
                Err(e) => return Ok(json_error(400, &e.to_string())),
            };
            match reply {
                MockReply::Json { status, body } => {
                    if options.fault == Some(MockFault::ResetMidStream) {
                        return Err(
                            self.error(UpstreamErrorKind::Protocol, "mock: connection reset")
                        );
                    }
                    Ok(BackendResponse {
                        status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                        headers: json_headers(),
                        body: Full::new(body)
                            .map_err(|never| match never {})
                            .boxed_unsync(),
                    })
                }
                MockReply::Stream { events } => {
                    let reset_after = (options.fault == Some(MockFault::ResetMidStream))
                        .then_some(events.len() / 2);
                    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, UpstreamError>>(4);
                    let gap = options.inter_chunk_delay;
                    let reset_error = self.error(
                        UpstreamErrorKind::Protocol,
                        "mock: connection reset mid-stream",
                    );
                    tokio::spawn(feed(events, gap, reset_after, reset_error, tx));
                    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                        rx.recv().await.map(|item| (item, rx))
                    });
                    let mut headers = HeaderMap::new();
                    headers.insert(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("text/event-stream"),
                    );
                    headers.insert(
                        http::header::CACHE_CONTROL,
                        HeaderValue::from_static("no-cache"),
                    );
                    Ok(BackendResponse {
                        status: StatusCode::OK,
                        headers,
                        body: StreamBody::new(stream).boxed_unsync(),
                    })
                }
            }
        })
    }
}

async fn feed(
    events: Vec<Bytes>,
    gap: Duration,
    reset_after: Option<usize>,
    reset_error: UpstreamError,
    tx: mpsc::Sender<Result<Frame<Bytes>, UpstreamError>>,
) {
    for (i, event) in events.into_iter().enumerate() {
        if reset_after == Some(i) {
            let _ = tx.send(Err(reset_error)).await;
            return;
        }
        if i > 0 && !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        if tx.send(Ok(Frame::data(event))).await.is_err() {
            return; // receiver gone: the client left
        }
    }
}

fn json_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h
}
