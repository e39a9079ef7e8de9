//! Routing configuration: backends, failover routes and upstream timeouts.
//!
//! Plain serde types. The binary fills them from files, environment and flags
//! (this crate never reads the environment) and calls [`RoutingConfig::validate`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The kind of server a backend talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendType {
    /// Any OpenAI-compatible server (OpenAI, OpenRouter, vLLM, Ollama, llama.cpp, Groq, …).
    #[serde(rename = "openai")]
    OpenAi,
    /// The Anthropic Messages API.
    Anthropic,
    /// The in-process deterministic mock model (demos and tests).
    Mock,
}

impl BackendType {
    /// The `backend_type` name used in records and filters.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendType::OpenAi => "openai",
            BackendType::Anthropic => "anthropic",
            BackendType::Mock => "mock",
        }
    }
}

impl BackendType {
    /// Whether this backend type speaks the protocol of `frontend` natively.
    pub fn serves(self, frontend: crate::protocol::Frontend) -> bool {
        use crate::protocol::Frontend;
        match self {
            BackendType::Mock => true,
            BackendType::OpenAi => {
                matches!(frontend, Frontend::OpenAiChat | Frontend::OpenAiResponses)
            }
            BackendType::Anthropic => frontend == Frontend::AnthropicMessages,
        }
    }
}

impl fmt::Display for BackendType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A secret string (API key) whose `Debug` never shows the value.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The secret value; callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Timeouts for talking to an upstream. Each may be overridden per backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Longest wait for the TCP connection (the TLS handshake counts
    /// towards the first-byte timeout).
    pub connect_timeout_seconds: f64,
    /// Longest wait from sending the request to the response head.
    pub first_byte_timeout_seconds: f64,
    /// Longest silence between two body chunks of a response.
    pub idle_timeout_seconds: f64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout_seconds: 10.0,
            first_byte_timeout_seconds: 120.0,
            idle_timeout_seconds: 120.0,
        }
    }
}

/// Per-backend overrides of [`UpstreamConfig`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamOverrides {
    /// Overrides [`UpstreamConfig::connect_timeout_seconds`].
    pub connect_timeout_seconds: Option<f64>,
    /// Overrides [`UpstreamConfig::first_byte_timeout_seconds`].
    pub first_byte_timeout_seconds: Option<f64>,
    /// Overrides [`UpstreamConfig::idle_timeout_seconds`].
    pub idle_timeout_seconds: Option<f64>,
}

/// Resolved upstream timeouts for one backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    /// Connect timeout.
    pub connect: Duration,
    /// Time to the response head.
    pub first_byte: Duration,
    /// Longest gap between body chunks.
    pub idle: Duration,
}

/// One configured backend instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Backend type.
    #[serde(rename = "type")]
    pub backend_type: BackendType,
    /// Base URL including the API version prefix, e.g. `https://api.openai.com/v1`.
    /// Not needed for `mock`.
    #[serde(default)]
    pub api_url: Option<String>,
    /// The key sent upstream. When neither this nor `api_key_env` yields a key,
    /// the client's credential is passed through.
    #[serde(default, skip_serializing)]
    pub api_key: Option<Secret>,
    /// Environment variable holding the key; resolved by the binary.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Models listed by `GET /v1/models` for this backend.
    #[serde(default)]
    pub models: Vec<String>,
    /// Extra headers sent upstream with every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Per-backend timeout overrides; same keys as `[upstream]`.
    #[serde(default)]
    pub upstream: UpstreamOverrides,
    /// For streamed OpenAI chat requests, ask the upstream for usage
    /// (`stream_options.include_usage`) even when the client did not, and hide
    /// that extra chunk from the client. Turn off for servers that reject
    /// `stream_options`.
    #[serde(default = "default_true")]
    pub request_stream_usage: bool,
}

fn default_true() -> bool {
    true
}

impl BackendConfig {
    /// A backend of the given type with no URL or key.
    pub fn new(backend_type: BackendType) -> BackendConfig {
        BackendConfig {
            backend_type,
            api_url: None,
            api_key: None,
            api_key_env: None,
            models: Vec::new(),
            headers: BTreeMap::new(),
            upstream: UpstreamOverrides::default(),
            request_stream_usage: true,
        }
    }

    /// Builder-style URL setter.
    pub fn with_url(mut self, url: impl Into<String>) -> BackendConfig {
        self.api_url = Some(url.into());
        self
    }

    /// The timeouts for this backend: its overrides over the shared defaults.
    pub fn timeouts(&self, defaults: &UpstreamConfig) -> Timeouts {
        let o = &self.upstream;
        Timeouts {
            connect: secs(
                o.connect_timeout_seconds
                    .unwrap_or(defaults.connect_timeout_seconds),
            ),
            first_byte: secs(
                o.first_byte_timeout_seconds
                    .unwrap_or(defaults.first_byte_timeout_seconds),
            ),
            idle: secs(
                o.idle_timeout_seconds
                    .unwrap_or(defaults.idle_timeout_seconds),
            ),
        }
    }
}

fn secs(v: f64) -> Duration {
    Duration::try_from_secs_f64(v).unwrap_or(Duration::MAX)
}

/// Everything routing needs: backends, failover routes, the default backend
/// and upstream timeouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Backend used for bare model names with no failover route.
    pub default_backend: String,
    /// Backend instances by name.
    pub backends: BTreeMap<String, BackendConfig>,
    /// Named failover routes: model alias → ordered `backend:model` targets.
    pub failover_routes: BTreeMap<String, Vec<String>>,
    /// Default upstream timeouts.
    pub upstream: UpstreamConfig,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            default_backend: "openai".to_owned(),
            backends: BTreeMap::new(),
            failover_routes: BTreeMap::new(),
            upstream: UpstreamConfig::default(),
        }
    }
}

impl RoutingConfig {
    /// Checks cross-references and values; errors name the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.backends.contains_key(&self.default_backend) {
            return Err(ConfigError::new(
                "default_backend",
                format!(
                    "backend {:?} is not configured (configured: {})",
                    self.default_backend,
                    self.backend_names()
                ),
            ));
        }
        check_timeouts("upstream", &self.upstream)?;
        for (name, backend) in &self.backends {
            if name.is_empty() || name.contains(':') {
                return Err(ConfigError::new(
                    format!("backends.{name}"),
                    "backend names must be non-empty and contain no ':'",
                ));
            }
            let key = format!("backends.{name}");
            match (&backend.api_url, backend.backend_type) {
                (None, BackendType::OpenAi | BackendType::Anthropic) => {
                    return Err(ConfigError::new(
                        format!("{key}.api_url"),
                        "required for openai and anthropic backends",
                    ));
                }
                (Some(url), _) => {
                    let uri: http::Uri = url.parse().map_err(|e| {
                        ConfigError::new(format!("{key}.api_url"), format!("not a URL: {e}"))
                    })?;
                    match uri.scheme_str() {
                        Some("http" | "https") if uri.host().is_some() => {}
                        _ => {
                            return Err(ConfigError::new(
                                format!("{key}.api_url"),
                                "must be an absolute http:// or https:// URL",
                            ));
                        }
                    }
                }
                (None, BackendType::Mock) => {}
            }
            let resolved = UpstreamConfig {
                connect_timeout_seconds: backend
                    .upstream
                    .connect_timeout_seconds
                    .unwrap_or(self.upstream.connect_timeout_seconds),
                first_byte_timeout_seconds: backend
                    .upstream
                    .first_byte_timeout_seconds
                    .unwrap_or(self.upstream.first_byte_timeout_seconds),
                idle_timeout_seconds: backend
                    .upstream
                    .idle_timeout_seconds
                    .unwrap_or(self.upstream.idle_timeout_seconds),
            };
            check_timeouts(&format!("{key}.upstream"), &resolved)?;
        }
        for (alias, targets) in &self.failover_routes {
            let key = format!("failover_routes.{alias}");
            if targets.is_empty() {
                return Err(ConfigError::new(
                    key,
                    "needs at least one backend:model target",
                ));
            }
            for target in targets {
                let Some((backend, model)) = target.split_once(':') else {
                    return Err(ConfigError::new(
                        key,
                        format!("target {target:?} is not of the form backend:model"),
                    ));
                };
                if !self.backends.contains_key(backend) || model.is_empty() {
                    return Err(ConfigError::new(
                        key,
                        format!(
                            "target {target:?} names unknown backend {backend:?} (configured: {})",
                            self.backend_names()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn backend_names(&self) -> String {
        let names: Vec<&str> = self.backends.keys().map(String::as_str).collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    }
}

fn check_timeouts(key: &str, t: &UpstreamConfig) -> Result<(), ConfigError> {
    for (name, v) in [
        ("connect_timeout_seconds", t.connect_timeout_seconds),
        ("first_byte_timeout_seconds", t.first_byte_timeout_seconds),
        ("idle_timeout_seconds", t.idle_timeout_seconds),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return Err(ConfigError::new(
                format!("{key}.{name}"),
                format!("must be a positive number of seconds, got {v}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RoutingConfig {
        let mut c = RoutingConfig {
            default_backend: "mock".into(),
            ..RoutingConfig::default()
        };
        c.backends
            .insert("mock".into(), BackendConfig::new(BackendType::Mock));
        c
    }

    #[test]
    fn default_backend_must_exist() {
        let mut c = config();
        c.default_backend = "nope".into();
        let err = c.validate().unwrap_err();
        assert_eq!(err.key, "default_backend");
    }

    #[test]
    fn failover_targets_are_checked() {
        let mut c = config();
        c.failover_routes
            .insert("gpt-4".into(), vec!["ghost:gpt-4".into()]);
        let err = c.validate().unwrap_err();
        assert_eq!(err.key, "failover_routes.gpt-4");
        assert!(err.message.contains("ghost"));
    }

    #[test]
    fn http_backends_need_a_url_and_positive_timeouts() {
        let mut c = config();
        c.backends
            .insert("o".into(), BackendConfig::new(BackendType::OpenAi));
        assert_eq!(c.validate().unwrap_err().key, "backends.o.api_url");
        let mut b = BackendConfig::new(BackendType::OpenAi).with_url("http://127.0.0.1:1/v1");
        b.upstream.idle_timeout_seconds = Some(0.0);
        c.backends.insert("o".into(), b);
        assert_eq!(
            c.validate().unwrap_err().key,
            "backends.o.upstream.idle_timeout_seconds"
        );
    }

    #[test]
    fn secret_debug_hides_value() {
        assert_eq!(format!("{:?}", Secret::new("sk-123")), "Secret(***)");
    }
}
