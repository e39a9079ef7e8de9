//! `GET /v1/replacement/metrics` (SPEC §7), served through the
//! management-route seam. When replacement is off it answers the same shape
//! with `"enabled": false` and zero counts, never 404.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use llm_proxy_core::handler::{ApiBody, BoxFuture, RouteHandler, json_error, json_response};

use crate::metrics::ReplacementReport;
use crate::replacer::ModelReplacer;

/// Route paths served by [`ReplacementRoutes`].
pub const ROUTES: &[&str] = &["/v1/replacement/metrics"];

/// Serves the replacement metrics; `None` inside means replacement is off.
#[derive(Debug, Clone)]
pub struct ReplacementRoutes {
    replacer: Option<Arc<ModelReplacer>>,
}

impl ReplacementRoutes {
    /// Routes reporting on `replacer`.
    pub fn new(replacer: Arc<ModelReplacer>) -> ReplacementRoutes {
        ReplacementRoutes {
            replacer: Some(replacer),
        }
    }

    /// Routes that say replacement is off.
    pub fn disabled() -> ReplacementRoutes {
        ReplacementRoutes { replacer: None }
    }
}

impl RouteHandler for ReplacementRoutes {
    fn handle(&self, request: Request<Bytes>) -> BoxFuture<'_, Response<ApiBody>> {
        Box::pin(async move {
            if request.method() != Method::GET {
                return json_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "use GET on /v1/replacement/metrics",
                );
            }
            let report = match &self.replacer {
                Some(r) => r.report(),
                None => ReplacementReport::disabled(),
            };
            match serde_json::to_vec(&report) {
                Ok(body) => json_response(StatusCode::OK, body),
                Err(e) => json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("cannot render the replacement metrics: {e}"),
                ),
            }
        })
    }
}
