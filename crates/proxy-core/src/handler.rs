//! The management-route seam: a handler answers one HTTP request on a route
//! the API server does not know itself (`/v1/usage/*`, `/internal/health`,
//! `/v1/replacement/metrics`). Subsystem crates implement it; `api` serves it
//! behind the same authentication as every other route.

use std::error::Error as StdError;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

/// Error type of response bodies.
pub type BoxError = Box<dyn StdError + Send + Sync>;
/// The body of every response the server sends.
pub type ApiBody = UnsyncBoxBody<Bytes, BoxError>;
/// A boxed future returned by route handlers.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Answers requests on one or more management routes. Gets the request with
/// its body read; may answer with a streaming body.
pub trait RouteHandler: Send + Sync + 'static {
    /// Serves one request.
    fn handle(&self, request: Request<Bytes>) -> BoxFuture<'_, Response<ApiBody>>;
}

/// A full body, boxed.
pub fn full(bytes: impl Into<Bytes>) -> ApiBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A complete JSON response.
pub fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<ApiBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A JSON error response in the OpenAI style used by management routes.
pub fn json_error(status: StatusCode, message: &str) -> Response<ApiBody> {
    json_response(
        status,
        crate::protocol::Frontend::OpenAiChat.error_body(status.as_u16(), message),
    )
}
