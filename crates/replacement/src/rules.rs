//! Replacement rules, compiled once: which target replaces a request's target.

use std::sync::Arc;

use llm_proxy_core::Target;

use crate::config::ReplacementRule;

/// What a rule's `from_pattern` matches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `*`: every request.
    Any,
    /// A pattern that may be an exact `backend:model` or a substring of the model.
    Text(String),
}

/// One compiled rule.
#[derive(Debug, Clone)]
struct Rule {
    pattern: Pattern,
    to: Target,
}

/// Rules in configuration order; the first match whose target differs wins.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

impl RuleSet {
    /// Compiles `rules` (already validated).
    pub fn new(rules: &[ReplacementRule]) -> RuleSet {
        let rules = rules
            .iter()
            .map(|r| {
                let from = r.from_pattern.trim();
                Rule {
                    pattern: if from == "*" {
                        Pattern::Any
                    } else {
                        Pattern::Text(from.to_owned())
                    },
                    to: Target::new(Arc::<str>::from(r.to_backend.as_str()), r.to_model.clone()),
                }
            })
            .collect();
        RuleSet { rules }
    }

    /// The backends rules send to (bounded: they come from the config).
    pub fn backends(&self) -> impl Iterator<Item = &Arc<str>> {
        self.rules.iter().map(|r| &r.to.backend)
    }

    /// The replacement for a request whose plan starts at `target`: the
    /// first rule that matches and whose target is not `target` itself (a
    /// same-target rule is skipped).
    ///
    /// A pattern matches when it is `*`, equals `backend:model` of the
    /// target exactly, or is a substring of the target's model (the model
    /// sent upstream, so a failover route's alias resolves first).
    pub fn replacement_for(&self, target: &Target) -> Option<&Target> {
        self.rules
            .iter()
            .filter(|r| r.to != *target)
            .find(|r| matches(&r.pattern, target))
            .map(|r| &r.to)
    }
}

fn matches(pattern: &Pattern, target: &Target) -> bool {
    match pattern {
        Pattern::Any => true,
        Pattern::Text(p) => is_exact(p, target) || target.model.contains(p.as_str()),
    }
}

/// `backend:model` equals the target, without building the string.
fn is_exact(pattern: &str, target: &Target) -> bool {
    pattern
        .strip_prefix(&*target.backend)
        .and_then(|rest| rest.strip_prefix(':'))
        .is_some_and(|model| model == target.model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[(&str, &str, &str)]) -> RuleSet {
        let list: Vec<ReplacementRule> = list
            .iter()
            .map(|(f, b, m)| ReplacementRule {
                from_pattern: (*f).into(),
                to_backend: (*b).into(),
                to_model: (*m).into(),
            })
            .collect();
        RuleSet::new(&list)
    }

    fn pick(set: &RuleSet, backend: &str, model: &str) -> Option<String> {
        set.replacement_for(&Target::new(backend, model))
            .map(ToString::to_string)
    }

    #[test]
    fn first_match_wins_in_order() {
        let set = rules(&[
            ("openai:gpt-4o", "x", "exact"),
            ("gpt", "y", "substring"),
            ("*", "z", "any"),
        ]);
        assert_eq!(pick(&set, "openai", "gpt-4o").as_deref(), Some("x:exact"));
        // Exact means exact: another backend or a longer model is not it.
        assert_eq!(
            pick(&set, "other", "gpt-4o").as_deref(),
            Some("y:substring")
        );
        assert_eq!(
            pick(&set, "openai", "gpt-4o-mini").as_deref(),
            Some("y:substring")
        );
        assert_eq!(pick(&set, "anthropic", "claude").as_deref(), Some("z:any"));
        // Without `*`, an unmatched model is left alone; colons in models are fine.
        let set = rules(&[("llama3:8b", "y", "m")]);
        assert_eq!(pick(&set, "ollama", "llama3:8b-q4").as_deref(), Some("y:m"));
        assert_eq!(pick(&set, "openai", "gpt-4o").as_deref(), None);
    }

    #[test]
    fn a_rule_to_the_current_target_is_skipped() {
        let set = rules(&[("*", "a", "m1"), ("*", "b", "m2")]);
        assert_eq!(pick(&set, "a", "m1").as_deref(), Some("b:m2"));
        assert_eq!(pick(&set, "b", "m2").as_deref(), Some("a:m1"));
        let set = rules(&[("m1", "a", "m1")]);
        assert_eq!(pick(&set, "a", "m1"), None);
        // Same model on another backend is a different target.
        assert_eq!(pick(&set, "c", "m1").as_deref(), Some("a:m1"));
    }
}
