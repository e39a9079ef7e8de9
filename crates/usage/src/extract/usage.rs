//! Backend-reported usage objects, normalized to OpenAI semantics (see the
//! table in the module docs of `extract`).

use llm_proxy_core::Frontend;
use serde_json::Value;

use super::json::{count, money};
use crate::record::BackendUsage;

/// Normalizes one `usage` object of `protocol` to [`BackendUsage`].
///
/// The shape wins over the protocol when it is unambiguous: `prompt_tokens` /
/// `completion_tokens` keys are read as OpenAI chat, `cache_*_input_tokens`
/// keys as Anthropic, `*_tokens_details` with `input_tokens` as Responses.
/// Returns `None` when the object holds no count at all.
pub fn usage_from_json(protocol: Frontend, usage: &Value) -> Option<BackendUsage> {
    if !usage.is_object() {
        return None;
    }
    let has = |key: &str| usage.get(key).is_some_and(|v| !v.is_null());
    if has("prompt_tokens") || has("completion_tokens") {
        return openai_chat(usage);
    }
    if has("cache_read_input_tokens") || has("cache_creation_input_tokens") {
        return anthropic(usage);
    }
    if has("input_tokens_details") || has("output_tokens_details") {
        return responses(usage);
    }
    match protocol {
        Frontend::AnthropicMessages => anthropic(usage),
        Frontend::OpenAiChat | Frontend::OpenAiResponses => {
            responses(usage).or_else(|| openai_chat(usage))
        }
    }
}

fn anthropic(usage: &Value) -> Option<BackendUsage> {
    let mut merged = AnthropicUsage::default();
    merged.merge(usage);
    merged.normalized()
}

/// OpenAI Chat Completions `usage` (also OpenRouter, DeepSeek, vLLM, …).
fn openai_chat(usage: &Value) -> Option<BackendUsage> {
    let prompt_details = usage.get("prompt_tokens_details");
    let completion_details = usage.get("completion_tokens_details");
    let prompt = count(usage.get("prompt_tokens"));
    let completion = count(usage.get("completion_tokens"));
    finish(BackendUsage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: count(usage.get("total_tokens")).or_else(|| sum(prompt, completion)),
        cached_tokens: detail(prompt_details, &["cached_tokens"])
            .or_else(|| count(usage.get("prompt_cache_hit_tokens"))),
        cache_creation_tokens: detail(
            prompt_details,
            &["cache_write_tokens", "cache_creation_tokens"],
        ),
        reasoning_tokens: detail(completion_details, &["reasoning_tokens"]),
        cost: money(usage.get("cost")),
    })
}

/// OpenAI Responses `usage`.
fn responses(usage: &Value) -> Option<BackendUsage> {
    let input_details = usage.get("input_tokens_details");
    let output_details = usage.get("output_tokens_details");
    let prompt = count(usage.get("input_tokens"));
    let completion = count(usage.get("output_tokens"));
    finish(BackendUsage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: count(usage.get("total_tokens")).or_else(|| sum(prompt, completion)),
        cached_tokens: detail(input_details, &["cached_tokens"]),
        cache_creation_tokens: detail(
            input_details,
            &["cache_write_tokens", "cache_creation_tokens"],
        ),
        reasoning_tokens: detail(output_details, &["reasoning_tokens"]),
        cost: money(usage.get("cost")),
    })
}

fn detail(details: Option<&Value>, keys: &[&str]) -> Option<u64> {
    let details = details?;
    keys.iter().find_map(|key| count(details.get(*key)))
}

fn sum(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
    }
}

fn finish(usage: BackendUsage) -> Option<BackendUsage> {
    let empty = usage.prompt_tokens.is_none()
        && usage.completion_tokens.is_none()
        && usage.total_tokens.is_none()
        && usage.cost.is_none();
    (!empty).then_some(usage)
}

/// Anthropic usage merged over the events of a stream: each field is the
/// latest non-null value seen.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct AnthropicUsage {
    input: Option<u64>,
    output: Option<u64>,
    cache_read: Option<u64>,
    cache_creation: Option<u64>,
    cost: Option<f64>,
}

impl AnthropicUsage {
    /// Takes every non-null field of an Anthropic `usage` object.
    pub(crate) fn merge(&mut self, usage: &Value) {
        if !usage.is_object() {
            return;
        }
        let take = |slot: &mut Option<u64>, key: &str| {
            if let Some(n) = count(usage.get(key)) {
                *slot = Some(n);
            }
        };
        take(&mut self.input, "input_tokens");
        take(&mut self.output, "output_tokens");
        take(&mut self.cache_read, "cache_read_input_tokens");
        take(&mut self.cache_creation, "cache_creation_input_tokens");
        if let Some(cost) = money(usage.get("cost")) {
            self.cost = Some(cost);
        }
    }

    /// Normalized: prompt = input + cache read + cache creation.
    pub(crate) fn normalized(&self) -> Option<BackendUsage> {
        let prompt = match (self.input, self.cache_read, self.cache_creation) {
            (None, None, None) => None,
            (input, read, creation) => Some(
                input
                    .unwrap_or(0)
                    .saturating_add(read.unwrap_or(0))
                    .saturating_add(creation.unwrap_or(0)),
            ),
        };
        finish(BackendUsage {
            prompt_tokens: prompt,
            completion_tokens: self.output,
            total_tokens: sum(prompt, self.output),
            cached_tokens: self.cache_read,
            cache_creation_tokens: self.cache_creation,
            reasoning_tokens: None,
            cost: self.cost,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn openai_chat_with_details_and_cost() {
        let u = json!({
            "prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
            "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 192, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
            "cost": 0.0041, "is_byok": false
        });
        assert_eq!(
            usage_from_json(Frontend::OpenAiChat, &u).unwrap(),
            BackendUsage {
                prompt_tokens: Some(2006),
                completion_tokens: Some(300),
                total_tokens: Some(2306),
                cached_tokens: Some(1920),
                cache_creation_tokens: None,
                reasoning_tokens: Some(192),
                cost: Some(0.0041),
            }
        );
    }

    #[test]
    fn deepseek_cache_hit_and_missing_total() {
        let u = json!({"prompt_tokens": 100, "completion_tokens": 7,
            "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36});
        let n = usage_from_json(Frontend::OpenAiChat, &u).unwrap();
        assert_eq!(n.cached_tokens, Some(64));
        assert_eq!(n.total_tokens, Some(107));
    }

    #[test]
    fn responses_usage() {
        let u = json!({"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 1024},
            "output_tokens": 450, "output_tokens_details": {"reasoning_tokens": 384},
            "total_tokens": 1650});
        let n = usage_from_json(Frontend::OpenAiResponses, &u).unwrap();
        assert_eq!(n.prompt_tokens, Some(1200));
        assert_eq!(n.completion_tokens, Some(450));
        assert_eq!(n.total_tokens, Some(1650));
        assert_eq!(n.cached_tokens, Some(1024));
        assert_eq!(n.reasoning_tokens, Some(384));
        assert_eq!(n.cost, None);
    }

    #[test]
    fn anthropic_usage_includes_cache_in_prompt() {
        let u = json!({"input_tokens": 21, "cache_creation_input_tokens": 188,
            "cache_read_input_tokens": 2048, "output_tokens": 393,
            "service_tier": "standard"});
        let n = usage_from_json(Frontend::AnthropicMessages, &u).unwrap();
        assert_eq!(n.prompt_tokens, Some(21 + 188 + 2048));
        assert_eq!(n.completion_tokens, Some(393));
        assert_eq!(n.total_tokens, Some(21 + 188 + 2048 + 393));
        assert_eq!(n.cached_tokens, Some(2048));
        assert_eq!(n.cache_creation_tokens, Some(188));
        assert_eq!(n.reasoning_tokens, None);
        // The same object read under another protocol is still Anthropic by shape.
        assert_eq!(usage_from_json(Frontend::OpenAiChat, &u).unwrap(), n);
    }

    #[test]
    fn anthropic_merge_takes_latest_non_null() {
        let mut m = AnthropicUsage::default();
        m.merge(&json!({"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 1}));
        m.merge(&json!({"output_tokens": 40, "input_tokens": null}));
        let n = m.normalized().unwrap();
        assert_eq!(n.prompt_tokens, Some(15));
        assert_eq!(n.completion_tokens, Some(40));
        assert_eq!(n.total_tokens, Some(55));
        assert_eq!(n.cache_creation_tokens, None);
    }

    #[test]
    fn nothing_is_none() {
        assert_eq!(usage_from_json(Frontend::OpenAiChat, &json!({})), None);
        assert_eq!(usage_from_json(Frontend::OpenAiChat, &json!(null)), None);
        assert_eq!(
            usage_from_json(Frontend::AnthropicMessages, &json!([1])),
            None
        );
        assert_eq!(AnthropicUsage::default().normalized(), None);
    }
}
