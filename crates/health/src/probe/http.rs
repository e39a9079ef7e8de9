//! The HTTP probe: `HEAD` (or `GET`) of `api_url` + `path`, with no
//! credentials and no body, on a fresh connection each time (a probe checks
//! that a connection can be made). A final status below
//! `healthy_below_status` (500) is up; a timeout, a connection error or a
//! status at or above it is down.
//!
//! Redirects are followed (at most [`MAX_REDIRECTS`]) only to the endpoint's
//! own host, and never to a loopback, link-local, private or unspecified
//! address unless the endpoint itself is one of that kind; a refused
//! redirect fails the check without connecting anywhere.

use std::error::Error as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Uri, header};
use http_body_util::Empty;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::HttpProbeConfig;
use crate::endpoint::{EndpointUrl, RestrictedAddress};
use crate::error::HealthError;
use crate::state::CheckResult;

/// Redirects followed at most per check.
pub const MAX_REDIRECTS: usize = 5;
/// The `User-Agent` of probes.
pub const USER_AGENT: &str = concat!("llm-proxy-health/", env!("CARGO_PKG_VERSION"));

/// Sends HTTP probes. One per monitor; shared by every endpoint.
pub struct HttpProber {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    method: Method,
    path: String,
    timeout: Duration,
    healthy_below: u16,
}

impl std::fmt::Debug for HttpProber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProber")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpProber {
    /// A prober for `config` (already validated).
    pub fn new(config: &HttpProbeConfig) -> Result<HttpProber, HealthError> {
        let timeout = crate::config::seconds(config.timeout_seconds);
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| HealthError::Client(format!("TLS setup failed: {e}")))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(tls);
        let method = if config.method.eq_ignore_ascii_case("GET") {
            Method::GET
        } else {
            Method::HEAD
        };
        Ok(HttpProber {
            client,
            method,
            path: config.path.clone(),
            timeout,
            healthy_below: config.healthy_below_status,
        })
    }

    /// The URL probed for `endpoint`, checked to parse.
    pub fn probe_url(&self, endpoint: &EndpointUrl) -> Result<String, HealthError> {
        let url = endpoint.probe_url(&self.path);
        url.parse::<Uri>().map_err(|e| HealthError::InvalidUrl {
            url: url.clone(),
            reason: format!(
                "the HTTP probe URL (api_url + health_check.http.path) does not parse: {e}"
            ),
        })?;
        Ok(url)
    }

    /// Probes `endpoint` once.
    pub async fn check(&self, endpoint: &EndpointUrl) -> CheckResult {
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.timeout, self.follow(endpoint)).await;
        let latency = started.elapsed();
        match outcome {
            Err(_) => CheckResult {
                passed: Some(false),
                latency: None,
                error: Some(format!(
                    "no response within {:.1}s",
                    self.timeout.as_secs_f64()
                )),
                status: None,
            },
            Ok(Err(error)) => CheckResult {
                passed: Some(false),
                latency: None,
                error: Some(error),
                status: None,
            },
            Ok(Ok(status)) => {
                let up = status < self.healthy_below;
                CheckResult {
                    passed: Some(up),
                    latency: Some(latency),
                    error: (!up).then(|| format!("HTTP {status}")),
                    status: Some(status),
                }
            }
        }
    }

    /// Sends the probe and follows allowed redirects; the final status.
    async fn follow(&self, endpoint: &EndpointUrl) -> Result<u16, String> {
        let mut url = endpoint.probe_url(&self.path);
        for _ in 0..=MAX_REDIRECTS {
            let uri: Uri = url
                .parse()
                .map_err(|e| format!("invalid probe URL {url}: {e}"))?;
            let request = Request::builder()
                .method(self.method.clone())
                .uri(uri)
                .header(header::USER_AGENT, HeaderValue::from_static(USER_AGENT))
                .header(header::ACCEPT, HeaderValue::from_static("*/*"))
                .body(Empty::new())
                .map_err(|e| format!("cannot build the probe request: {e}"))?;
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| describe_client_error(&e))?;
            let status = response.status();
            let location = response
                .headers()
                .get(header::LOCATION)
                .map(|v| v.to_str().map(str::to_owned));
            drop(response);
            match (status.is_redirection(), location) {
                (true, Some(Ok(location))) => {
                    url = redirect_target(endpoint, &url, &location)?;
                }
                (true, Some(Err(_))) => {
                    return Err(format!("HTTP {status} with an unreadable Location header"));
                }
                _ => return Ok(status.as_u16()),
            }
        }
        Err(format!("more than {MAX_REDIRECTS} redirects"))
    }
}

/// "connection failed: Connection refused (os error 111)" rather than
/// "client error (Connect)".
fn describe_client_error(error: &hyper_util::client::legacy::Error) -> String {
    let mut deepest = None;
    let mut source = error.source();
    while let Some(s) = source {
        deepest = Some(s.to_string());
        source = s.source();
    }
    let detail = deepest.unwrap_or_else(|| error.to_string());
    if error.is_connect() {
        format!("connection failed: {detail}")
    } else {
        format!("request failed: {detail}")
    }
}

/// Where a redirect from `current` to `location` leads, if it may be followed.
pub(crate) fn redirect_target(
    endpoint: &EndpointUrl,
    current: &str,
    location: &str,
) -> Result<String, String> {
    let location = location.trim();
    let (scheme, rest) = current.split_once("://").unwrap_or(("http", current));
    let origin_end = rest.find('/').unwrap_or(rest.len());
    let origin = format!("{scheme}://{}", &rest[..origin_end]);
    let lower = location.to_ascii_lowercase();
    let target = if lower.starts_with("http://") || lower.starts_with("https://") {
        location.to_owned()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{origin}{location}")
    } else if lower.contains("://") {
        return Err(format!(
            "redirect to {location} refused: only http and https are followed"
        ));
    } else {
        let path = &rest[origin_end..];
        let path = path.split(['?', '#']).next().unwrap_or("");
        let dir = path.rfind('/').map_or("/", |i| &path[..=i]);
        format!("{origin}{dir}{location}")
    };
    let authority = target
        .split_once("://")
        .map(|(_, r)| r.split(['/', '?', '#']).next().unwrap_or(""))
        .unwrap_or("");
    if authority.contains('@') {
        return Err("redirect to a URL with credentials refused".into());
    }
    let parsed = EndpointUrl::parse(&target)
        .map_err(|e| format!("redirect to an unusable URL refused: {e}"))?;
    let shown = parsed.as_str();
    if let Some(class) = RestrictedAddress::of_host(parsed.host())
        && RestrictedAddress::of_host(endpoint.host()) != Some(class)
    {
        return Err(format!(
            "redirect to {shown} refused: {} is {}",
            parsed.host(),
            class.describe()
        ));
    }
    if parsed.host() != endpoint.host() {
        return Err(format!(
            "redirect to {shown} refused: not the endpoint's host {}",
            endpoint.host()
        ));
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(url: &str) -> EndpointUrl {
        EndpointUrl::parse(url).unwrap()
    }

    #[test]
    fn same_host_redirects_are_followed_in_every_form() {
        let e = ep("https://api.example.com/v1");
        let cur = "https://api.example.com/v1/models";
        assert_eq!(
            redirect_target(&e, cur, "/v2/models").unwrap(),
            "https://api.example.com/v2/models"
        );
        assert_eq!(
            redirect_target(&e, cur, "models/").unwrap(),
            "https://api.example.com/v1/models/"
        );
        assert_eq!(
            redirect_target(&e, cur, "//API.example.com/x").unwrap(),
            "https://API.example.com/x"
        );
        assert_eq!(
            redirect_target(
                &e,
                "http://api.example.com/v1",
                "https://api.example.com:8443/v1"
            )
            .unwrap(),
            "https://api.example.com:8443/v1"
        );
    }

    #[test]
    fn redirects_elsewhere_are_refused_with_the_reason() {
        let e = ep("https://api.example.com/v1");
        let cur = "https://api.example.com/v1";
        let err = redirect_target(&e, cur, "http://169.254.169.254/latest/meta-data/").unwrap_err();
        assert!(
            err.contains("169.254.169.254 is a link-local address"),
            "{err}"
        );
        for target in [
            "http://127.0.0.1/",
            "http://localhost:8080/",
            "http://10.0.0.5/",
            "http://[fe80::1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://0.0.0.0/",
        ] {
            let err = redirect_target(&e, cur, target).unwrap_err();
            assert!(err.contains("refused"), "{target}: {err}");
            assert!(err.contains("address"), "{target}: {err}");
        }
        let err = redirect_target(&e, cur, "https://evil.example.net/").unwrap_err();
        assert!(err.contains("not the endpoint's host"), "{err}");
        let err = redirect_target(&e, cur, "https://user:pw@api.example.com/").unwrap_err();
        assert!(err.contains("credentials"), "{err}");
        assert!(redirect_target(&e, cur, "file:///etc/passwd").is_err());
    }

    #[test]
    fn a_loopback_endpoint_may_redirect_to_itself_but_not_to_link_local() {
        let e = ep("http://127.0.0.1:8000/v1");
        let cur = "http://127.0.0.1:8000/v1";
        assert_eq!(
            redirect_target(&e, cur, "/v1/").unwrap(),
            "http://127.0.0.1:8000/v1/"
        );
        let err = redirect_target(&e, cur, "http://169.254.169.254/").unwrap_err();
        assert!(err.contains("link-local"), "{err}");
    }
}
