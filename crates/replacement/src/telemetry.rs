//! Replacement metric names, in one place. Labels: `to_backend` (a backend
//! name from the rules), `kind` (`header` | `session`), `reason` (`idle` |
//! `capacity`). Never session ids or models.

/// Activations (a dice roll that hit), by `to_backend`.
pub const ACTIVATIONS_TOTAL: &str = "llm_proxy_replacement_activations_total";
/// Turns served by a replacement, by `to_backend`.
pub const REPLACED_TURNS_TOTAL: &str = "llm_proxy_replacement_turns_total";
/// Turns kept original by an opt-out, by `kind`.
pub const OPT_OUTS_TOTAL: &str = "llm_proxy_replacement_opt_outs_total";
/// Dice rolls.
pub const PROBABILITY_CHECKS_TOTAL: &str = "llm_proxy_replacement_probability_checks_total";
/// Sessions whose state is held.
pub const SESSIONS: &str = "llm_proxy_replacement_sessions";
/// Sessions forgotten, by `reason`.
pub const SESSIONS_EVICTED_TOTAL: &str = "llm_proxy_replacement_sessions_evicted_total";
