//! `[replacement]` configuration (the seed's keys).

use llm_proxy_core::ConfigError;
use serde::{Deserialize, Serialize};

/// Random model replacement per session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplacementConfig {
    /// Replace at all.
    pub enabled: bool,
    /// Chance per eligible turn, 0–1.
    pub probability: f64,
    /// Turns served by the replacement once it triggers.
    pub turn_count: u32,
    /// Rules in order; the first match wins.
    pub replacement_rules: Vec<ReplacementRule>,
}

impl Default for ReplacementConfig {
    fn default() -> Self {
        ReplacementConfig {
            enabled: false,
            probability: 0.1,
            turn_count: 1,
            replacement_rules: Vec::new(),
        }
    }
}

/// One replacement rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplacementRule {
    /// `*`, a substring of the model, or an exact `backend:model`.
    pub from_pattern: String,
    /// Backend that serves replaced turns.
    pub to_backend: String,
    /// Model that serves replaced turns.
    pub to_model: String,
}

impl ReplacementConfig {
    /// Checks values; errors name the key. `backends` are the configured backend names.
    pub fn validate(&self, mut backends: impl FnMut(&str) -> bool) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.probability) {
            return Err(ConfigError::new(
                "replacement.probability",
                format!("must be between 0 and 1, got {}", self.probability),
            ));
        }
        if self.turn_count == 0 {
            return Err(ConfigError::new(
                "replacement.turn_count",
                "must be at least 1",
            ));
        }
        if self.enabled && self.replacement_rules.is_empty() {
            return Err(ConfigError::new(
                "replacement.replacement_rules",
                "replacement is enabled but no rules are configured",
            ));
        }
        for (i, rule) in self.replacement_rules.iter().enumerate() {
            if !backends(&rule.to_backend) {
                return Err(ConfigError::new(
                    format!("replacement.replacement_rules[{i}].to_backend"),
                    format!("backend {:?} is not configured", rule.to_backend),
                ));
            }
        }
        Ok(())
    }
}
