//! The whole configuration and how it is loaded: built-in defaults → config
//! file (TOML or YAML) → environment (seed names and `LLM_PROXY__…`) → CLI
//! flags. Only this module reads the environment.

use std::collections::BTreeMap;
use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml, Yaml};
use llm_proxy_api::{AuthConfig, ServerConfig};
use llm_proxy_core::{BackendConfig, BackendType, RoutingConfig, Secret, UpstreamConfig};
use llm_proxy_health::HealthCheckConfig;
use llm_proxy_replacement::{ReplacementConfig, ReplacementRule};
use llm_proxy_usage::UsageTrackingConfig;
use llm_proxy_wire_capture::WireCaptureConfig;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cli::ServeArgs;

/// The configuration file's shape: every key of SPEC §5.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    /// Listen address.
    pub host: String,
    /// Listen port.
    pub port: u16,
    /// Backend for bare model names; when unset: `openai` if configured, else `mock`, else the only backend.
    pub default_backend: Option<String>,
    /// Largest request body (413 above).
    pub max_request_body_bytes: u64,
    /// Longest time to receive a request head.
    pub header_read_timeout_seconds: f64,
    /// Longest time to receive a request body.
    pub body_read_timeout_seconds: f64,
    /// Drain time for open requests on shutdown.
    pub shutdown_grace_seconds: f64,
    /// Authentication.
    pub auth: AuthConfig,
    /// Backend instances. When none are configured: `mock`, plus `openai` /
    /// `anthropic` when `OPENAI_API_KEY` / `ANTHROPIC_API_KEY` are set.
    pub backends: BTreeMap<String, BackendConfig>,
    /// Failover routes.
    pub failover_routes: BTreeMap<String, Vec<String>>,
    /// Upstream timeouts.
    pub upstream: UpstreamConfig,
    /// Health checks.
    pub health_check: HealthCheckConfig,
    /// Usage tracking.
    pub usage_tracking: UsageTrackingConfig,
    /// Wire capture.
    pub wire_capture: WireCaptureConfig,
    /// Random model replacement.
    pub replacement: ReplacementConfig,
}

impl Default for AppConfig {
    fn default() -> Self {
        let server = ServerConfig::default();
        AppConfig {
            host: server.host,
            port: server.port,
            default_backend: None,
            max_request_body_bytes: server.max_request_body_bytes,
            header_read_timeout_seconds: server.header_read_timeout_seconds,
            body_read_timeout_seconds: server.body_read_timeout_seconds,
            shutdown_grace_seconds: server.shutdown_grace_seconds,
            auth: server.auth,
            backends: BTreeMap::new(),
            failover_routes: BTreeMap::new(),
            upstream: UpstreamConfig::default(),
            health_check: HealthCheckConfig::default(),
            usage_tracking: UsageTrackingConfig::default(),
            wire_capture: WireCaptureConfig::default(),
            replacement: ReplacementConfig::default(),
        }
    }
}

/// A configuration that could not be loaded; the message names the key and source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The file or a value could not be read or has the wrong shape.
    #[error("invalid configuration: {0}")]
    Load(String),
    /// A value is out of range or refers to something missing.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] llm_proxy_core::ConfigError),
}

/// Whether an environment value is taken as typed (`true`, `3`, `0.5`) or
/// always as text (paths, where `2024` is a directory, not a number).
#[derive(Clone, Copy, PartialEq, Eq)]
enum EnvValue {
    Typed,
    Text,
}

/// Seed environment names and the key each sets.
const SEED_ENV: &[(&str, &str, EnvValue)] = &[
    (
        "USAGE_TRACKING_ENABLED",
        "usage_tracking.enabled",
        EnvValue::Typed,
    ),
    (
        "USAGE_TRACKING_PERSISTENCE_PATH",
        "usage_tracking.persistence_path",
        EnvValue::Text,
    ),
    (
        "USAGE_TRACKING_DATABASE_URL",
        "usage_tracking.database_url",
        EnvValue::Text,
    ),
    (
        "USAGE_TRACKING_FLUSH_INTERVAL_SECONDS",
        "usage_tracking.flush_interval_seconds",
        EnvValue::Typed,
    ),
    (
        "USAGE_TRACKING_MAX_RECORDS_IN_MEMORY",
        "usage_tracking.max_records_in_memory",
        EnvValue::Typed,
    ),
    (
        "WIRE_CAPTURE_ENABLED",
        "wire_capture.enabled",
        EnvValue::Typed,
    ),
    (
        "WIRE_CAPTURE_OUTPUT_DIR",
        "wire_capture.output_dir",
        EnvValue::Text,
    ),
    (
        "REPLACEMENT_ENABLED",
        "replacement.enabled",
        EnvValue::Typed,
    ),
    (
        "REPLACEMENT_PROBABILITY",
        "replacement.probability",
        EnvValue::Typed,
    ),
    (
        "REPLACEMENT_TURN_COUNT",
        "replacement.turn_count",
        EnvValue::Typed,
    ),
];

/// Loads the configuration from `args.config`, the process environment and `args`.
pub fn load(args: &ServeArgs) -> Result<AppConfig, SettingsError> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    load_from(args, &env)
}

/// Like [`load`] with an explicit environment (for tests).
pub fn load_from(args: &ServeArgs, env: &[(String, String)]) -> Result<AppConfig, SettingsError> {
    let mut figment = Figment::from(Serialized::defaults(AppConfig::default()));
    if let Some(path) = &args.config {
        figment = merge_file(figment, path)?;
    }
    figment = figment.merge(Named::new("environment (seed names)", seed_env(env)?));
    figment = figment.merge(Named::new("environment (LLM_PROXY__*)", prefixed_env(env)));
    figment = figment.merge(Named::new("command-line flags", cli_overrides(args)?));
    let mut config: AppConfig = figment
        .extract()
        .map_err(|e| SettingsError::Load(describe(e)))?;
    resolve_backends(&mut config, env);
    Ok(config)
}

fn merge_file(figment: Figment, path: &Path) -> Result<Figment, SettingsError> {
    if !path.is_file() {
        return Err(SettingsError::Load(format!(
            "config file {} does not exist or is not a file",
            path.display()
        )));
    }
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("toml") => Ok(figment.merge(Toml::file_exact(path))),
        Some("yaml" | "yml") => Ok(figment.merge(Yaml::file_exact(path))),
        _ => Err(SettingsError::Load(format!(
            "config file {} must end in .toml, .yaml or .yml",
            path.display()
        ))),
    }
}

/// `LLM_PROXY__SECTION__KEY=value` from an explicit environment, as nested JSON.
fn prefixed_env(env: &[(String, String)]) -> Value {
    let mut root = json!({});
    for (k, v) in env {
        let Some(rest) = k.strip_prefix("LLM_PROXY__") else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            continue;
        }
        set_path(&mut root, &path, scalar(v));
    }
    root
}

/// A JSON tree as a figment provider with a name, so errors say where a value came from.
struct Named {
    name: &'static str,
    value: Value,
}

impl Named {
    fn new(name: &'static str, value: Value) -> Named {
        Named { name, value }
    }
}

impl figment::Provider for Named {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(self.name)
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Serialized::globals(&self.value).data()
    }
}

/// The seed's environment names, plus `API_KEYS` and `REPLACEMENT_RULES`.
fn seed_env(env: &[(String, String)]) -> Result<Value, SettingsError> {
    let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let mut root = json!({});
    for (name, key, kind) in SEED_ENV {
        if let Some(v) = get(name) {
            let path: Vec<String> = key.split('.').map(str::to_owned).collect();
            let value = match kind {
                EnvValue::Typed => scalar(v),
                EnvValue::Text => Value::String(v.to_owned()),
            };
            set_path(&mut root, &path, value);
        }
    }
    if let Some(keys) = get("API_KEYS") {
        let keys: Vec<Value> = keys
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| Value::String(k.to_owned()))
            .collect();
        // An empty API_KEYS must not quietly wipe keys set in the config file.
        if !keys.is_empty() {
            set_path(
                &mut root,
                &["auth".into(), "api_keys".into()],
                Value::Array(keys),
            );
        }
    }
    if let Some(rules) = get("REPLACEMENT_RULES") {
        let rules: Vec<ReplacementRule> = serde_json::from_str(rules).map_err(|e| {
            SettingsError::Load(format!(
                "REPLACEMENT_RULES must be a JSON list of {{from_pattern, to_backend, to_model}}: {e}"
            ))
        })?;
        let rules = serde_json::to_value(rules).map_err(|e| SettingsError::Load(e.to_string()))?;
        set_path(
            &mut root,
            &["replacement".into(), "replacement_rules".into()],
            rules,
        );
    }
    Ok(root)
}

fn cli_overrides(args: &ServeArgs) -> Result<Value, SettingsError> {
    let mut root = json!({});
    let mut set = |path: &[&str], v: Value| {
        let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
        set_path(&mut root, &path, v);
    };
    if let Some(h) = &args.host {
        set(&["host"], json!(h));
    }
    if let Some(p) = args.port {
        set(&["port"], json!(p));
    }
    if args.disable_auth {
        set(&["auth", "disable_auth"], json!(true));
    }
    if args.wire_capture_enabled {
        set(&["wire_capture", "enabled"], json!(true));
    }
    if let Some(d) = &args.wire_capture_output_dir {
        set(&["wire_capture", "output_dir"], json!(d));
    }
    if args.enable_replacement {
        set(&["replacement", "enabled"], json!(true));
    }
    if let Some(p) = args.replacement_probability {
        set(&["replacement", "probability"], json!(p));
    }
    if let Some(n) = args.replacement_turn_count {
        set(&["replacement", "turn_count"], json!(n));
    }
    if !args.replacement_rules.is_empty() {
        let mut rules = Vec::new();
        for raw in &args.replacement_rules {
            rules.push(parse_rule(raw)?);
        }
        set(
            &["replacement", "replacement_rules"],
            serde_json::to_value(rules).map_err(|e| SettingsError::Load(e.to_string()))?,
        );
    }
    Ok(root)
}

/// `FROM=BACKEND:MODEL` → a rule.
fn parse_rule(raw: &str) -> Result<ReplacementRule, SettingsError> {
    let bad = || {
        SettingsError::Load(format!(
            "--random-model-replacement-from-to {raw:?}: expected FROM=BACKEND:MODEL, e.g. '*=anthropic:claude-3-5-haiku'"
        ))
    };
    let (from, to) = raw.split_once('=').ok_or_else(bad)?;
    let (backend, model) = to.split_once(':').ok_or_else(bad)?;
    if from.is_empty() || backend.is_empty() || model.is_empty() {
        return Err(bad());
    }
    Ok(ReplacementRule {
        from_pattern: from.to_owned(),
        to_backend: backend.to_owned(),
        to_model: model.to_owned(),
    })
}

/// An environment value as the JSON value it spells (bool, number, JSON
/// list/object, or a JSON-quoted string such as `"2024"`), else the text itself.
fn scalar(v: &str) -> Value {
    let t = v.trim();
    if t.starts_with('"')
        && let Ok(s) = serde_json::from_str::<String>(t)
    {
        return Value::String(s);
    }
    match t {
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = t.parse::<i64>() {
        return json!(i);
    }
    if let Ok(f) = t.parse::<f64>()
        && f.is_finite()
    {
        return json!(f);
    }
    if (t.starts_with('[') || t.starts_with('{'))
        && let Ok(v) = serde_json::from_str::<Value>(t)
    {
        return v;
    }
    Value::String(v.to_owned())
}

fn set_path(root: &mut Value, path: &[String], value: Value) {
    let mut node = root;
    for (i, key) in path.iter().enumerate() {
        if !node.is_object() {
            *node = json!({});
        }
        let Value::Object(map) = node else { return };
        if i + 1 == path.len() {
            map.insert(key.clone(), value);
            return;
        }
        node = map.entry(key.clone()).or_insert_with(|| json!({}));
    }
}

/// A figment error as one readable message naming key and source.
fn describe(error: figment::Error) -> String {
    let mut out = Vec::new();
    for e in error {
        let key = if e.path.is_empty() {
            "(top level)".to_owned()
        } else {
            e.path.join(".")
        };
        let source = e
            .metadata
            .as_ref()
            .map(|m| match &m.source {
                Some(figment::Source::File(p)) => format!(" in {}", p.display()),
                _ => format!(" in {}", m.name),
            })
            .unwrap_or_default();
        let kind = e.kind.to_string();
        // For an unknown field the path is its parent; name the field itself.
        // For an unknown field, figment's path may or may not end with the field.
        let key = match &e.kind {
            figment::error::Kind::UnknownField(field, _) if e.path.last() == Some(field) => key,
            figment::error::Kind::UnknownField(field, _) if e.path.is_empty() => field.clone(),
            figment::error::Kind::UnknownField(field, _) => format!("{key}.{field}"),
            _ => key,
        };
        out.push(format!("{key}: {kind}{source}"));
    }
    out.join("; ")
}

/// Zero-config backends, API keys from `api_key_env`, and the default backend.
fn resolve_backends(config: &mut AppConfig, env: &[(String, String)]) {
    let get = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.trim().is_empty())
    };
    if config.backends.is_empty() {
        config
            .backends
            .insert("mock".into(), BackendConfig::new(BackendType::Mock));
        if get("OPENAI_API_KEY").is_some() {
            let mut b =
                BackendConfig::new(BackendType::OpenAi).with_url("https://api.openai.com/v1");
            b.api_key_env = Some("OPENAI_API_KEY".into());
            config.backends.insert("openai".into(), b);
        }
        if get("ANTHROPIC_API_KEY").is_some() {
            let mut b =
                BackendConfig::new(BackendType::Anthropic).with_url("https://api.anthropic.com/v1");
            b.api_key_env = Some("ANTHROPIC_API_KEY".into());
            config.backends.insert("anthropic".into(), b);
        }
    }
    for (name, backend) in &mut config.backends {
        if backend.api_key.is_some() {
            continue;
        }
        if let Some(var) = &backend.api_key_env {
            match get(var) {
                Some(key) => backend.api_key = Some(Secret::new(key.trim())),
                None => tracing::warn!(
                    backend = %name,
                    variable = %var,
                    "api_key_env is not set; the client's own credential will be passed through"
                ),
            }
        }
    }
    if config.default_backend.is_none() {
        let pick = if config.backends.contains_key("openai") {
            Some("openai".to_owned())
        } else if config.backends.contains_key("mock") {
            Some("mock".to_owned())
        } else if config.backends.len() == 1 {
            config.backends.keys().next().cloned()
        } else {
            None
        };
        config.default_backend = pick;
    }
}

impl AppConfig {
    /// The routing part, validated.
    pub fn routing(&self) -> Result<RoutingConfig, SettingsError> {
        let default_backend = self.default_backend.clone().ok_or_else(|| {
            llm_proxy_core::ConfigError::new(
                "default_backend",
                "several backends are configured and none is named openai or mock: set default_backend",
            )
        })?;
        let routing = RoutingConfig {
            default_backend,
            backends: self.backends.clone(),
            failover_routes: self.failover_routes.clone(),
            upstream: self.upstream.clone(),
        };
        routing.validate()?;
        Ok(routing)
    }

    /// The server part, validated.
    pub fn server(&self) -> Result<ServerConfig, SettingsError> {
        let server = ServerConfig {
            host: self.host.clone(),
            port: self.port,
            max_request_body_bytes: self.max_request_body_bytes,
            header_read_timeout_seconds: self.header_read_timeout_seconds,
            body_read_timeout_seconds: self.body_read_timeout_seconds,
            shutdown_grace_seconds: self.shutdown_grace_seconds,
            auth: self.auth.clone(),
        };
        server.validate()?;
        Ok(server)
    }

    /// Validates every section; the first problem is reported with its key.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.routing()?;
        self.server()?;
        self.health_check.validate()?;
        self.usage_tracking.validate()?;
        self.wire_capture.validate()?;
        self.replacement
            .validate(|b| self.backends.contains_key(b))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn zero_config_serves_mock_on_loopback() {
        let c = load_from(&ServeArgs::default(), &[]).unwrap();
        assert_eq!(c.host, "127.0.0.1");
        assert_eq!(c.port, 8000);
        assert_eq!(c.default_backend.as_deref(), Some("mock"));
        c.validate().unwrap();
    }

    #[test]
    fn openai_key_adds_the_openai_backend_as_default() {
        let c = load_from(
            &ServeArgs::default(),
            &env(&[("OPENAI_API_KEY", "sk-test")]),
        )
        .unwrap();
        assert_eq!(c.default_backend.as_deref(), Some("openai"));
        assert_eq!(
            c.backends["openai"].api_key.as_ref().unwrap().expose(),
            "sk-test"
        );
    }

    #[test]
    fn precedence_is_file_then_env_then_cli() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            &dir,
            "c.toml",
            "port = 1111\nhost = \"127.0.0.2\"\n[wire_capture]\noutput_dir = \"/from/file\"\n",
        );
        let mut args = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        };
        let c = load_from(&args, &[]).unwrap();
        assert_eq!((c.port, c.host.as_str()), (1111, "127.0.0.2"));
        let e = env(&[
            ("LLM_PROXY__PORT", "2222"),
            ("WIRE_CAPTURE_OUTPUT_DIR", "/from/env"),
        ]);
        let c = load_from(&args, &e).unwrap();
        assert_eq!(c.port, 2222);
        assert_eq!(c.wire_capture.output_dir, "/from/env");
        assert_eq!(c.host, "127.0.0.2");
        args.port = Some(3333);
        args.wire_capture_output_dir = Some("/from/cli".into());
        let c = load_from(&args, &e).unwrap();
        assert_eq!(c.port, 3333);
        assert_eq!(c.wire_capture.output_dir, "/from/cli");
    }

    #[test]
    fn unknown_keys_are_named_with_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            &dir,
            "c.toml",
            "[usage_tracking]\nenabled = true\nflush_every = 3\n",
        );
        let args = ServeArgs {
            config: Some(file.clone()),
            ..ServeArgs::default()
        };
        let err = load_from(&args, &[]).unwrap_err().to_string();
        assert!(err.contains("usage_tracking.flush_every:"), "{err}");
        assert!(!err.contains("flush_every.flush_every"), "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
        let err = load_from(&ServeArgs::default(), &env(&[("LLM_PROXY__PROT", "1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("prot"), "{err}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(&dir, "c.yaml", "port: lots\n");
        let args = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        };
        let err = load_from(&args, &[]).unwrap_err().to_string();
        assert!(err.contains("port"), "{err}");
    }

    #[test]
    fn seed_monitoring_yaml_loads_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = "\
health_check:
  enabled: true
  circuit_breaker_enabled: true
  notify_backends: true
  ping:
    enabled: true
    interval_seconds: 30
    timeout_seconds: 5
    failure_threshold: 3
    count: 3
  http:
    enabled: true
    interval_seconds: 60
    timeout_seconds: 10
    failure_threshold: 2
    recovery_threshold: 1
    method: HEAD
    path: /models
usage_tracking:
  enabled: true
  persistence_path: ./var/usage.json
  flush_interval_seconds: 5
  max_records_in_memory: 5000
wire_capture:
  enabled: false
  output_dir: ./var/wire_captures
";
        let file = write(&dir, "seed.yaml", yaml);
        let args = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        };
        let c = load_from(&args, &[]).unwrap();
        c.validate().unwrap();
        assert_eq!(c.health_check.http.interval_seconds, 60.0);
        assert_eq!(c.usage_tracking.max_records_in_memory, 5000);
    }

    #[test]
    fn seed_env_names_and_cli_replacement_rules() {
        let e = env(&[
            ("USAGE_TRACKING_ENABLED", "false"),
            ("API_KEYS", "k1, k2"),
            (
                "REPLACEMENT_RULES",
                r#"[{"from_pattern":"*","to_backend":"mock","to_model":"echo"}]"#,
            ),
        ]);
        let c = load_from(&ServeArgs::default(), &e).unwrap();
        assert!(!c.usage_tracking.enabled);
        assert_eq!(c.auth.api_keys.len(), 2);
        assert_eq!(c.replacement.replacement_rules[0].to_model, "echo");
        let args = ServeArgs {
            enable_replacement: true,
            replacement_rules: vec!["gpt=mock:echo".into()],
            ..ServeArgs::default()
        };
        let c = load_from(&args, &e).unwrap();
        assert!(c.replacement.enabled);
        assert_eq!(c.replacement.replacement_rules[0].from_pattern, "gpt");
        // Paths stay text even when they look like numbers; an empty API_KEYS changes nothing.
        let e = env(&[
            ("WIRE_CAPTURE_OUTPUT_DIR", "2024"),
            ("API_KEYS", " , "),
            ("LLM_PROXY__DEFAULT_BACKEND", "\"123\""),
        ]);
        let c = load_from(&ServeArgs::default(), &e).unwrap();
        assert_eq!(c.wire_capture.output_dir, "2024");
        assert!(c.auth.api_keys.is_empty());
        assert_eq!(c.default_backend.as_deref(), Some("123"));
        // The Postgres URL: set from its seed name, never shown with its password.
        let e = env(&[(
            "USAGE_TRACKING_DATABASE_URL",
            "postgres://proxy:s3cret@127.0.0.1:5432/usage",
        )]);
        let c = load_from(&ServeArgs::default(), &e).unwrap();
        let url = c.usage_tracking.database_url.as_ref().unwrap();
        assert_eq!(url.0, "postgres://proxy:s3cret@127.0.0.1:5432/usage");
        let shown = format!("{:?}", c.usage_tracking);
        assert!(
            shown.contains("postgres://proxy@127.0.0.1:5432/usage"),
            "{shown}"
        );
        assert!(!shown.contains("s3cret"), "{shown}");
        let bad = ServeArgs {
            replacement_rules: vec!["nonsense".into()],
            ..ServeArgs::default()
        };
        assert!(
            load_from(&bad, &[])
                .unwrap_err()
                .to_string()
                .contains("FROM=BACKEND:MODEL")
        );
    }
}
