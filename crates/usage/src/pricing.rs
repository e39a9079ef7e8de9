//! Model prices and request cost.
//!
//! The bundled table is `crates/usage/data/model_prices.json` (derived from
//! litellm's price list; its licence and origin travel with it in
//! `crates/usage/data/`). Config can point at another file
//! ([`PriceTable::from_file`]) and override single models
//! ([`PriceTable::with_overrides`]).
//!
//! Cost is computed from usage normalized to OpenAI semantics (prompt tokens
//! include cached and cache-creation tokens; completion tokens include
//! reasoning tokens). A model missing from the table has no cost — `None`,
//! never a silent zero — and the record says `cost_source = "unknown"`.
//!
//! # Name matching
//!
//! [`PriceTable::lookup`] tries, in order, and stops at the first hit:
//!
//! 1. the name exactly as given;
//! 2. the name lowercased (the table is indexed case-insensitively);
//! 3. without our own `backend:` routing prefix (`openai:gpt-4o-mini`);
//!    a fine-tuned name `ft:<base>:<org>::<id>` is looked up as `ft:<base>`
//!    only (fine-tunes are priced differently from their base model);
//! 4. without vendor path prefixes, outermost first
//!    (`openrouter/anthropic/claude-sonnet-4.5` → `anthropic/claude-sonnet-4.5`
//!    → `claude-sonnet-4.5`);
//! 5. without a Bedrock region / vendor prefix and version suffix
//!    (`us.anthropic.claude-sonnet-4-5-20250929-v1:0` → `claude-sonnet-4-5-20250929`)
//!    and without a Vertex `@version` (`claude-opus-4-5@20251101`);
//! 6. Claude names with dots as dashes (`claude-sonnet-4.5` → `claude-sonnet-4-5`);
//! 7. without a date suffix (`-2024-08-06`, `-20241022`) or `-latest`.
//!
//! At every step a bare name (no `/`) also matches a table entry that only
//! exists with a vendor prefix (`gemini-2.5-pro` → `gemini/gemini-2.5-pro`),
//! provided every such entry has the same prices; when two providers price
//! the same bare name differently (`gpt-oss-120b` on cerebras and on groq) the
//! bare name is ambiguous and does not match.
//!
//! Nothing else is stripped: a variant such as `-mini`, `-pro` or `-nano` is
//! never dropped, so `gpt-4o-mini` can never be priced as `gpt-4o`, and an
//! unknown name stays unknown.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::record::BackendUsage;

/// The vendored price table, embedded at build time.
const BUNDLED_TABLE: &str = include_str!("../data/model_prices.json");

/// Prompt size above which `*_above_200k_tokens` prices apply to the whole request.
pub const LONG_CONTEXT_THRESHOLD_TOKENS: u64 = 200_000;

/// What can go wrong loading a price table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PricingError {
    /// The price file could not be read.
    #[error("price table {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The document is not a price table.
    #[error("price table{origin}: {reason}")]
    Parse {
        /// ` <path>` for a file, empty otherwise.
        origin: String,
        /// What is wrong, with the line and column for JSON errors.
        reason: String,
    },
    /// A price is negative, NaN or infinite.
    #[error(
        "price table: model {model:?} has an invalid {field} ({value}); prices are USD per token, finite and >= 0"
    )]
    InvalidPrice {
        /// The model name.
        model: String,
        /// The offending field.
        field: &'static str,
        /// Its value.
        value: f64,
    },
}

/// The prices of one model, all in USD per token.
///
/// Field names are those of the table (litellm's). As a config override it
/// is strict: only these fields are accepted, so a misspelt price is an
/// error, not a silently ignored key.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// Price of an uncached prompt token.
    pub input_cost_per_token: f64,
    /// Price of a completion token (including reasoning tokens unless
    /// `output_cost_per_reasoning_token` is set).
    pub output_cost_per_token: f64,
    /// Price of a prompt token read from the cache; the input price when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_token_cost: Option<f64>,
    /// Price of a prompt token written to the cache; the input price when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_token_cost: Option<f64>,
    /// Price of a reasoning token; the output price when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_cost_per_reasoning_token: Option<f64>,
    /// Input price when the prompt exceeds 200k tokens (applies to the whole request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_cost_per_token_above_200k_tokens: Option<f64>,
    /// Output price when the prompt exceeds 200k tokens (applies to the whole request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_cost_per_token_above_200k_tokens: Option<f64>,
}

impl ModelPrice {
    /// Checks that every price is finite and not negative.
    pub fn validate(&self, model: &str) -> Result<(), PricingError> {
        let fields = [
            ("input_cost_per_token", Some(self.input_cost_per_token)),
            ("output_cost_per_token", Some(self.output_cost_per_token)),
            (
                "cache_read_input_token_cost",
                self.cache_read_input_token_cost,
            ),
            (
                "cache_creation_input_token_cost",
                self.cache_creation_input_token_cost,
            ),
            (
                "output_cost_per_reasoning_token",
                self.output_cost_per_reasoning_token,
            ),
            (
                "input_cost_per_token_above_200k_tokens",
                self.input_cost_per_token_above_200k_tokens,
            ),
            (
                "output_cost_per_token_above_200k_tokens",
                self.output_cost_per_token_above_200k_tokens,
            ),
        ];
        for (field, value) in fields {
            if let Some(value) = value
                && !(value.is_finite() && value >= 0.0)
            {
                return Err(PricingError::InvalidPrice {
                    model: model.to_owned(),
                    field,
                    value,
                });
            }
        }
        Ok(())
    }

    /// The cost of `usage` at these prices, in USD.
    ///
    /// `usage` follows OpenAI semantics: `prompt_tokens` includes
    /// `cached_tokens` and `cache_creation_tokens`, `completion_tokens`
    /// includes `reasoning_tokens`. Inconsistent counts are clamped (cached
    /// tokens beyond the prompt, reasoning beyond the completion) rather than
    /// producing a negative cost.
    ///
    /// When the prompt exceeds 200k tokens and the model has
    /// `*_above_200k_tokens` prices, those replace the input and output
    /// prices for the whole request (as vendors bill); cache and reasoning
    /// prices, which the table does not tier, stay as they are — except that
    /// a missing cache price falls back to the (tiered) input price.
    pub fn cost(&self, usage: &TokenCounts) -> f64 {
        let long_context = usage.prompt_tokens > LONG_CONTEXT_THRESHOLD_TOKENS;
        let (input, output) = if long_context {
            (
                self.input_cost_per_token_above_200k_tokens
                    .unwrap_or(self.input_cost_per_token),
                self.output_cost_per_token_above_200k_tokens
                    .unwrap_or(self.output_cost_per_token),
            )
        } else {
            (self.input_cost_per_token, self.output_cost_per_token)
        };
        let cache_read = self.cache_read_input_token_cost.unwrap_or(input);
        let cache_write = self.cache_creation_input_token_cost.unwrap_or(input);
        let reasoning_price = self.output_cost_per_reasoning_token.unwrap_or(output);

        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let created = usage
            .cache_creation_tokens
            .min(usage.prompt_tokens - cached);
        let uncached = usage.prompt_tokens - cached - created;
        let reasoning = usage.reasoning_tokens.min(usage.completion_tokens);
        let plain_output = usage.completion_tokens - reasoning;

        uncached as f64 * input
            + cached as f64 * cache_read
            + created as f64 * cache_write
            + plain_output as f64 * output
            + reasoning as f64 * reasoning_price
    }
}

/// Token counts to price, in OpenAI semantics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCounts {
    /// All prompt tokens, including `cached_tokens` and `cache_creation_tokens`.
    pub prompt_tokens: u64,
    /// All completion tokens, including `reasoning_tokens`.
    pub completion_tokens: u64,
    /// Prompt tokens read from the cache.
    pub cached_tokens: u64,
    /// Prompt tokens written to the cache.
    pub cache_creation_tokens: u64,
    /// Completion tokens spent on reasoning.
    pub reasoning_tokens: u64,
}

impl From<&BackendUsage> for TokenCounts {
    /// Missing counts are zero.
    fn from(usage: &BackendUsage) -> Self {
        TokenCounts {
            prompt_tokens: usage.prompt_tokens.unwrap_or(0),
            completion_tokens: usage.completion_tokens.unwrap_or(0),
            cached_tokens: usage.cached_tokens.unwrap_or(0),
            cache_creation_tokens: usage.cache_creation_tokens.unwrap_or(0),
            reasoning_tokens: usage.reasoning_tokens.unwrap_or(0),
        }
    }
}

/// A table entry: the prices plus the table's descriptive fields, which are
/// accepted and ignored (`litellm_provider`, `mode`, `max_input_tokens`, …).
#[derive(Deserialize)]
struct TableEntry {
    input_cost_per_token: f64,
    output_cost_per_token: f64,
    #[serde(default)]
    cache_read_input_token_cost: Option<f64>,
    #[serde(default)]
    cache_creation_input_token_cost: Option<f64>,
    #[serde(default)]
    output_cost_per_reasoning_token: Option<f64>,
    #[serde(default)]
    input_cost_per_token_above_200k_tokens: Option<f64>,
    #[serde(default)]
    output_cost_per_token_above_200k_tokens: Option<f64>,
}

impl From<TableEntry> for ModelPrice {
    fn from(entry: TableEntry) -> Self {
        ModelPrice {
            input_cost_per_token: entry.input_cost_per_token,
            output_cost_per_token: entry.output_cost_per_token,
            cache_read_input_token_cost: entry.cache_read_input_token_cost,
            cache_creation_input_token_cost: entry.cache_creation_input_token_cost,
            output_cost_per_reasoning_token: entry.output_cost_per_reasoning_token,
            input_cost_per_token_above_200k_tokens: entry.input_cost_per_token_above_200k_tokens,
            output_cost_per_token_above_200k_tokens: entry.output_cost_per_token_above_200k_tokens,
        }
    }
}

/// Model name → prices, with the name matching described in the module docs.
///
/// Plain data: cheap to share behind an `Arc`, `Send + Sync`.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    source: Option<String>,
    /// Hashed with foldhash: every record looks its model up (a `BTreeMap`
    /// of ~2,000 names was ~800 instructions a lookup).
    models: NameMap<ModelPrice>,
    /// Lowercased name → table key.
    by_lowercase: NameMap<String>,
    /// Lowercased last path segment of prefixed keys → table key, or `None`
    /// when providers price that bare name differently.
    by_bare_name: NameMap<Option<String>>,
}

type NameMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

impl PriceTable {
    /// The table vendored in `crates/usage/data/model_prices.json`.
    pub fn bundled() -> Result<PriceTable, PricingError> {
        Self::parse(BUNDLED_TABLE, "")
    }

    /// Reads a table from a JSON document.
    ///
    /// Two shapes are accepted. Ours, `{"source": "...", "models": {name:
    /// entry}}`, is strict: every entry needs `input_cost_per_token` and
    /// `output_cost_per_token`. A bare litellm map `{name: entry}` (litellm's
    /// `model_prices_and_context_window.json` as published) is lenient:
    /// entries without per-token input and output prices (image, audio,
    /// `sample_spec`, …) are skipped.
    pub fn from_json(json: &str) -> Result<PriceTable, PricingError> {
        Self::parse(json, "")
    }

    /// Reads a table from a JSON file (see [`PriceTable::from_json`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<PriceTable, PricingError> {
        let path = path.as_ref();
        let json = std::fs::read_to_string(path).map_err(|source| PricingError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&json, &format!(" {}", path.display()))
    }

    /// Adds or replaces single models (config overrides). Keys are table
    /// names; name matching then treats them like any other entry.
    pub fn with_overrides(
        mut self,
        overrides: BTreeMap<String, ModelPrice>,
    ) -> Result<PriceTable, PricingError> {
        for (model, price) in &overrides {
            price.validate(model)?;
        }
        self.models.extend(overrides);
        self.reindex();
        Ok(self)
    }

    /// Where the table comes from (its `source` field), when it says.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// Number of priced models.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// True when no model is priced.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The prices of `model`, matched as described in the module docs.
    pub fn lookup(&self, model: &str) -> Option<&ModelPrice> {
        if let Some(price) = self.models.get(model) {
            return Some(price);
        }
        name_candidates(model)
            .iter()
            .find_map(|candidate| self.lookup_normalized(candidate))
    }

    /// The cost of `usage` for `model` in USD, or `None` when the model is
    /// not in the table (the caller records `cost_source = "unknown"`).
    pub fn cost(&self, model: &str, usage: &TokenCounts) -> Option<f64> {
        self.lookup(model).map(|price| price.cost(usage))
    }

    fn lookup_normalized(&self, lowercase: &str) -> Option<&ModelPrice> {
        let key = match self.by_lowercase.get(lowercase) {
            Some(key) => Some(key),
            None if !lowercase.contains('/') => {
                self.by_bare_name.get(lowercase).and_then(Option::as_ref)
            }
            None => None,
        }?;
        self.models.get(key)
    }

    fn parse(json: &str, origin: &str) -> Result<PriceTable, PricingError> {
        let parse_error = |reason: String| PricingError::Parse {
            origin: origin.to_owned(),
            reason,
        };
        let document: serde_json::Value =
            serde_json::from_str(json).map_err(|e| parse_error(e.to_string()))?;
        let serde_json::Value::Object(mut document) = document else {
            return Err(parse_error("expected a JSON object".to_owned()));
        };

        let (source, entries, strict) = match document.remove("models") {
            Some(serde_json::Value::Object(models)) => {
                let source = match document.remove("source") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(source)) => Some(source),
                    Some(_) => return Err(parse_error("`source` must be a string".to_owned())),
                };
                (source, models, true)
            }
            Some(_) => return Err(parse_error("`models` must be an object".to_owned())),
            None => (None, document, false),
        };

        let mut models = NameMap::default();
        for (model, entry) in entries {
            if !strict && model == "sample_spec" {
                continue;
            }
            match serde_json::from_value::<TableEntry>(entry) {
                Ok(entry) => {
                    let price = ModelPrice::from(entry);
                    price.validate(&model)?;
                    models.insert(model, price);
                }
                Err(e) if strict => return Err(parse_error(format!("model {model:?}: {e}"))),
                Err(_) => {}
            }
        }

        let mut table = PriceTable {
            source,
            models,
            ..PriceTable::default()
        };
        table.reindex();
        Ok(table)
    }

    fn reindex(&mut self) {
        self.by_lowercase.clear();
        self.by_bare_name.clear();
        // In name order, so that the choices below do not depend on hashing.
        let mut keys: Vec<&String> = self.models.keys().collect();
        keys.sort_unstable();
        for key in keys.iter().copied() {
            let lower = key.to_ascii_lowercase();
            // An exact-case key wins over another key differing only in case
            // (name order makes the choice deterministic).
            if lower == *key || !self.by_lowercase.contains_key(&lower) {
                self.by_lowercase.insert(lower.clone(), key.clone());
            }
        }
        for key in keys {
            let Some(price) = self.models.get(key) else {
                continue;
            };
            let Some((_, bare)) = key.rsplit_once('/') else {
                continue;
            };
            let bare = bare.to_ascii_lowercase();
            match self.by_bare_name.get(&bare) {
                None => {
                    self.by_bare_name.insert(bare, Some(key.clone()));
                }
                Some(Some(existing)) => {
                    let same = self.models.get(existing).is_some_and(|p| p == price);
                    if !same {
                        self.by_bare_name.insert(bare, None);
                    }
                }
                Some(None) => {}
            }
        }
    }
}

/// Lowercased names to try for `model`, most specific first (module docs,
/// steps 2–7). Duplicates are removed.
fn name_candidates(model: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |name: &str| {
        if !name.is_empty() && !out.iter().any(|seen| seen == name) {
            out.push(name.to_owned());
        }
    };

    let lower = model.trim().to_ascii_lowercase();
    push(&lower);

    // Our `backend:model` routing prefix (possibly before an `ft:` name).
    let mut name = lower.as_str();
    while let Some(rest) = strip_backend_prefix(name) {
        name = rest;
        push(name);
    }

    // Fine-tunes are priced as `ft:<base>`, never as the base model.
    if let Some(rest) = name.strip_prefix("ft:") {
        let base = rest.split(':').next().unwrap_or(rest);
        push(&format!("ft:{base}"));
        return out;
    }

    // Vendor path prefixes, outermost first.
    while let Some((_, rest)) = name.split_once('/') {
        name = rest;
        push(name);
    }

    // Bedrock `[region.]vendor.model[-vN:M]` and Vertex `model@version`.
    let mut name = name.to_owned();
    if let Some(stripped) = strip_bedrock(&name) {
        name = stripped;
        push(&name);
    }
    if let Some((model, version)) = name.split_once('@') {
        push(&format!("{model}-{version}"));
        name = model.to_owned();
        push(&name);
    }

    // `claude-sonnet-4.5` (OpenRouter spelling) is `claude-sonnet-4-5`.
    if name.starts_with("claude-") && name.contains('.') {
        name = name.replace('.', "-");
        push(&name);
    }

    // Date and `-latest` suffixes.
    while let Some(stripped) = strip_date_suffix(&name).or_else(|| name.strip_suffix("-latest")) {
        name = stripped.to_owned();
        push(&name);
    }
    out
}

/// Strips our `backend:` routing prefix (`openai:gpt-4o` → `gpt-4o`). Not an
/// `ft:` marker, and not the `:0` of a Bedrock version (`…-v1:0`).
pub(crate) fn strip_backend_prefix(name: &str) -> Option<&str> {
    let (head, rest) = name.split_once(':')?;
    if head.is_empty() || head.eq_ignore_ascii_case("ft") || rest.is_empty() {
        return None;
    }
    if is_bedrock_version(head, rest) {
        return None;
    }
    Some(rest)
}

/// `…-v1` followed by `0`: the colon of a Bedrock model version.
fn is_bedrock_version(head: &str, rest: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    head.rsplit_once("-v").is_some_and(|(_, v)| digits(v)) && digits(rest)
}

/// Vendors that prefix Bedrock model ids (`anthropic.claude-…`).
const BEDROCK_VENDORS: &[&str] = &[
    "anthropic",
    "amazon",
    "meta",
    "mistral",
    "cohere",
    "ai21",
    "deepseek",
    "openai",
    "qwen",
    "writer",
];

/// `us.anthropic.claude-sonnet-4-5-20250929-v1:0` → `claude-sonnet-4-5-20250929`.
fn strip_bedrock(name: &str) -> Option<String> {
    // An optional region (`us.`, `eu.`, `apac.`, `global.`), then the vendor.
    let mut rest = name;
    let mut model = None;
    for _ in 0..2 {
        let Some((head, tail)) = rest.split_once('.') else {
            break;
        };
        if BEDROCK_VENDORS.contains(&head) {
            model = Some(tail);
            break;
        }
        let is_region = head.len() <= 6 && head.bytes().all(|b| b.is_ascii_lowercase());
        if !is_region {
            break;
        }
        rest = tail;
    }
    // Only a Bedrock id (vendor prefix found) loses its `-v1:0` / `-v2` suffix.
    let model = model?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let model = match model.rsplit_once("-v") {
        Some((base, version)) if version.split(':').all(digits) => base,
        _ => model,
    };
    Some(model.to_owned())
}

/// Strips `-YYYY-MM-DD` or `-YYYYMMDD` (a plausible 20xx date).
fn strip_date_suffix(name: &str) -> Option<&str> {
    let mut parts = name.rsplitn(4, '-');
    if let (Some(day), Some(month), Some(year), Some(head)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
        && !head.is_empty()
        && is_date(year, month, day)
    {
        return Some(head);
    }
    let (head, date) = name.rsplit_once('-')?;
    if head.is_empty() || date.len() != 8 {
        return None;
    }
    let (year, month, day) = (date.get(..4)?, date.get(4..6)?, date.get(6..)?);
    is_date(year, month, day).then_some(head)
}

/// `YYYY`, `MM`, `DD` digits of a plausible date in 20xx.
fn is_date(year: &str, month: &str, day: &str) -> bool {
    let number = |s: &str, len: usize| {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    matches!(
        (number(year, 4), number(month, 2), number(day, 2)),
        (Some(2000..=2099), Some(1..=12), Some(1..=31))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> PriceTable {
        PriceTable::bundled().expect("bundled table parses")
    }

    fn counts(prompt: u64, completion: u64) -> TokenCounts {
        TokenCounts {
            prompt_tokens: prompt,
            completion_tokens: completion,
            ..TokenCounts::default()
        }
    }

    /// Compares costs to a relative 1e-9 (they are sums of a few products).
    #[track_caller]
    fn assert_cost(table: &PriceTable, model: &str, usage: TokenCounts, expected: f64) {
        let got = table
            .cost(model, &usage)
            .unwrap_or_else(|| panic!("{model} should be priced"));
        let tolerance = 1e-9 * expected.abs().max(1e-12);
        assert!(
            (got - expected).abs() <= tolerance,
            "{model}: cost {got} != expected {expected}"
        );
    }

    /// The key a name resolves to, compared by prices against that key.
    #[track_caller]
    fn assert_resolves(table: &PriceTable, name: &str, key: &str) {
        let expected = table
            .models
            .get(key)
            .unwrap_or_else(|| panic!("{key} in table"));
        assert_eq!(
            table.lookup(name),
            Some(expected),
            "{name} should price as {key}"
        );
    }

    #[test]
    fn bundled_table_loads_with_source_and_all_models() {
        let table = table();
        assert_eq!(table.len(), 386);
        assert!(table.source().is_some_and(|s| s.contains("litellm")));
        // The shipped file is vendored unchanged and parses strictly.
        let reparsed = PriceTable::from_json(BUNDLED_TABLE).expect("parses");
        assert_eq!(reparsed.len(), table.len());
    }

    #[test]
    fn pricing_exact_and_lowercase() {
        let table = table();
        assert_resolves(&table, "gpt-4o", "gpt-4o");
        assert_resolves(&table, "GPT-4o-Mini", "gpt-4o-mini");
        // Mixed-case table key found from a lowercase name.
        assert_resolves(&table, "minimax/minimax-m2", "minimax/MiniMax-M2");
        assert_resolves(&table, "minimax/MiniMax-M2", "minimax/MiniMax-M2");
    }

    #[test]
    fn pricing_strips_backend_and_vendor_prefixes() {
        let table = table();
        assert_resolves(&table, "openai:gpt-4o-mini", "gpt-4o-mini");
        assert_resolves(&table, "openai/gpt-4o", "gpt-4o");
        assert_resolves(&table, "anthropic/claude-sonnet-4-5", "claude-sonnet-4-5");
        assert_resolves(
            &table,
            "openrouter/anthropic/claude-haiku-4-5",
            "claude-haiku-4-5",
        );
        assert_resolves(&table, "my-backend:openai/gpt-4.1", "gpt-4.1");
        // Gemini's API prefix `models/`, and a bare name of a prefixed key.
        assert_resolves(&table, "models/gemini-2.5-pro", "gemini/gemini-2.5-pro");
        assert_resolves(&table, "gemini-2.5-pro", "gemini/gemini-2.5-pro");
        assert_resolves(&table, "grok-4.3", "xai/grok-4.3");
        assert_resolves(
            &table,
            "mistral-large-latest",
            "mistral/mistral-large-latest",
        );
        // A key whose own name has two path segments.
        assert_resolves(
            &table,
            "groq/openai/gpt-oss-120b",
            "groq/openai/gpt-oss-120b",
        );
    }

    #[test]
    fn pricing_strips_dates_and_latest_but_prefers_exact_snapshots() {
        let table = table();
        // The dated snapshot is in the table with its own (older, higher) price.
        assert_resolves(&table, "gpt-4o-2024-05-13", "gpt-4o-2024-05-13");
        assert_resolves(&table, "openai/gpt-4o-2024-05-13", "gpt-4o-2024-05-13");
        assert_eq!(
            table
                .lookup("gpt-4o-2024-05-13")
                .map(|p| p.input_cost_per_token),
            Some(5e-6)
        );
        // Unknown snapshots fall back to the undated model of the same family.
        assert_resolves(&table, "gpt-4o-mini-2099-01-01", "gpt-4o-mini");
        assert_resolves(&table, "claude-sonnet-4-5-20991231", "claude-sonnet-4-5");
        assert_resolves(
            &table,
            "claude-haiku-4-5@20251001",
            "claude-haiku-4-5-20251001",
        );
        assert_resolves(
            &table,
            "claude-opus-4-5@20251101",
            "claude-opus-4-5-20251101",
        );
        assert_resolves(&table, "claude-sonnet-4-5-latest", "claude-sonnet-4-5");
        assert_resolves(&table, "o3-mini-2025-01-31", "o3-mini-2025-01-31");
        // `-latest` entries that exist are matched as such.
        assert_resolves(&table, "gpt-5-chat-latest", "gpt-5-chat-latest");
    }

    #[test]
    fn pricing_bedrock_vertex_openrouter_and_finetune_names() {
        let table = table();
        assert_resolves(
            &table,
            "anthropic.claude-sonnet-4-5-20250929-v1:0",
            "claude-sonnet-4-5-20250929",
        );
        assert_resolves(
            &table,
            "us.anthropic.claude-haiku-4-5-20251001-v1:0",
            "claude-haiku-4-5-20251001",
        );
        assert_resolves(
            &table,
            "bedrock:global.anthropic.claude-opus-4-5-20251101-v1:0",
            "claude-opus-4-5-20251101",
        );
        assert_resolves(&table, "anthropic/claude-sonnet-4.5", "claude-sonnet-4-5");
        // Fine-tunes: priced as the fine-tune, never as the base model.
        assert_resolves(
            &table,
            "ft:gpt-4o-mini-2024-07-18:acme::abc123",
            "ft:gpt-4o-mini-2024-07-18",
        );
        assert_resolves(
            &table,
            "openai:ft:gpt-4o-mini-2024-07-18:acme:custom:abc123",
            "ft:gpt-4o-mini-2024-07-18",
        );
        assert_eq!(table.lookup("ft:gpt-4o-2099-01-01:acme::x"), None);
    }

    #[test]
    fn pricing_never_crosses_model_families() {
        let table = table();
        let gpt_4o = table.lookup("gpt-4o").copied();
        let mini = table.lookup("gpt-4o-mini").copied();
        assert_ne!(gpt_4o, mini);
        assert_resolves(&table, "gpt-4o-mini", "gpt-4o-mini");
        assert_resolves(
            &table,
            "openai/gpt-4o-mini-2024-07-18",
            "gpt-4o-mini-2024-07-18",
        );
        assert_resolves(&table, "o3-mini", "o3-mini");
        assert_resolves(&table, "gpt-5-nano", "gpt-5-nano");
        for unknown in [
            "gpt-4o-ultra",
            "gpt-4o-mini-turbo",
            "claude-sonnet-9",
            "claude-3-5-sonnet-20241022",
            "llama3:8b",
            "my-backend:unknown-model",
            "",
            "ft:",
        ] {
            assert_eq!(table.lookup(unknown), None, "{unknown} must stay unknown");
        }
        // Providers price `gpt-oss-120b` differently: the bare name is ambiguous.
        assert_eq!(table.lookup("gpt-oss-120b"), None);
        assert_resolves(&table, "cerebras/gpt-oss-120b", "cerebras/gpt-oss-120b");
        // Same prices on every provider: the bare name is fine.
        assert_resolves(&table, "kimi-k2.7-code", "dashscope/kimi-k2.7-code");
    }

    #[test]
    fn pricing_candidate_helpers() {
        assert_eq!(strip_date_suffix("gpt-4o-2024-08-06"), Some("gpt-4o"));
        assert_eq!(
            strip_date_suffix("claude-3-5-sonnet-20241022"),
            Some("claude-3-5-sonnet")
        );
        assert_eq!(strip_date_suffix("gpt-4-0613"), None);
        assert_eq!(strip_date_suffix("model-12345678"), None);
        assert_eq!(strip_date_suffix("model-2024-13-01"), None);
        assert_eq!(strip_backend_prefix("openai:gpt-4o"), Some("gpt-4o"));
        assert_eq!(strip_backend_prefix("ft:gpt-4o:org::id"), None);
        assert_eq!(strip_backend_prefix("anthropic.claude-x-v1:0"), None);
        assert_eq!(
            strip_bedrock("eu.anthropic.claude-x-20250101-v2:0").as_deref(),
            Some("claude-x-20250101")
        );
        assert_eq!(strip_bedrock("gpt-4.1"), None);
        assert_eq!(strip_bedrock("deepseek-v3"), None);
        assert_eq!(strip_bedrock("deepseek-v3:1"), None);
        assert_eq!(
            strip_bedrock("meta.llama3-70b-instruct-v1:0").as_deref(),
            Some("llama3-70b-instruct")
        );
    }

    // ---- golden costs (prices from the bundled table, hand-computed) ----

    #[test]
    fn pricing_golden_openai_gpt_4o_with_cached_tokens() {
        // gpt-4o: input 2.5e-6, cache read 1.25e-6, output 1e-5.
        // 1000 prompt of which 400 cached; 200 completion.
        // 600 × 2.5e-6 + 400 × 1.25e-6 + 200 × 1e-5 = 0.0015 + 0.0005 + 0.002
        let usage = TokenCounts {
            cached_tokens: 400,
            ..counts(1000, 200)
        };
        assert_cost(&table(), "gpt-4o", usage, 0.004);
        assert_cost(&table(), "openai:gpt-4o-2024-08-06", usage, 0.004);
    }

    #[test]
    fn pricing_golden_openai_gpt_4o_mini_with_cached_tokens() {
        // gpt-4o-mini: input 1.5e-7, cache read 7.5e-8, output 6e-7.
        // 10_000 prompt, 8_192 cached, 500 completion:
        // 1808 × 1.5e-7 + 8192 × 7.5e-8 + 500 × 6e-7
        // = 0.0002712 + 0.0006144 + 0.0003 = 0.0011856
        let usage = TokenCounts {
            cached_tokens: 8192,
            ..counts(10_000, 500)
        };
        assert_cost(&table(), "gpt-4o-mini", usage, 0.001_185_6);
        // No cached tokens: 10_000 × 1.5e-7 + 500 × 6e-7 = 0.0015 + 0.0003.
        assert_cost(&table(), "gpt-4o-mini", counts(10_000, 500), 0.0018);
    }

    #[test]
    fn pricing_golden_anthropic_sonnet_4_5_cache_read_and_creation() {
        // Anthropic reported input_tokens=100, cache_read_input_tokens=5000,
        // cache_creation_input_tokens=2000, output_tokens=300 → normalized
        // prompt = 100 + 5000 + 2000 = 7100.
        // claude-sonnet-4-5: input 3e-6, read 3e-7, write 3.75e-6, output 1.5e-5.
        // 100 × 3e-6 + 5000 × 3e-7 + 2000 × 3.75e-6 + 300 × 1.5e-5
        // = 0.0003 + 0.0015 + 0.0075 + 0.0045 = 0.0138
        let usage = TokenCounts {
            prompt_tokens: 7100,
            completion_tokens: 300,
            cached_tokens: 5000,
            cache_creation_tokens: 2000,
            reasoning_tokens: 0,
        };
        assert_cost(&table(), "claude-sonnet-4-5", usage, 0.0138);
        assert_cost(&table(), "claude-sonnet-4-5-20250929", usage, 0.0138);
        assert_cost(
            &table(),
            "anthropic:claude-sonnet-4-5-20250929",
            usage,
            0.0138,
        );
    }

    #[test]
    fn pricing_golden_anthropic_haiku_4_5_cache_read_and_creation() {
        // input_tokens=1200, cache_read=30_000, cache_creation=4_000, output=800
        // → prompt 35_200. claude-haiku-4-5: input 1e-6, read 1e-7,
        // write 1.25e-6, output 5e-6.
        // 1200 × 1e-6 + 30_000 × 1e-7 + 4000 × 1.25e-6 + 800 × 5e-6
        // = 0.0012 + 0.003 + 0.005 + 0.004 = 0.0132
        let usage = TokenCounts {
            prompt_tokens: 35_200,
            completion_tokens: 800,
            cached_tokens: 30_000,
            cache_creation_tokens: 4_000,
            reasoning_tokens: 0,
        };
        assert_cost(&table(), "claude-haiku-4-5", usage, 0.0132);
        assert_cost(&table(), "claude-haiku-4-5-20251001", usage, 0.0132);
    }

    #[test]
    fn pricing_golden_reasoning_models() {
        // o3 has no reasoning price: reasoning is billed as output.
        // input 2e-6, read 5e-7, output 8e-6; 2000 prompt (1024 cached),
        // 1500 completion of which 1200 reasoning:
        // 976 × 2e-6 + 1024 × 5e-7 + 1500 × 8e-6 = 0.001952 + 0.000512 + 0.012
        let usage = TokenCounts {
            prompt_tokens: 2000,
            completion_tokens: 1500,
            cached_tokens: 1024,
            cache_creation_tokens: 0,
            reasoning_tokens: 1200,
        };
        assert_cost(&table(), "o3", usage, 0.014_464);

        // dashscope/qwen-turbo prices reasoning separately:
        // input 5e-8, output 2e-7, reasoning 5e-7, no cache price (→ input).
        // 1000 prompt (200 cached), 600 completion of which 400 reasoning:
        // 800 × 5e-8 + 200 × 5e-8 + 200 × 2e-7 + 400 × 5e-7
        // = 0.00004 + 0.00001 + 0.00004 + 0.0002 = 0.00029
        let usage = TokenCounts {
            prompt_tokens: 1000,
            completion_tokens: 600,
            cached_tokens: 200,
            cache_creation_tokens: 0,
            reasoning_tokens: 400,
        };
        assert_cost(&table(), "dashscope/qwen-turbo", usage, 0.000_29);
        assert_cost(&table(), "qwen-turbo", usage, 0.000_29);
    }

    #[test]
    fn pricing_golden_long_context_tier() {
        // gemini/gemini-2.5-pro: input 1.25e-6 (2.5e-6 above 200k), output 1e-5
        // (1.5e-5 above 200k), cache read 1.25e-7 (not tiered).
        let table = table();
        // Exactly 200k is not above the threshold:
        // 200_000 × 1.25e-6 + 1000 × 1e-5 = 0.25 + 0.01
        assert_cost(&table, "gemini-2.5-pro", counts(200_000, 1000), 0.26);
        // 250_000 prompt (50_000 cached), 2000 completion — tier for the whole request:
        // 200_000 × 2.5e-6 + 50_000 × 1.25e-7 + 2000 × 1.5e-5
        // = 0.5 + 0.00625 + 0.03 = 0.53625
        let usage = TokenCounts {
            cached_tokens: 50_000,
            ..counts(250_000, 2000)
        };
        assert_cost(&table, "gemini/gemini-2.5-pro", usage, 0.536_25);
        // A model without tier prices keeps its prices above 200k.
        let gpt_41 = table.lookup("gpt-4.1").copied().expect("gpt-4.1");
        assert_eq!(gpt_41.input_cost_per_token_above_200k_tokens, None);
        assert_cost(
            &table,
            "gpt-4.1",
            counts(300_000, 0),
            300_000.0 * gpt_41.input_cost_per_token,
        );
    }

    #[test]
    fn pricing_unknown_model_is_none_not_zero() {
        let table = table();
        assert_eq!(
            table.cost("totally-unknown-model", &counts(1000, 1000)),
            None
        );
        assert_eq!(table.cost("gpt-4o-ultra", &counts(1000, 1000)), None);
        // A known model with zero tokens costs exactly zero.
        assert_eq!(table.cost("gpt-4o", &counts(0, 0)), Some(0.0));
    }

    #[test]
    fn pricing_inconsistent_counts_are_clamped_not_negative() {
        // More cached than prompt: everything is cache-priced, nothing negative.
        let usage = TokenCounts {
            prompt_tokens: 100,
            completion_tokens: 10,
            cached_tokens: 500,
            cache_creation_tokens: 50,
            reasoning_tokens: 99,
        };
        // gpt-4o: 100 × 1.25e-6 + 10 × 1e-5 = 0.000125 + 0.0001
        assert_cost(&table(), "gpt-4o", usage, 0.000_225);
    }

    #[test]
    fn pricing_from_backend_usage_treats_missing_as_zero() {
        let usage = BackendUsage {
            prompt_tokens: Some(1000),
            completion_tokens: Some(200),
            cached_tokens: Some(400),
            ..BackendUsage::default()
        };
        assert_cost(&table(), "gpt-4o", TokenCounts::from(&usage), 0.004);
    }

    #[test]
    fn pricing_overrides_replace_and_add_models() {
        let price = ModelPrice {
            input_cost_per_token: 1e-6,
            output_cost_per_token: 2e-6,
            cache_read_input_token_cost: None,
            cache_creation_input_token_cost: None,
            output_cost_per_reasoning_token: None,
            input_cost_per_token_above_200k_tokens: None,
            output_cost_per_token_above_200k_tokens: None,
        };
        let overrides = BTreeMap::from([
            ("gpt-4o".to_owned(), price),
            ("acme/House-Model".to_owned(), price),
        ]);
        let table = table().with_overrides(overrides).expect("valid overrides");
        // 1000 × 1e-6 + 1000 × 2e-6; cached tokens fall back to the input price.
        let usage = TokenCounts {
            cached_tokens: 500,
            ..counts(1000, 1000)
        };
        assert_cost(&table, "gpt-4o", usage, 0.003);
        assert_cost(&table, "openai:gpt-4o", usage, 0.003);
        assert_cost(&table, "house-model", usage, 0.003);
        // Untouched models keep their prices.
        assert_cost(&table, "gpt-4o-mini", counts(10_000, 500), 0.0018);
    }

    #[test]
    fn pricing_config_override_is_strict_and_validated() {
        let typo = r#"{"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, "cache_read_cost": 1e-7}"#;
        assert!(serde_json::from_str::<ModelPrice>(typo).is_err());
        let ok = r#"{"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, "cache_read_input_token_cost": 1e-7}"#;
        let price: ModelPrice = serde_json::from_str(ok).expect("valid override");
        assert_eq!(price.cache_read_input_token_cost, Some(1e-7));

        let negative = ModelPrice {
            input_cost_per_token: -1.0,
            ..price
        };
        let err = table()
            .with_overrides(BTreeMap::from([("x".to_owned(), negative)]))
            .expect_err("negative price rejected");
        assert!(err.to_string().contains("input_cost_per_token"), "{err}");
    }

    #[test]
    fn pricing_from_json_shapes_and_errors() {
        // Our shape is strict.
        let bad = r#"{"source": "s", "models": {"m": {"input_cost_per_token": 1e-6}}}"#;
        let err = PriceTable::from_json(bad).expect_err("missing output price");
        assert!(err.to_string().contains("\"m\""), "{err}");
        assert!(PriceTable::from_json("[]").is_err());
        assert!(PriceTable::from_json("{not json").is_err());

        // A bare litellm map is lenient: non-token-priced entries are skipped.
        let litellm = r#"{
            "sample_spec": {"max_tokens": "LEGACY", "input_cost_per_token": 0.0},
            "dall-e-3": {"mode": "image_generation", "output_cost_per_image": 0.04},
            "gpt-4o": {"input_cost_per_token": 2.5e-6, "output_cost_per_token": 1e-5,
                       "litellm_provider": "openai", "supports_vision": true}
        }"#;
        let table = PriceTable::from_json(litellm).expect("litellm shape");
        assert_eq!(table.len(), 1);
        assert_eq!(table.source(), None);
        assert_cost(&table, "gpt-4o", counts(1000, 100), 0.0035);
    }

    #[test]
    fn pricing_from_file_reports_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("prices.json");
        std::fs::write(
            &path,
            r#"{"models": {"m": {"input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6}}}"#,
        )
        .expect("write");
        let table = PriceTable::from_file(&path).expect("loads");
        assert_eq!(table.len(), 1);

        std::fs::write(&path, "{").expect("write");
        let err = PriceTable::from_file(&path).expect_err("truncated");
        assert!(err.to_string().contains("prices.json"), "{err}");
        let missing = PriceTable::from_file(dir.path().join("missing.json")).expect_err("missing");
        assert!(matches!(missing, PricingError::Io { .. }));
    }
}
