//! `[replacement]` configuration (the seed's keys, plus the session-table bounds).

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
    /// Most sessions whose state is kept; the least recently seen is forgotten first.
    pub max_sessions: usize,
    /// A session not seen for this long is forgotten (its next turn counts as a first turn).
    pub session_idle_seconds: f64,
}

impl Default for ReplacementConfig {
    fn default() -> Self {
        ReplacementConfig {
            enabled: false,
            probability: 0.1,
            turn_count: 1,
            replacement_rules: Vec::new(),
            max_sessions: 100_000,
            session_idle_seconds: 3600.0,
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
    /// Checks values; errors name the key. `backends` says whether a backend name is configured.
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
        if self.max_sessions == 0 {
            return Err(ConfigError::new(
                "replacement.max_sessions",
                "must be at least 1",
            ));
        }
        if !(self.session_idle_seconds.is_finite() && self.session_idle_seconds > 0.0) {
            return Err(ConfigError::new(
                "replacement.session_idle_seconds",
                format!(
                    "must be a positive number, got {}",
                    self.session_idle_seconds
                ),
            ));
        }
        if self.enabled && self.replacement_rules.is_empty() {
            return Err(ConfigError::new(
                "replacement.replacement_rules",
                "replacement is enabled but no rules are configured",
            ));
        }
        for (i, rule) in self.replacement_rules.iter().enumerate() {
            let key = |field: &str| format!("replacement.replacement_rules[{i}].{field}");
            if rule.from_pattern.trim().is_empty() {
                return Err(ConfigError::new(
                    key("from_pattern"),
                    "must not be empty (use \"*\" to match every model)",
                ));
            }
            if rule.to_model.trim().is_empty() {
                return Err(ConfigError::new(key("to_model"), "must not be empty"));
            }
            if !backends(&rule.to_backend) {
                return Err(ConfigError::new(
                    key("to_backend"),
                    format!("backend {:?} is not configured", rule.to_backend),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn rule(from: &str, backend: &str, model: &str) -> ReplacementRule {
        ReplacementRule {
            from_pattern: from.into(),
            to_backend: backend.into(),
            to_model: model.into(),
        }
    }

    fn enabled() -> ReplacementConfig {
        ReplacementConfig {
            enabled: true,
            replacement_rules: vec![rule("*", "a", "m")],
            ..ReplacementConfig::default()
        }
    }

    fn key_of(c: &ReplacementConfig) -> String {
        c.validate(|b| b == "a" || b == "b").unwrap_err().key
    }

    #[test]
    fn each_bad_value_names_its_key() {
        enabled().validate(|b| b == "a").unwrap();
        for (p, ok) in [
            (0.0, true),
            (1.0, true),
            (-0.1, false),
            (1.01, false),
            (f64::NAN, false),
        ] {
            let c = ReplacementConfig {
                probability: p,
                ..enabled()
            };
            assert_eq!(c.validate(|_| true).is_ok(), ok, "probability {p}");
            if !ok {
                assert_eq!(key_of(&c), "replacement.probability");
            }
        }
        let c = ReplacementConfig {
            turn_count: 0,
            ..enabled()
        };
        assert_eq!(key_of(&c), "replacement.turn_count");
        let c = ReplacementConfig {
            replacement_rules: vec![],
            ..enabled()
        };
        assert_eq!(key_of(&c), "replacement.replacement_rules");
        // Disabled with no rules is the default and fine.
        ReplacementConfig::default().validate(|_| false).unwrap();
        let c = ReplacementConfig {
            replacement_rules: vec![rule("gpt", "a", "m"), rule("*", "nope", "m")],
            ..enabled()
        };
        assert_eq!(key_of(&c), "replacement.replacement_rules[1].to_backend");
        let c = ReplacementConfig {
            replacement_rules: vec![rule(" ", "a", "m")],
            ..enabled()
        };
        assert_eq!(key_of(&c), "replacement.replacement_rules[0].from_pattern");
        let c = ReplacementConfig {
            replacement_rules: vec![rule("*", "b", "")],
            ..enabled()
        };
        assert_eq!(key_of(&c), "replacement.replacement_rules[0].to_model");
        let c = ReplacementConfig {
            max_sessions: 0,
            ..enabled()
        };
        assert_eq!(key_of(&c), "replacement.max_sessions");
        let c = ReplacementConfig {
            session_idle_seconds: 0.0,
            ..enabled()
        };
        assert_eq!(key_of(&c), "replacement.session_idle_seconds");
    }
}
