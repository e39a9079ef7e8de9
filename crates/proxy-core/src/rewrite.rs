//! The route-rewriter seam: a chance to send a request somewhere other than
//! where the client asked (random model replacement implements it).

use http::HeaderMap;

use crate::protocol::Frontend;
use crate::routing::Target;

/// What a rewriter sees of a request.
#[derive(Debug)]
pub struct RewriteRequest<'a> {
    /// Session identity.
    pub session_id: &'a str,
    /// Client protocol.
    pub frontend: Frontend,
    /// The model as the client sent it.
    pub requested_model: &'a str,
    /// The first target of the resolved plan.
    pub target: &'a Target,
    /// Client request headers (e.g. `X-Disable-Replacement`).
    pub headers: &'a HeaderMap,
}

/// May replace the target of a request. Runs on the request path: keep it cheap.
pub trait RouteRewriter: Send + Sync + 'static {
    /// `Some(target)` to serve this request from `target` instead.
    fn rewrite(&self, request: &RewriteRequest<'_>) -> Option<Target>;
}
