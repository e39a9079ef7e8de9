//! Request dispatch: LLM routes to the pipeline, management routes to their
//! handlers, and the edge errors (401, 404, 413, 429) in the route's style.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use llm_proxy_core::{ClientRequest, Frontend, Pipeline, telemetry};

use crate::auth::{AuthDecision, Authenticator};
use crate::config::ServerConfig;

pub use llm_proxy_core::handler::{
    ApiBody, BoxError, BoxFuture, RouteHandler, full, json_response,
};

/// Renders the Prometheus exposition text for `/metrics`.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// Everything the server dispatches to.
pub(crate) struct AppState {
    pub pipeline: Arc<Pipeline>,
    pub auth: Authenticator,
    pub config: ServerConfig,
    pub metrics: Option<MetricsRender>,
    pub management: Vec<(Method, String, Arc<dyn RouteHandler>)>,
}

/// An error in the route's protocol style (OpenAI style for non-LLM routes).
fn error(frontend: Option<Frontend>, status: StatusCode, message: &str) -> Response<ApiBody> {
    let frontend = frontend.unwrap_or(Frontend::OpenAiChat);
    json_response(status, frontend.error_body(status.as_u16(), message))
}

/// The route label for metrics: a fixed set, never the raw path.
fn route_label(path: &str, frontend: Option<Frontend>) -> &'static str {
    match frontend {
        Some(Frontend::OpenAiChat) => "chat_completions",
        Some(Frontend::AnthropicMessages) => "messages",
        Some(Frontend::OpenAiResponses) => "responses",
        None => match path {
            "/v1/models" => "models",
            "/healthz" => "healthz",
            "/metrics" => "metrics",
            p if p.starts_with("/v1/usage") => "usage",
            p if p.starts_with("/internal") => "internal",
            p if p.starts_with("/v1/replacement") => "replacement",
            _ => "other",
        },
    }
}

pub(crate) async fn dispatch(
    state: Arc<AppState>,
    request: Request<Incoming>,
    remote: SocketAddr,
) -> Result<Response<ApiBody>, Infallible> {
    let received = Instant::now();
    let received_at = SystemTime::now();
    let path = request.uri().path().to_owned();
    let frontend = Frontend::from_path(&path);
    let route = route_label(&path, frontend);
    let response = route_request(&state, request, remote, frontend, received, received_at).await;
    let status = response.status().as_u16();
    // Cached handles: registered once per label set, not per request.
    telemetry::counter(
        telemetry::HTTP_REQUESTS_TOTAL,
        [
            ("route", route.into()),
            ("status_class", telemetry::status_class(status).into()),
        ],
    )
    .increment(1);
    telemetry::histogram(
        telemetry::HTTP_RESPONSE_HEAD_SECONDS,
        [("route", route.into())],
    )
    .record(received.elapsed().as_secs_f64());
    Ok(response)
}

async fn route_request(
    state: &AppState,
    request: Request<Incoming>,
    remote: SocketAddr,
    frontend: Option<Frontend>,
    received: Instant,
    received_at: SystemTime,
) -> Response<ApiBody> {
    let path = request.uri().path();
    if path == "/healthz" {
        return json_response(StatusCode::OK, Bytes::from_static(br#"{"status":"ok"}"#));
    }
    let (mut parts, body) = request.into_parts();
    let proxy_user = match state.auth.check(&parts.headers, remote.ip()) {
        AuthDecision::Allowed(user) => {
            if user.is_some() {
                // The proxy key authenticated the client; it must not travel upstream.
                parts.headers.remove(http::header::AUTHORIZATION);
                parts.headers.remove("x-api-key");
            }
            user
        }
        AuthDecision::Denied => {
            let mut r = error(
                frontend,
                StatusCode::UNAUTHORIZED,
                "missing or invalid API key: send it as `Authorization: Bearer <key>` or `x-api-key: <key>`",
            );
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
            return r;
        }
        AuthDecision::LockedOut(wait) => {
            let mut r = error(
                frontend,
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed authentication attempts from this address; retry later",
            );
            let secs = wait.as_secs_f64().ceil().max(1.0).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                r.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
            return r;
        }
    };
    let method = parts.method.clone();
    if let Some(frontend) = frontend {
        if method != Method::POST {
            return error(
                Some(frontend),
                StatusCode::METHOD_NOT_ALLOWED,
                "use POST on this route",
            );
        }
        let body = match read_body(state, body).await {
            Ok(b) => b,
            Err(r) => return r.with_frontend(frontend),
        };
        let request = ClientRequest {
            frontend,
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            body,
            client_addr: Some(remote),
            proxy_user,
            received,
            received_at,
        };
        let response = state.pipeline.handle(request).await;
        return response.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync());
    }
    let path = parts.uri.path().to_owned();
    match (&method, path.as_str()) {
        (&Method::GET, "/v1/models") => {
            return json_response(StatusCode::OK, state.pipeline.models_json());
        }
        (&Method::GET, "/metrics") => {
            let text = state
                .metrics
                .as_ref()
                .map(|render| render())
                .unwrap_or_default();
            let mut r = Response::new(full(Bytes::from(text)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return r;
        }
        _ => {}
    }
    let handler = state
        .management
        .iter()
        .find(|(m, p, _)| *m == method && *p == path)
        .map(|(_, _, h)| h.clone());
    match handler {
        Some(handler) => {
            let body = match read_body(state, body).await {
                Ok(b) => b,
                Err(r) => return r.with_frontend(Frontend::OpenAiChat),
            };
            handler.handle(Request::from_parts(parts, body)).await
        }
        None if state.management.iter().any(|(_, p, _)| *p == path) => error(
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this route",
        ),
        None => error(
            None,
            StatusCode::NOT_FOUND,
            &format!("no route for {method} {path}"),
        ),
    }
}

/// Why a body could not be read; rendered once the route's style is known.
struct BodyError(StatusCode, String);

impl BodyError {
    fn with_frontend(self, frontend: Frontend) -> Response<ApiBody> {
        error(Some(frontend), self.0, &self.1)
    }
}

async fn read_body(state: &AppState, body: Incoming) -> Result<Bytes, BodyError> {
    let limit = state.config.max_request_body_bytes;
    let too_large = || {
        BodyError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds max_request_body_bytes ({limit} bytes)"),
        )
    };
    if body.size_hint().lower() > limit {
        return Err(too_large());
    }
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    let timeout = ServerConfig::secs(state.config.body_read_timeout_seconds);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(BodyError(
            StatusCode::REQUEST_TIMEOUT,
            format!("request body not received within {timeout:?}"),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(BodyError(
            StatusCode::BAD_REQUEST,
            format!("could not read request body: {e}"),
        )),
    }
}
