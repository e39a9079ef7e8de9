//! `/v1/usage/stats`, `/v1/usage/recent` and `/v1/usage/export`, served
//! through the management-route seam. Queries run on blocking threads; the
//! export streams records as the store yields them, never building the whole
//! answer in memory.

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use llm_proxy_core::handler::{
    ApiBody, BoxError, BoxFuture, RouteHandler, json_error, json_response,
};

use crate::error::UsageError;
use crate::query::{ExportFormat, UsageQuery};
use crate::record::UsageRecord;
use crate::time::{format_rfc3339, system_time_us};
use crate::tracker::UsageQueries;

/// Route paths served by [`UsageRoutes`].
pub const ROUTES: &[&str] = &["/v1/usage/stats", "/v1/usage/recent", "/v1/usage/export"];

/// Serves the usage routes; `None` inside means usage tracking is disabled.
#[derive(Debug, Clone)]
pub struct UsageRoutes {
    queries: Option<UsageQueries>,
}

impl UsageRoutes {
    /// Routes answering from `queries`.
    pub fn new(queries: UsageQueries) -> UsageRoutes {
        UsageRoutes {
            queries: Some(queries),
        }
    }

    /// Routes that say usage tracking is off.
    pub fn disabled() -> UsageRoutes {
        UsageRoutes { queries: None }
    }
}

impl RouteHandler for UsageRoutes {
    fn handle(&self, request: Request<Bytes>) -> BoxFuture<'_, Response<ApiBody>> {
        Box::pin(async move {
            if request.method() != Method::GET {
                return json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET on usage routes");
            }
            let Some(queries) = self.queries.clone() else {
                return json_error(
                    StatusCode::NOT_FOUND,
                    "usage tracking is disabled (usage_tracking.enabled = false)",
                );
            };
            let query = match UsageQuery::parse(request.uri().query()) {
                Ok(q) => q,
                Err(e) => return json_error(StatusCode::BAD_REQUEST, &e.to_string()),
            };
            match request.uri().path() {
                "/v1/usage/stats" => {
                    blocking_json(move || {
                        let stats = queries.stats(&query)?;
                        Ok(serde_json::to_vec(&stats)?)
                    })
                    .await
                }
                "/v1/usage/recent" => {
                    blocking_json(move || {
                        let page = queries.recent(&query)?;
                        Ok(serde_json::to_vec(&serde_json::json!({
                            "records": page.records,
                            "total": page.total,
                            "limit": query.limit,
                            "offset": query.offset,
                        }))?)
                    })
                    .await
                }
                "/v1/usage/export" => export(queries, query).await,
                other => json_error(StatusCode::NOT_FOUND, &format!("no usage route {other}")),
            }
        })
    }
}

/// Runs a query on a blocking thread and answers with its JSON.
async fn blocking_json(
    f: impl FnOnce() -> Result<Vec<u8>, BoxError> + Send + 'static,
) -> Response<ApiBody> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(body)) => json_response(StatusCode::OK, body),
        Ok(Err(e)) => query_failed(&*e),
        Err(e) => query_failed(&e),
    }
}

/// The answer to a failed query: 503 with `Retry-After` when the store will
/// be able to answer soon ([`UsageError::Unavailable`]), else 500.
fn query_failed(e: &(dyn std::error::Error + 'static)) -> Response<ApiBody> {
    let message = format!("usage query failed: {e}");
    match e.downcast_ref::<UsageError>() {
        Some(UsageError::Unavailable {
            retry_after_secs, ..
        }) => {
            tracing::warn!(error = %e, "usage query unavailable");
            let mut response = json_error(StatusCode::SERVICE_UNAVAILABLE, &message);
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(*retry_after_secs),
            );
            response
        }
        _ => {
            tracing::error!(error = %e, "usage query failed");
            json_error(StatusCode::INTERNAL_SERVER_ERROR, &message)
        }
    }
}

/// Records are batched into body frames of about this size.
const EXPORT_FRAME_BYTES: usize = 64 * 1024;

/// Columns of the CSV export, in order.
const CSV_COLUMNS: &[&str] = &[
    "id",
    "timestamp",
    "session_id",
    "turn_number",
    "backend_type",
    "backend",
    "model",
    "requested_model",
    "frontend_type",
    "streaming",
    "verbatim_prompt_tokens",
    "mutated_prompt_tokens",
    "verbatim_completion_tokens",
    "mutated_completion_tokens",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "backend_prompt_tokens",
    "backend_completion_tokens",
    "backend_total_tokens",
    "backend_cached_tokens",
    "backend_cache_creation_tokens",
    "backend_reasoning_tokens",
    "backend_cost",
    "token_source",
    "cost_usd",
    "cost_source",
    "http_status_code",
    "completion_outcome",
    "incomplete_reason",
    "tool_call_count",
    "tool_names",
    "ttft_ms",
    "total_duration_ms",
    "proxy_overhead_ms",
    "completion_tokens_per_second",
    "user_agent",
    "proxy_user",
    "call_purpose",
    "replaced",
];

/// Streams the matching records in `query.format`.
///
/// The status waits for the first frame (or the end): an export that fails
/// before sending anything (deferred records still being indexed, the
/// database unreachable) answers with an error status, not a broken body.
async fn export(queries: UsageQueries, query: UsageQuery) -> Response<ApiBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(8);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), UsageError>>();
    let format = query.format;
    let task = tokio::task::spawn_blocking(move || {
        let ready = std::cell::Cell::new(Some(ready_tx));
        let mut buf = BytesMut::with_capacity(EXPORT_FRAME_BYTES * 2);
        let send = |buf: &mut BytesMut| -> bool {
            if let Some(ready) = ready.take() {
                let _ = ready.send(Ok(()));
            }
            let frame = buf.split().freeze();
            frame.is_empty() || tx.blocking_send(Ok(Frame::data(frame))).is_ok()
        };
        match format {
            ExportFormat::Json => {
                let filters = serde_json::to_string(&query.filter).unwrap_or_else(|_| "{}".into());
                buf.extend_from_slice(
                    format!(
                        "{{\"version\":1,\"exported_at\":\"{}\",\"filters\":{filters},\"records\":[",
                        format_rfc3339(system_time_us(std::time::SystemTime::now()))
                    )
                    .as_bytes(),
                );
            }
            ExportFormat::Csv => {
                buf.extend_from_slice(CSV_COLUMNS.join(",").as_bytes());
                buf.extend_from_slice(b"\r\n");
            }
            ExportFormat::Jsonl => {}
        }
        let mut first = true;
        let result = queries.export(&query, &mut |record| {
            match format {
                ExportFormat::Json => {
                    if !first {
                        buf.extend_from_slice(b",");
                    }
                    write_json(&mut buf, record);
                }
                ExportFormat::Jsonl => {
                    write_json(&mut buf, record);
                    buf.extend_from_slice(b"\n");
                }
                ExportFormat::Csv => write_csv(&mut buf, record),
            }
            first = false;
            buf.len() < EXPORT_FRAME_BYTES || send(&mut buf)
        });
        match result {
            Ok(count) => {
                if format == ExportFormat::Json {
                    buf.extend_from_slice(format!("],\"record_count\":{count}}}").as_bytes());
                }
                send(&mut buf);
            }
            Err(e) => match ready.take() {
                Some(ready) => {
                    let _ = ready.send(Err(e));
                }
                None => {
                    // Headers are gone already: break the body so the client
                    // sees a failure.
                    tracing::error!(error = %e, "usage export failed");
                    send(&mut buf);
                    let _ = tx.blocking_send(Err(Box::new(e)));
                }
            },
        }
    });
    match ready_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return query_failed(&e),
        // The task ended without a word: it panicked.
        Err(_) => {
            return match task.await {
                Err(e) => query_failed(&e),
                Ok(()) => query_failed(&UsageError::Encoding("export ended early".into())),
            };
        }
    }
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let mut response = Response::new(StreamBody::new(Box::pin(stream)).boxed_unsync());
    let content_type = match format {
        ExportFormat::Json => "application/json",
        ExportFormat::Jsonl => "application/x-ndjson",
        ExportFormat::Csv => "text/csv; charset=utf-8",
    };
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    response
}

fn write_json(buf: &mut BytesMut, record: &UsageRecord) {
    match serde_json::to_vec(record) {
        Ok(v) => buf.extend_from_slice(&v),
        Err(_) => buf.extend_from_slice(b"null"),
    }
}

fn write_csv(buf: &mut BytesMut, r: &UsageRecord) {
    fn opt<T: ToString>(v: Option<T>) -> String {
        v.map(|v| v.to_string()).unwrap_or_default()
    }
    let u = r.backend_reported_usage.clone().unwrap_or_default();
    let fields: Vec<String> = vec![
        r.id.clone(),
        r.timestamp.clone(),
        r.session_id.clone(),
        r.turn_number.to_string(),
        r.backend_type.clone(),
        r.backend.clone(),
        r.model.clone(),
        r.requested_model.clone(),
        r.frontend_type.clone(),
        r.streaming.to_string(),
        opt(r.verbatim_prompt_tokens),
        opt(r.mutated_prompt_tokens),
        opt(r.verbatim_completion_tokens),
        opt(r.mutated_completion_tokens),
        r.prompt_tokens.to_string(),
        r.completion_tokens.to_string(),
        r.total_tokens.to_string(),
        opt(u.prompt_tokens),
        opt(u.completion_tokens),
        opt(u.total_tokens),
        opt(u.cached_tokens),
        opt(u.cache_creation_tokens),
        opt(u.reasoning_tokens),
        opt(u.cost),
        r.token_source.as_str().to_owned(),
        opt(r.cost_usd),
        r.cost_source.as_str().to_owned(),
        r.http_status_code.to_string(),
        r.completion_outcome.as_str().to_owned(),
        r.incomplete_reason.clone().unwrap_or_default(),
        r.tool_call_count.to_string(),
        r.tool_names.join(";"),
        opt(r.ttft_ms),
        r.total_duration_ms.to_string(),
        r.proxy_overhead_ms.to_string(),
        opt(r.completion_tokens_per_second),
        r.user_agent.clone().unwrap_or_default(),
        r.proxy_user.clone().unwrap_or_default(),
        r.call_purpose.clone().unwrap_or_default(),
        r.replaced.to_string(),
    ];
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            buf.extend_from_slice(b",");
        }
        if f.contains([',', '"', '\n', '\r']) {
            buf.extend_from_slice(b"\"");
            buf.extend_from_slice(f.replace('"', "\"\"").as_bytes());
            buf.extend_from_slice(b"\"");
        } else {
            buf.extend_from_slice(f.as_bytes());
        }
    }
    buf.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::test_store::queries_over_unindexed_store;

    async fn get(routes: &UsageRoutes, uri: &str) -> (StatusCode, http::HeaderMap, String) {
        let request = Request::get(uri).body(Bytes::new()).unwrap();
        let response = routes.handle(request).await;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into(),
        )
    }

    /// Deferred records not indexed in time: `recent` and every export
    /// format answer 503 with `Retry-After` and say why (an export never
    /// starts a 200 body it then has to break); stats answer.
    #[tokio::test]
    async fn unindexed_records_answer_503_with_retry_after() {
        let routes = UsageRoutes::new(queries_over_unindexed_store(
            std::time::Duration::from_millis(20),
        ));
        for uri in [
            "/v1/usage/recent",
            "/v1/usage/export?format=json",
            "/v1/usage/export?format=jsonl",
            "/v1/usage/export?format=csv",
        ] {
            let (status, headers, body) = get(&routes, uri).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}: {body}");
            assert_eq!(headers[http::header::RETRY_AFTER], "10", "{uri}");
            assert!(body.contains("still being indexed"), "{uri}: {body}");
        }
        let (status, _, body) = get(&routes, "/v1/usage/stats").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}
