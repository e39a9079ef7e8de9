//! Model string → ordered list of (backend, model) targets.
//!
//! `backend:model` picks a backend by name; a bare name uses the failover
//! route of that name if there is one, else the default backend.

use std::sync::Arc;

use crate::config::RoutingConfig;
use crate::error::ProxyError;

/// One place a request can be sent: a backend instance and the model name it gets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Backend instance name.
    pub backend: Arc<str>,
    /// Model name as sent upstream.
    pub model: String,
}

impl Target {
    /// A target for `backend` and `model`.
    pub fn new(backend: impl Into<Arc<str>>, model: impl Into<String>) -> Target {
        Target {
            backend: backend.into(),
            model: model.into(),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.backend, self.model)
    }
}

/// Ordered targets for one request; the first is tried first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    /// Targets in failover order.
    pub targets: Vec<Target>,
    /// The failover route used, if any.
    pub route: Option<String>,
}

/// Resolves model strings against the routing config.
#[derive(Debug, Clone)]
pub struct Router {
    default_backend: Arc<str>,
    backends: Vec<Arc<str>>,
    routes: Vec<(String, Vec<Target>)>,
}

impl Router {
    /// Builds a router from a validated config.
    pub fn new(config: &RoutingConfig) -> Router {
        let backends: Vec<Arc<str>> = config
            .backends
            .keys()
            .map(|k| Arc::from(k.as_str()))
            .collect();
        let intern = |name: &str| -> Arc<str> {
            backends
                .iter()
                .find(|b| &***b == name)
                .cloned()
                .unwrap_or_else(|| Arc::from(name))
        };
        let routes = config
            .failover_routes
            .iter()
            .map(|(alias, targets)| {
                let targets = targets
                    .iter()
                    .filter_map(|t| t.split_once(':'))
                    .map(|(b, m)| Target::new(intern(b), m))
                    .collect();
                (alias.clone(), targets)
            })
            .collect();
        Router {
            default_backend: intern(&config.default_backend),
            backends,
            routes,
        }
    }

    /// The plan for `model`, or 400 when it names an unknown backend.
    pub fn plan(&self, model: &str) -> Result<RoutePlan, ProxyError> {
        if let Some((alias, targets)) = self.routes.iter().find(|(alias, _)| alias == model) {
            return Ok(RoutePlan {
                targets: targets.clone(),
                route: Some(alias.clone()),
            });
        }
        if let Some((backend, bare)) = model.split_once(':') {
            let Some(backend) = self.backend(backend) else {
                return Err(ProxyError::UnknownBackend {
                    backend: backend.to_owned(),
                    model: model.to_owned(),
                    known: self.known(),
                });
            };
            if bare.is_empty() {
                return Err(ProxyError::BadRequest(format!(
                    "model {model:?} names backend {backend:?} but no model after ':'"
                )));
            }
            return Ok(RoutePlan {
                targets: vec![Target::new(backend, bare)],
                route: None,
            });
        }
        Ok(RoutePlan {
            targets: vec![Target::new(self.default_backend.clone(), model)],
            route: None,
        })
    }

    /// The interned name of a configured backend.
    pub fn backend(&self, name: &str) -> Option<Arc<str>> {
        self.backends.iter().find(|b| &***b == name).cloned()
    }

    /// Failover route names and their targets.
    pub fn routes(&self) -> impl Iterator<Item = (&str, &[Target])> {
        self.routes.iter().map(|(a, t)| (a.as_str(), t.as_slice()))
    }

    fn known(&self) -> String {
        let names: Vec<&str> = self.backends.iter().map(|b| &**b).collect();
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendConfig, BackendType};

    fn router() -> Router {
        let mut c = RoutingConfig {
            default_backend: "openai".into(),
            ..RoutingConfig::default()
        };
        for name in ["openai", "openai.backup", "claude"] {
            c.backends.insert(
                name.into(),
                BackendConfig::new(BackendType::OpenAi).with_url("http://127.0.0.1:9/v1"),
            );
        }
        c.failover_routes.insert(
            "gpt-4".into(),
            vec!["openai:gpt-4".into(), "openai.backup:gpt-4-0613".into()],
        );
        Router::new(&c)
    }

    #[test]
    fn explicit_backend() {
        let plan = router().plan("claude:claude-3-5-haiku").unwrap();
        assert_eq!(
            plan.targets,
            vec![Target::new("claude", "claude-3-5-haiku")]
        );
    }

    #[test]
    fn failover_route_wins_over_default() {
        let plan = router().plan("gpt-4").unwrap();
        assert_eq!(plan.route.as_deref(), Some("gpt-4"));
        assert_eq!(plan.targets.len(), 2);
        assert_eq!(plan.targets[1].to_string(), "openai.backup:gpt-4-0613");
    }

    #[test]
    fn bare_model_uses_default_backend() {
        let plan = router().plan("gpt-4o-mini").unwrap();
        assert_eq!(plan.targets, vec![Target::new("openai", "gpt-4o-mini")]);
    }

    #[test]
    fn unknown_backend_is_a_client_error_naming_it() {
        let err = router().plan("nope:gpt-4").unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(err.to_string().contains("\"nope\""));
        assert!(err.to_string().contains("openai.backup"));
    }

    #[test]
    fn model_names_may_contain_colons_after_the_backend() {
        let plan = router().plan("openai:llama3:8b").unwrap();
        assert_eq!(plan.targets[0].model, "llama3:8b");
    }
}
