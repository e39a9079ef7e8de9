//! The request pipeline: parse what routing needs, pick targets (rewriter,
//! health), try them in order with failover, and hand back a streaming
//! response. Observers see every leg.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};

use crate::backend::{
    self, Backend, BackendRequest, BackendResponse, forwardable_request_headers,
    returnable_response_headers,
};
use crate::body::{ProxyBody, Stage, Tracker};
use crate::config::RoutingConfig;
use crate::error::{ConfigError, ProxyError, UpstreamError, UpstreamErrorKind};
use crate::health::{AlwaysAvailable, AttemptOutcome, EndpointHealth};
use crate::observer::{AttemptInfo, Completion, ExchangeContext, ExchangeObserver, ObserverSet};
use crate::protocol::{Frontend, is_event_stream};
use crate::request::RequestFacts;
use crate::rewrite::{RewriteRequest, RouteRewriter};
use crate::routing::{RoutePlan, Router, Target};
use crate::telemetry;
use crate::translate::{PreparedRequest, TranslateError, Translation};

/// An attempt whose outcome health has not been told yet; dropping it while
/// `pending` (the client went away mid-attempt) reports `ClientGone`.
struct Admission<'a> {
    health: &'a dyn EndpointHealth,
    backend: &'a str,
    pending: bool,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if self.pending {
            self.health
                .record_outcome(self.backend, AttemptOutcome::ClientGone);
        }
    }
}

/// Header carrying an explicit session id.
pub const SESSION_HEADER: &str = "x-session-id";

/// A client request on an LLM route, body already read.
#[derive(Debug)]
pub struct ClientRequest {
    /// Protocol of the route.
    pub frontend: Frontend,
    /// Request method.
    pub method: Method,
    /// Request URI (path and query).
    pub uri: Uri,
    /// Request headers as received.
    pub headers: HeaderMap,
    /// Request body.
    pub body: Bytes,
    /// Client socket address.
    pub client_addr: Option<SocketAddr>,
    /// Label of the proxy key the client authenticated with, if auth is on.
    pub proxy_user: Option<String>,
    /// When the request head arrived.
    pub received: Instant,
    /// Wall-clock time of arrival.
    pub received_at: SystemTime,
}

/// The running pipeline. Cheap to share behind an `Arc`.
pub struct Pipeline {
    router: Router,
    backends: HashMap<Arc<str>, Arc<dyn Backend>>,
    config: RoutingConfig,
    observers: ObserverSet,
    health: Arc<dyn EndpointHealth>,
    rewriter: Option<Arc<dyn RouteRewriter>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("router", &self.router)
            .field("observers", &self.observers)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Validates `config` and builds every backend client.
    pub fn new(config: RoutingConfig) -> Result<Pipeline, ConfigError> {
        config.validate()?;
        let mut backends = HashMap::new();
        for (name, backend_config) in &config.backends {
            let backend = backend::build(name, backend_config, &config.upstream)?;
            backends.insert(Arc::from(name.as_str()), backend);
        }
        Ok(Pipeline {
            router: Router::new(&config),
            backends,
            config,
            observers: ObserverSet::default(),
            health: Arc::new(AlwaysAvailable),
            rewriter: None,
        })
    }

    /// Observers called at every leg.
    pub fn with_observers(mut self, observers: ObserverSet) -> Pipeline {
        self.observers = observers;
        self
    }

    /// The health view consulted by routing.
    pub fn with_health(mut self, health: Arc<dyn EndpointHealth>) -> Pipeline {
        self.health = health;
        self
    }

    /// A rewriter that may change the target of a request.
    pub fn with_rewriter(mut self, rewriter: Arc<dyn RouteRewriter>) -> Pipeline {
        self.rewriter = Some(rewriter);
        self
    }

    /// The backend called `name`.
    pub fn backend(&self, name: &str) -> Option<&Arc<dyn Backend>> {
        self.backends.get(name)
    }

    /// The routing configuration in force.
    pub fn config(&self) -> &RoutingConfig {
        &self.config
    }

    /// `GET /v1/models`: every routable `backend:model`, plus failover route names.
    pub fn models_json(&self) -> Bytes {
        let mut data = Vec::new();
        for (name, b) in &self.config.backends {
            let models: Vec<String> =
                if b.models.is_empty() && b.backend_type == crate::config::BackendType::Mock {
                    crate::mock::MOCK_MODELS
                        .iter()
                        .map(|m| (*m).to_owned())
                        .collect()
                } else {
                    b.models.clone()
                };
            for m in models {
                data.push(serde_json::json!({
                    "id": format!("{name}:{m}"), "object": "model", "created": 0, "owned_by": name,
                }));
            }
        }
        for (alias, _) in self.router.routes() {
            data.push(serde_json::json!({
                "id": alias, "object": "model", "created": 0, "owned_by": "llm-proxy",
            }));
        }
        Bytes::from(serde_json::json!({"object": "list", "data": data}).to_string())
    }

    /// Serves one client request. Never fails: errors become JSON responses
    /// in the route's protocol style.
    pub async fn handle(&self, request: ClientRequest) -> Response<ProxyBody> {
        let facts = RequestFacts::parse(&request.body);
        // Time-ordered (UUIDv7: milliseconds, then random bits): stores that
        // index records by id append instead of inserting at random places.
        // `NoContext`: no process-wide counter (and lock) per request; ids
        // made in the same millisecond differ by their random bits.
        let now = uuid::Timestamp::now(uuid::NoContext);
        let request_id: Arc<str> = Arc::from(uuid::Uuid::new_v7(now).simple().to_string());
        let session_id = session_id(&request, facts.as_ref().ok(), &request_id);
        let ctx = Arc::new(ExchangeContext {
            request_id,
            frontend: request.frontend,
            received_at: request.received_at,
            started: request.received,
            client_addr: request.client_addr,
            user_agent: request
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            proxy_user: request.proxy_user.clone(),
            session_id,
            requested_model: facts.as_ref().map(|f| f.model.clone()).unwrap_or_default(),
            streaming: facts.as_ref().is_ok_and(|f| f.stream),
        });
        self.observers.on_client_request(
            &ctx,
            &request.method,
            &request.uri,
            &request.headers,
            &request.body,
        );
        // Dropped with this future if the client leaves early: then it
        // reports the exchange as abandoned.
        let mut tracker = Tracker::new(ctx.clone(), self.observers.clone(), self.health.clone());
        let facts = match facts {
            Ok(f) => f,
            Err(e) => return error_response(tracker, &e),
        };
        let plan = match self.plan(&request, &facts, &ctx) {
            Ok(p) => p,
            Err(e) => return error_response(tracker, &e),
        };
        let (plan, mut prepared) = match self.translatable(&request, plan) {
            Ok(p) => p,
            Err(e) => return error_response(tracker, &ProxyError::BadRequest(e.to_string())),
        };
        let mut last_error: Option<UpstreamError> = None;
        let count = plan.len();
        for (index, (target, replaced, backend, translation)) in plan.into_iter().enumerate() {
            let has_next = index + 1 < count;
            if !self.health.try_admit(&target.backend) && has_next {
                tracing::debug!(backend = %target.backend, "backend refused admission; trying next target");
                continue;
            }
            let backend_stream_usage = self
                .config
                .backends
                .get(&*target.backend)
                .is_some_and(|b| b.request_stream_usage);
            // Reports `ClientGone` if this future is dropped before the
            // attempt's outcome is recorded, so a half-open probe slot taken
            // by `try_admit` is always given back.
            let mut admission = Admission {
                health: self.health.as_ref(),
                backend: &target.backend,
                pending: true,
            };
            // Cross-protocol targets get the request translated, written for
            // this target only once admission let it through.
            let translated = match (translation, prepared.as_mut()) {
                (Some(_), Some(p)) => match p.body_for(&target.model, backend_stream_usage) {
                    Ok(body) => Some(body),
                    Err(e) => {
                        // Encoding typed data does not fail; were it to, the
                        // target is skipped (dropping `admission` gives its slot back).
                        tracing::warn!(backend = %target.backend, error = %e, "cannot encode the translated request");
                        continue;
                    }
                },
                _ => None,
            };
            tracker.attempts += 1;
            let request_usage = request.frontend == Frontend::OpenAiChat
                && translation.is_none()
                && facts.stream
                && !facts.include_usage
                && backend_stream_usage;
            let attempt = AttemptInfo {
                attempt: tracker.attempts,
                backend: target.backend.clone(),
                backend_type: backend.backend_type(),
                model: target.model.clone(),
                replaced,
                stream_usage_requested: request_usage,
            };
            let mut headers = forwardable_request_headers(&request.headers);
            if translation == Some(Translation::AnthropicToChat) {
                headers.remove("anthropic-version");
                headers.remove("anthropic-beta");
            }
            backend.authorize(&mut headers);
            let backend_request = BackendRequest {
                frontend: translation.map_or(request.frontend, Translation::backend),
                // A query string belongs to the client's protocol (the
                // Anthropic SDK's `?beta=true`): not sent across protocols.
                query: if translation.is_some() {
                    None
                } else {
                    request.uri.query().map(str::to_owned)
                },
                headers,
                body: match translated {
                    Some(body) => body,
                    None => facts.rewrite(&request.body, &target.model, request_usage),
                },
            };
            let uri = backend.uri_for(&backend_request);
            self.observers.on_backend_request(
                &ctx,
                &attempt,
                &uri,
                &backend_request.headers,
                &backend_request.body,
            );
            let sent = Instant::now();
            let mut result = backend.send(backend_request).await;
            let mut stage: Option<Stage> = None;
            let mut client_status: Option<StatusCode> = None;
            if let (Ok(response), Some(tr)) = (&mut result, translation) {
                self.observers.on_backend_response_head(
                    &ctx,
                    &attempt,
                    response.status,
                    &response.headers,
                    Instant::now(),
                );
                let status = response.status;
                if is_event_stream(&response.headers) && status.is_success() {
                    stage = Some(Stage::Transcode(Box::new(tr.stream(facts.include_usage))));
                } else {
                    let placeholder = BackendResponse {
                        status,
                        headers: HeaderMap::new(),
                        body: Full::new(Bytes::new())
                            .map_err(|never| match never {})
                            .boxed_unsync(),
                    };
                    let upstream = std::mem::replace(response, placeholder);
                    result = self
                        .translate_whole(&ctx, &attempt, tr, upstream)
                        .await
                        .map(|(response, body, status)| {
                            stage = Some(Stage::Replace(Some(body)));
                            client_status = Some(status);
                            response
                        });
                }
            } else if let Ok(response) = result {
                self.observers.on_backend_response_head(
                    &ctx,
                    &attempt,
                    response.status,
                    &response.headers,
                    Instant::now(),
                );
                result =
                    if facts.stream || !response.status.is_success() || !is_json(&response.headers)
                    {
                        Ok(response)
                    } else {
                        self.buffer_json(&ctx, &attempt, response).await
                    };
            }
            match result {
                Err(err) => {
                    let now = Instant::now();
                    tracker.upstream_time += now.saturating_duration_since(sent);
                    self.observers
                        .on_backend_response_end(&ctx, &attempt, Some(&err), now);
                    admission.pending = false;
                    self.health
                        .record_outcome(&target.backend, AttemptOutcome::Error(err.kind));
                    metrics::counter!(telemetry::UPSTREAM_ATTEMPTS_TOTAL, "backend" => target.backend.to_string(), "result" => err.kind.as_str()).increment(1);
                    tracing::warn!(backend = %target.backend, error = %err, has_next, "upstream attempt failed");
                    if has_next {
                        metrics::counter!(telemetry::FAILOVERS_TOTAL, "from_backend" => target.backend.to_string()).increment(1);
                    }
                    last_error = Some(err);
                }
                Ok(response) => {
                    let status = response.status.as_u16();
                    let retryable = status >= 500 || status == 429;
                    let result = match status {
                        429 => "status_429",
                        500..=599 => "status_5xx",
                        _ => "ok",
                    };
                    // A cached handle (see telemetry): registered once, not per request.
                    telemetry::counter(
                        telemetry::UPSTREAM_ATTEMPTS_TOTAL,
                        [
                            ("backend", (&target.backend).into()),
                            ("result", result.into()),
                        ],
                    )
                    .increment(1);
                    if retryable && has_next {
                        let retry_after = retry_after(&response.headers);
                        self.drain_failed(&ctx, &attempt, response).await;
                        tracker.upstream_time += Instant::now().saturating_duration_since(sent);
                        admission.pending = false;
                        self.health.record_outcome(
                            &target.backend,
                            AttemptOutcome::Status {
                                status,
                                retry_after,
                            },
                        );
                        metrics::counter!(telemetry::FAILOVERS_TOTAL, "from_backend" => target.backend.to_string()).increment(1);
                        tracing::warn!(backend = %target.backend, status, "upstream answered with a retryable status; trying next target");
                        last_error = Some(UpstreamError::new(
                            target.backend.to_string(),
                            UpstreamErrorKind::InvalidResponse,
                            format!("answered HTTP {status}"),
                        ));
                        continue;
                    }
                    tracker.served_by = Some(attempt);
                    tracker.sent_at = Some(sent);
                    // From here the tracker reports the outcome (at the body's end).
                    admission.pending = false;
                    if translation.is_some() {
                        return self.forward_translated(tracker, response, stage, client_status);
                    }
                    return self.forward(tracker, response);
                }
            }
        }
        let err = match last_error {
            Some(e) => ProxyError::Upstream(e),
            None => ProxyError::BadRequest("no backend could be tried for this model".into()),
        };
        error_response(tracker, &err)
    }

    /// The plan without the targets this request cannot be translated for,
    /// each with its backend and translation, plus the request converted
    /// once for the cross-protocol targets. Deciding this before the first
    /// attempt keeps failover honest: "is there a next target" counts only
    /// targets that will be tried. When none is left, the first refusal.
    #[expect(clippy::type_complexity, reason = "a private plan tuple")]
    fn translatable(
        &self,
        request: &ClientRequest,
        plan: Vec<(Target, bool)>,
    ) -> Result<
        (
            Vec<(Target, bool, &Arc<dyn Backend>, Option<Translation>)>,
            Option<PreparedRequest>,
        ),
        TranslateError,
    > {
        let mut prepared: Option<Result<PreparedRequest, TranslateError>> = None;
        let mut kept = Vec::with_capacity(plan.len());
        for (target, replaced) in plan {
            let Some(backend) = self.backends.get(&target.backend) else {
                continue;
            };
            // plan() kept only targets that have a translation.
            let translation = Translation::between(request.frontend, backend.backend_type())
                .ok()
                .flatten();
            if let Some(tr) = translation {
                // A client protocol has one cross-protocol direction: converted once.
                let p = prepared.get_or_insert_with(|| tr.prepare(&request.body));
                if let Err(e) = p {
                    tracing::debug!(backend = %target.backend, error = %e, "request cannot be translated for this target");
                    continue;
                }
            }
            kept.push((target, replaced, backend, translation));
        }
        match prepared {
            Some(Err(e)) if kept.is_empty() => Err(e),
            Some(Ok(p)) => Ok((kept, Some(p))),
            _ => Ok((kept, None)),
        }
    }

    /// The ordered targets for a request, each flagged when a rewriter chose it.
    fn plan(
        &self,
        request: &ClientRequest,
        facts: &RequestFacts,
        ctx: &ExchangeContext,
    ) -> Result<Vec<(Target, bool)>, ProxyError> {
        let RoutePlan { targets, .. } = self.router.plan(&facts.model)?;
        let mut planned: Vec<(Target, bool)> = targets.into_iter().map(|t| (t, false)).collect();
        if let (Some(rewriter), Some((first, _))) = (&self.rewriter, planned.first()) {
            let rewrite = RewriteRequest {
                session_id: &ctx.session_id,
                frontend: request.frontend,
                requested_model: &facts.model,
                target: first,
                headers: &request.headers,
            };
            if let Some(target) = rewriter.rewrite(&rewrite) {
                match self.router.backend(&target.backend) {
                    Some(backend) => {
                        // The replacement goes first; the original plan stays as fallback.
                        planned.insert(0, (Target::new(backend, target.model), true));
                    }
                    None => {
                        tracing::warn!(backend = %target.backend, "route rewriter chose an unknown backend; ignored")
                    }
                }
            }
        }
        // A target must speak the client's protocol or have a translation to it.
        let count = planned.len();
        let mut refusal: Option<TranslateError> = None;
        planned.retain(|(t, _)| {
            self.backends.get(&t.backend).is_some_and(|b| {
                match Translation::between(request.frontend, b.backend_type()) {
                    Ok(_) => true,
                    Err(e) => {
                        refusal.get_or_insert(e);
                        false
                    }
                }
            })
        });
        if planned.is_empty() {
            let kinds: Vec<String> = self
                .router
                .plan(&facts.model)?
                .targets
                .iter()
                .filter_map(|t| {
                    self.backends
                        .get(&t.backend)
                        .map(|b| format!("{} ({})", t.backend, b.backend_type()))
                })
                .collect();
            let why = refusal.map(|e| e.to_string()).unwrap_or_default();
            return Err(ProxyError::BadRequest(format!(
                "{} requests cannot be served by {}: {why}",
                request.frontend.describe(),
                kinds.join(", ")
            )));
        }
        if planned.len() < count {
            tracing::debug!(
                skipped = count - planned.len(),
                "skipped targets of another protocol"
            );
        }
        let available: Vec<(Target, bool)> = planned
            .iter()
            .filter(|(t, _)| self.health.is_available(&t.backend))
            .cloned()
            .collect();
        if available.is_empty() {
            tracing::warn!(
                model = %facts.model,
                "every target of this request is unhealthy; trying the original plan anyway"
            );
            return Ok(planned);
        }
        Ok(available)
    }

    /// Reads a complete (non-streaming) JSON answer and checks that it parses,
    /// so upstream garbage becomes a 502 (or a failover) instead of reaching
    /// the client. JSON answers arrive whole anyway: this costs no latency.
    async fn buffer_json(
        &self,
        ctx: &ExchangeContext,
        attempt: &AttemptInfo,
        response: BackendResponse,
    ) -> Result<BackendResponse, UpstreamError> {
        let BackendResponse {
            status,
            headers,
            body,
        } = response;
        let collected = collect(attempt, body).await?;
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&collected) {
            self.observers
                .on_backend_response_chunk(ctx, attempt, &collected, Instant::now());
            return Err(UpstreamError::new(
                attempt.backend.to_string(),
                UpstreamErrorKind::InvalidResponse,
                format!("upstream sent malformed JSON: {e}"),
            ));
        }
        Ok(BackendResponse {
            status,
            headers,
            body: Full::new(collected)
                .map_err(|never| match never {})
                .boxed_unsync(),
        })
    }

    /// Reads a whole translated-exchange answer (a JSON success, or an error
    /// of any content type) and translates it for the client. The returned
    /// response still carries the backend's bytes (for the backend leg); the
    /// client gets the returned body with the returned status.
    async fn translate_whole(
        &self,
        ctx: &ExchangeContext,
        attempt: &AttemptInfo,
        translation: Translation,
        response: BackendResponse,
    ) -> Result<(BackendResponse, Bytes, StatusCode), UpstreamError> {
        let status = response.status;
        let response = if status.is_success() {
            self.buffer_json(ctx, attempt, response).await?
        } else {
            let BackendResponse {
                status,
                headers,
                body,
            } = response;
            let collected = collect(attempt, body).await?;
            BackendResponse {
                status,
                headers,
                body: Full::new(collected)
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            }
        };
        let BackendResponse {
            status,
            headers,
            body,
        } = response;
        // Already buffered: this only takes the bytes back out.
        let collected = collect(attempt, body).await?;
        let (client_status, translated) = if status.is_success() {
            match translation.response(&collected) {
                Ok(b) => (status, b),
                Err(e) => {
                    self.observers.on_backend_response_chunk(
                        ctx,
                        attempt,
                        &collected,
                        Instant::now(),
                    );
                    return Err(UpstreamError::new(
                        attempt.backend.to_string(),
                        UpstreamErrorKind::InvalidResponse,
                        e.to_string(),
                    ));
                }
            }
        } else {
            let (s, b) = translation.error(status.as_u16(), &collected);
            (StatusCode::from_u16(s).unwrap_or(status), b)
        };
        let response = BackendResponse {
            status,
            headers,
            body: Full::new(collected)
                .map_err(|never| match never {})
                .boxed_unsync(),
        };
        Ok((response, translated, client_status))
    }

    /// Reads (and reports) the body of a response we are not forwarding.
    async fn drain_failed(
        &self,
        ctx: &ExchangeContext,
        attempt: &AttemptInfo,
        response: BackendResponse,
    ) {
        let mut body = response.body;
        let deadline = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                frame = body.frame() => match frame {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            self.observers.on_backend_response_chunk(ctx, attempt, data, Instant::now());
                        }
                    }
                    Some(Err(e)) => {
                        self.observers.on_backend_response_end(ctx, attempt, Some(&e), Instant::now());
                        return;
                    }
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        self.observers
            .on_backend_response_end(ctx, attempt, None, Instant::now());
    }

    fn forward(&self, tracker: Tracker, response: BackendResponse) -> Response<ProxyBody> {
        let BackendResponse {
            status,
            headers,
            body,
        } = response;
        let sse = is_event_stream(&headers);
        let headers = returnable_response_headers(&headers);
        respond(tracker, status, headers, |t| ProxyBody::new(body, t, sse))
    }

    /// [`Pipeline::forward`] for a translated exchange: the body passes
    /// through `stage`; a whole-body translation is JSON with `client_status`.
    fn forward_translated(
        &self,
        tracker: Tracker,
        response: BackendResponse,
        stage: Option<Stage>,
        client_status: Option<StatusCode>,
    ) -> Response<ProxyBody> {
        let BackendResponse {
            status,
            headers,
            body,
        } = response;
        let sse = matches!(stage, Some(Stage::Transcode(_)));
        let status = client_status.unwrap_or(status);
        let mut headers = returnable_response_headers(&headers);
        headers.remove(http::header::CONTENT_ENCODING);
        if !sse {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        respond(tracker, status, headers, |t| {
            ProxyBody::with_stage(body, t, sse, stage)
        })
    }
}

/// The response head goes to the observers; the body is built around the tracker.
fn respond(
    mut tracker: Tracker,
    status: StatusCode,
    mut headers: HeaderMap,
    body: impl FnOnce(Tracker) -> ProxyBody,
) -> Response<ProxyBody> {
    insert_request_id(&mut headers, &tracker.ctx.request_id);
    tracker.status = status.as_u16();
    tracker
        .observers
        .on_client_response_head(&tracker.ctx, status, &headers, Instant::now());
    let mut response = Response::new(body(tracker));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Reads a body whole, up to [`MAX_JSON_RESPONSE_BYTES`].
async fn collect(
    attempt: &AttemptInfo,
    mut body: crate::backend::UpstreamBody,
) -> Result<Bytes, UpstreamError> {
    let mut collected = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(data) = frame.data_ref() {
            if collected.len() + data.len() > MAX_JSON_RESPONSE_BYTES {
                return Err(UpstreamError::new(
                    attempt.backend.to_string(),
                    UpstreamErrorKind::InvalidResponse,
                    format!("response larger than {MAX_JSON_RESPONSE_BYTES} bytes"),
                ));
            }
            collected.extend_from_slice(data);
        }
    }
    Ok(collected.freeze())
}

/// Largest non-streaming JSON answer the proxy accepts from an upstream.
const MAX_JSON_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        })
}

fn insert_request_id(headers: &mut HeaderMap, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.insert("x-request-id", v);
    }
}

/// A JSON error response in the route's style; the exchange ends as failed.
fn error_response(mut tracker: Tracker, err: &ProxyError) -> Response<ProxyBody> {
    let status = err.status();
    let body = tracker.ctx.frontend.error_body(status, &err.to_string());
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    insert_request_id(&mut headers, &tracker.ctx.request_id);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    tracker.status = status.as_u16();
    tracker.clean_end = Completion::Failed;
    tracker.error = Some(err.to_string());
    tracing::info!(culprit = err.culprit(), status = status.as_u16(), error = %err, "request failed");
    tracker
        .observers
        .on_client_response_head(&tracker.ctx, status, &headers, Instant::now());
    let full = Full::new(body)
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(ProxyBody::new(full, tracker, false));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Session identity (SPEC §7): `x-session-id`, else the request's user field,
/// else a fingerprint of the conversation opening and the client credential.
fn session_id(
    request: &ClientRequest,
    facts: Option<&RequestFacts>,
    request_id: &Arc<str>,
) -> Arc<str> {
    if let Some(v) = request
        .headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        return Arc::from(v);
    }
    let Some(facts) = facts else {
        return request_id.clone();
    };
    if let Some(user) = &facts.user {
        return Arc::from(user.as_str());
    }
    let credential = backend::client_credential(&request.headers).unwrap_or("");
    match facts.conversation_fingerprint(&request.body, credential) {
        Some(fp) => Arc::from(format!("fp-{fp:016x}")),
        None => request_id.clone(),
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::config::{BackendConfig, BackendType};

    /// Refuses admission to `refused`; remembers every recorded outcome.
    struct Refusing {
        refused: &'static str,
        outcomes: Mutex<Vec<String>>,
    }

    impl EndpointHealth for Refusing {
        fn is_available(&self, _backend: &str) -> bool {
            true
        }
        fn try_admit(&self, backend: &str) -> bool {
            backend != self.refused
        }
        fn record_outcome(&self, backend: &str, _outcome: AttemptOutcome) {
            self.outcomes.lock().unwrap().push(backend.to_owned());
        }
    }

    #[tokio::test]
    async fn a_refused_target_is_still_tried_when_the_rest_cannot_translate() {
        // Nothing listens here: an attempt on `a` fails to connect.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", dead.local_addr().unwrap());
        drop(dead);
        let mut config = RoutingConfig {
            default_backend: "a".into(),
            ..RoutingConfig::default()
        };
        config.upstream.connect_timeout_seconds = 2.0;
        config.backends.insert(
            "a".into(),
            BackendConfig::new(BackendType::OpenAi).with_url(url.as_str()),
        );
        config.backends.insert(
            "b".into(),
            BackendConfig::new(BackendType::Anthropic).with_url(url.as_str()),
        );
        config
            .failover_routes
            .insert("m".into(), vec!["a:m".into(), "b:m".into()]);
        let health = Arc::new(Refusing {
            refused: "a",
            outcomes: Mutex::new(Vec::new()),
        });
        let pipeline = Pipeline::new(config).unwrap().with_health(health.clone());
        // `logprobs` cannot go to the Anthropic target `b`, so the refused
        // `a` is the last target and is tried rather than skipped.
        let body = r#"{"model":"m","logprobs":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let response = pipeline
            .handle(ClientRequest {
                frontend: Frontend::OpenAiChat,
                method: Method::POST,
                uri: Uri::from_static("/v1/chat/completions"),
                headers: HeaderMap::new(),
                body: Bytes::from_static(body.as_bytes()),
                client_addr: None,
                proxy_user: None,
                received: Instant::now(),
                received_at: SystemTime::now(),
            })
            .await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert!(
            health.outcomes.lock().unwrap().iter().any(|b| b == "a"),
            "a was attempted"
        );
    }
}
