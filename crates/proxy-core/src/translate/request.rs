//! Request codec: OpenAI chat ⇄ Anthropic messages.
//!
//! OpenAI → Anthropic: `system`/`developer` messages become `system`; `tool`
//! messages become `tool_result` blocks of one user turn (with any user text
//! that follows); assistant `tool_calls` become `tool_use` blocks; images
//! (`data:` URLs → base64, http(s) → url); `stop` → `stop_sequences`;
//! `max_completion_tokens`/`max_tokens` (default [`super::default_max_tokens`]);
//! temperature (clamped to Anthropic's 0–1), `top_p`; tools, `tool_choice`,
//! `parallel_tool_calls: false` → `disable_parallel_tool_use`; `user` →
//! `metadata.user_id`. Rejected: `n > 1`, `logprobs`, `top_logprobs`,
//! `logit_bias`, `response_format` other than text, audio, non-function tools,
//! non-text/image content parts.
//!
//! Anthropic → OpenAI is the mirror image; a stream asks for
//! `stream_options.include_usage` (the usage goes into `message_delta`).
//! Rejected: `top_k`, extended `thinking`, server tools, `document` blocks,
//! images inside tool results. `thinking` blocks of earlier assistant turns
//! are dropped (OpenAI has no place for them).

use bytes::Bytes;

use super::TranslateError;
use super::types::*;

const CHAT: &str = "OpenAI chat";
const MESSAGES: &str = "Anthropic messages";

fn unsupported(feature: impl Into<String>, from: &'static str, to: &'static str) -> TranslateError {
    TranslateError::Unsupported {
        feature: feature.into(),
        from,
        to,
    }
}

pub(crate) fn to_bytes<T: serde::Serialize>(v: &T) -> Result<Bytes, TranslateError> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| TranslateError::Invalid(format!("cannot encode the translated request: {e}")))
}

/// An OpenAI chat request body as an Anthropic messages request for `model`.
pub fn chat_to_anthropic(body: &[u8], model: &str) -> Result<Bytes, TranslateError> {
    let req: ChatRequest = serde_json::from_slice(body)
        .map_err(|e| TranslateError::Invalid(format!("invalid OpenAI chat request: {e}")))?;
    to_bytes(&chat_request_to_anthropic(req, model)?)
}

/// The typed form of [`chat_to_anthropic`].
pub fn chat_request_to_anthropic(
    req: ChatRequest,
    model: &str,
) -> Result<MessagesRequest, TranslateError> {
    let no = |feature: &str| Err(unsupported(feature, CHAT, MESSAGES));
    if req.n.is_some_and(|n| n > 1) {
        return no("`n > 1` (several choices)");
    }
    if req.logprobs == Some(true) || req.top_logprobs.is_some() {
        return no("`logprobs`");
    }
    if req.logit_bias.is_some() {
        return no("`logit_bias`");
    }
    if let Some(f) = &req.response_format
        && f.kind != "text"
    {
        return no(&format!("`response_format` of type `{}`", f.kind));
    }
    if req
        .modalities
        .as_ref()
        .is_some_and(|m| m.iter().any(|m| m != "text"))
    {
        return no("audio output (`modalities`)");
    }

    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<AnthropicMessage> = Vec::new();
    // Blocks of the user turn being built (tool results, then user content).
    let mut user_blocks: Vec<Block> = Vec::new();
    // A lone user string stays a string when nothing else joins its turn.
    let mut user_text: Option<String> = None;

    fn flush_user(
        messages: &mut Vec<AnthropicMessage>,
        blocks: &mut Vec<Block>,
        text: &mut Option<String>,
    ) {
        if let Some(t) = text.take() {
            if blocks.is_empty() {
                messages.push(AnthropicMessage {
                    role: "user".into(),
                    content: raw(&t),
                });
                return;
            }
            blocks.push(text_block(t));
        }
        if !blocks.is_empty() {
            messages.push(AnthropicMessage {
                role: "user".into(),
                content: raw(&std::mem::take(blocks)),
            });
        }
    }

    for (i, m) in req.messages.into_iter().enumerate() {
        let what = format!("messages[{i}].content");
        match m.role.as_str() {
            "system" | "developer" => {
                match read_content::<ChatPart>(m.content.as_deref(), &what)
                    .map_err(TranslateError::Invalid)?
                {
                    Some(Content::Text(t)) => system.push(t),
                    Some(Content::Parts(parts)) => {
                        for p in parts {
                            match (p.kind.as_str(), p.text) {
                                ("text", Some(t)) => system.push(t),
                                (kind, _) => {
                                    return no(&format!("`{kind}` parts in system messages"));
                                }
                            }
                        }
                    }
                    None => {}
                }
            }
            "user" => {
                if let Some(t) = user_text.take() {
                    user_blocks.push(text_block(t));
                }
                match read_content::<ChatPart>(m.content.as_deref(), &what)
                    .map_err(TranslateError::Invalid)?
                {
                    Some(Content::Text(t)) if user_blocks.is_empty() => user_text = Some(t),
                    Some(Content::Text(t)) => user_blocks.push(text_block(t)),
                    Some(Content::Parts(parts)) => {
                        for p in parts {
                            user_blocks.push(chat_part_to_block(p)?);
                        }
                    }
                    None => {}
                }
            }
            "tool" => {
                if let Some(t) = user_text.take() {
                    user_blocks.push(text_block(t));
                }
                let content = match read_content::<ChatPart>(m.content.as_deref(), &what)
                    .map_err(TranslateError::Invalid)?
                {
                    Some(Content::Text(t)) => Some(raw(&t)),
                    Some(Content::Parts(parts)) => {
                        let blocks = parts
                            .into_iter()
                            .map(chat_part_to_block)
                            .collect::<Result<Vec<_>, _>>()?;
                        Some(raw(&blocks))
                    }
                    None => None,
                };
                user_blocks.push(Block {
                    kind: "tool_result".into(),
                    tool_use_id: Some(m.tool_call_id.unwrap_or_default()),
                    content,
                    ..Block::default()
                });
            }
            "assistant" => {
                flush_user(&mut messages, &mut user_blocks, &mut user_text);
                let mut blocks = Vec::new();
                let mut plain: Option<String> = None;
                match read_content::<ChatPart>(m.content.as_deref(), &what)
                    .map_err(TranslateError::Invalid)?
                {
                    Some(Content::Text(t)) if !t.is_empty() => plain = Some(t),
                    Some(Content::Parts(parts)) => {
                        for p in parts {
                            match (p.kind.as_str(), p.text) {
                                ("text", Some(t)) if !t.is_empty() => blocks.push(text_block(t)),
                                ("text" | "refusal", _) => {}
                                (kind, _) => {
                                    return no(&format!("`{kind}` parts in assistant messages"));
                                }
                            }
                        }
                    }
                    _ => {}
                }
                let calls = m.tool_calls.unwrap_or_default();
                if calls.is_empty()
                    && let Some(t) = plain
                {
                    messages.push(AnthropicMessage {
                        role: "assistant".into(),
                        content: raw(&t),
                    });
                    continue;
                }
                if let Some(t) = plain {
                    blocks.push(text_block(t));
                }
                for call in calls {
                    blocks.push(Block {
                        kind: "tool_use".into(),
                        id: Some(call.id),
                        name: Some(call.function.name),
                        input: Some(arguments_to_input(&call.function.arguments)),
                        ..Block::default()
                    });
                }
                if !blocks.is_empty() {
                    messages.push(AnthropicMessage {
                        role: "assistant".into(),
                        content: raw(&blocks),
                    });
                }
            }
            other => {
                return Err(TranslateError::Invalid(format!(
                    "messages[{i}].role `{other}` is not an OpenAI chat role"
                )));
            }
        }
    }
    flush_user(&mut messages, &mut user_blocks, &mut user_text);

    let tools = match req.tools {
        None => None,
        Some(tools) => Some(
            tools
                .into_iter()
                .map(|t| match (t.kind.as_str(), t.function) {
                    ("function", Some(f)) => Ok(AnthropicTool {
                        kind: None,
                        name: f.name,
                        description: f.description,
                        input_schema: Some(f.parameters.unwrap_or_else(|| {
                            serde_json::value::RawValue::from_string(
                                r#"{"type":"object","properties":{}}"#.to_owned(),
                            )
                            .unwrap_or_else(|_| empty_object())
                        })),
                    }),
                    (kind, _) => Err(unsupported(
                        format!("tools of type `{kind}`"),
                        CHAT,
                        MESSAGES,
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let mut tool_choice = match req.tool_choice {
        None => None,
        Some(ChatToolChoice::Mode(mode)) => Some(AnthropicToolChoice {
            kind: match mode.as_str() {
                "auto" => "auto",
                "none" => "none",
                "required" => "any",
                other => {
                    return Err(TranslateError::Invalid(format!(
                        "unknown tool_choice `{other}`"
                    )));
                }
            }
            .into(),
            name: None,
            disable_parallel_tool_use: None,
        }),
        Some(ChatToolChoice::Named { function, .. }) => Some(AnthropicToolChoice {
            kind: "tool".into(),
            name: Some(function.name),
            disable_parallel_tool_use: None,
        }),
    };
    if req.parallel_tool_calls == Some(false) && tools.is_some() {
        let choice = tool_choice.get_or_insert_with(|| AnthropicToolChoice {
            kind: "auto".into(),
            name: None,
            disable_parallel_tool_use: None,
        });
        if choice.kind != "none" {
            choice.disable_parallel_tool_use = Some(true);
        }
    }
    let stop_sequences = req.stop.map(|s| match s {
        Stop::One(s) => vec![s],
        Stop::Many(v) => v,
    });

    Ok(MessagesRequest {
        model: model.to_owned(),
        max_tokens: Some(
            req.max_completion_tokens
                .or(req.max_tokens)
                .unwrap_or_else(|| super::default_max_tokens(model)),
        ),
        system: (!system.is_empty()).then(|| raw(&system.join("\n\n"))),
        messages,
        stop_sequences: stop_sequences.filter(|s| !s.is_empty()),
        temperature: req.temperature.map(|t| t.clamp(0.0, 1.0)),
        top_p: req.top_p,
        top_k: None,
        stream: req.stream,
        tools,
        tool_choice,
        metadata: req.user.map(|u| Metadata { user_id: Some(u) }),
        thinking: None,
    })
}

fn text_block(text: String) -> Block {
    Block {
        kind: "text".into(),
        text: Some(text),
        ..Block::default()
    }
}

fn chat_part_to_block(p: ChatPart) -> Result<Block, TranslateError> {
    match p.kind.as_str() {
        "text" => Ok(text_block(p.text.unwrap_or_default())),
        "image_url" => {
            let url = p.image_url.map(|i| i.url).unwrap_or_default();
            Ok(Block {
                kind: "image".into(),
                source: Some(image_source(&url)?),
                ..Block::default()
            })
        }
        other => Err(unsupported(
            format!("`{other}` content parts"),
            CHAT,
            MESSAGES,
        )),
    }
}

/// `data:<mime>;base64,<data>` → base64 source; anything else → url source.
fn image_source(url: &str) -> Result<ImageSource, TranslateError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((meta, data)) = rest.split_once(',') else {
            return Err(TranslateError::Invalid("malformed data: image URL".into()));
        };
        let Some(mime) = meta.strip_suffix(";base64") else {
            return Err(unsupported(
                "data: image URLs that are not base64",
                CHAT,
                MESSAGES,
            ));
        };
        return Ok(ImageSource {
            kind: "base64".into(),
            media_type: Some(mime.to_owned()),
            data: Some(data.to_owned()),
            url: None,
        });
    }
    Ok(ImageSource {
        kind: "url".into(),
        url: Some(url.to_owned()),
        ..ImageSource::default()
    })
}

/// An Anthropic messages request body as an OpenAI chat request for
/// `model`. `stream_usage`: a streamed request asks the backend for a usage
/// chunk (`stream_options.include_usage`); the backend's
/// `request_stream_usage = false` turns it off.
pub fn anthropic_to_chat(
    body: &[u8],
    model: &str,
    stream_usage: bool,
) -> Result<Bytes, TranslateError> {
    let req: MessagesRequest = serde_json::from_slice(body)
        .map_err(|e| TranslateError::Invalid(format!("invalid Anthropic messages request: {e}")))?;
    to_bytes(&anthropic_request_to_chat(req, model, stream_usage)?)
}

/// `stream_options` of a translated OpenAI request: `include_usage` only for
/// a stream whose backend may be asked for usage; otherwise none at all.
pub(crate) fn stream_options(stream: bool, stream_usage: bool) -> Option<StreamOptions> {
    (stream && stream_usage).then_some(StreamOptions {
        include_usage: true,
    })
}

/// The typed form of [`anthropic_to_chat`].
pub fn anthropic_request_to_chat(
    req: MessagesRequest,
    model: &str,
    stream_usage: bool,
) -> Result<ChatRequest, TranslateError> {
    let no = |feature: &str| Err(unsupported(feature, MESSAGES, CHAT));
    if req.top_k.is_some() {
        return no("`top_k`");
    }
    if let Some(t) = &req.thinking
        && t.kind != "disabled"
    {
        return no("extended `thinking`");
    }
    let mut messages = Vec::new();
    match read_content::<Block>(req.system.as_deref(), "system").map_err(TranslateError::Invalid)? {
        Some(Content::Text(t)) => messages.push(chat_message("system", Some(raw(&t)))),
        Some(Content::Parts(blocks)) => {
            let texts: Vec<String> = blocks.into_iter().filter_map(|b| b.text).collect();
            messages.push(chat_message("system", Some(raw(&texts.join("\n\n")))));
        }
        None => {}
    }
    for (i, m) in req.messages.into_iter().enumerate() {
        let what = format!("messages[{i}].content");
        let content =
            read_content::<Block>(Some(&m.content), &what).map_err(TranslateError::Invalid)?;
        match (m.role.as_str(), content) {
            (role @ ("user" | "assistant"), Some(Content::Text(t))) => {
                messages.push(chat_message(role, Some(raw(&t))));
            }
            (_, None) => {}
            ("user", Some(Content::Parts(blocks))) => {
                let mut parts = Vec::new();
                for b in blocks {
                    match b.kind.as_str() {
                        "tool_result" => messages.push(tool_result_to_message(b)?),
                        _ => parts.push(block_to_chat_part(b)?),
                    }
                }
                if !parts.is_empty() {
                    messages.push(chat_message("user", Some(raw(&parts))));
                }
            }
            ("assistant", Some(Content::Parts(blocks))) => {
                let mut text = String::new();
                let mut calls = Vec::new();
                for b in blocks {
                    match b.kind.as_str() {
                        "text" => text.push_str(b.text.as_deref().unwrap_or_default()),
                        "tool_use" => calls.push(ChatToolCall {
                            id: b.id.unwrap_or_default(),
                            kind: "function".into(),
                            function: FunctionCall {
                                name: b.name.unwrap_or_default(),
                                arguments: b
                                    .input
                                    .map_or_else(|| "{}".to_owned(), |r| r.get().to_owned()),
                            },
                        }),
                        "thinking" | "redacted_thinking" => {}
                        other => return no(&format!("`{other}` blocks in assistant messages")),
                    }
                }
                let mut msg = chat_message("assistant", (!text.is_empty()).then(|| raw(&text)));
                msg.tool_calls = (!calls.is_empty()).then_some(calls);
                messages.push(msg);
            }
            (other, _) => {
                return Err(TranslateError::Invalid(format!(
                    "messages[{i}].role `{other}` is not an Anthropic role"
                )));
            }
        }
    }

    let tools = match req.tools {
        None => None,
        Some(tools) => Some(
            tools
                .into_iter()
                .map(|t| match t.kind.as_deref() {
                    None | Some("custom") => Ok(ChatTool {
                        kind: "function".into(),
                        function: Some(FunctionDef {
                            name: t.name,
                            description: t.description,
                            parameters: t.input_schema,
                        }),
                    }),
                    Some(kind) => Err(unsupported(
                        format!("server tools of type `{kind}`"),
                        MESSAGES,
                        CHAT,
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let mut parallel_tool_calls = None;
    let tool_choice = match req.tool_choice {
        None => None,
        Some(c) => {
            if c.disable_parallel_tool_use == Some(true) {
                parallel_tool_calls = Some(false);
            }
            Some(match c.kind.as_str() {
                "auto" => ChatToolChoice::Mode("auto".into()),
                "any" => ChatToolChoice::Mode("required".into()),
                "none" => ChatToolChoice::Mode("none".into()),
                "tool" => ChatToolChoice::Named {
                    kind: "function".into(),
                    function: FunctionName {
                        name: c.name.unwrap_or_default(),
                    },
                },
                other => {
                    return Err(TranslateError::Invalid(format!(
                        "unknown tool_choice type `{other}`"
                    )));
                }
            })
        }
    };
    let stop = req.stop_sequences.filter(|s| !s.is_empty()).map(Stop::Many);
    Ok(ChatRequest {
        model: model.to_owned(),
        messages,
        stream: req.stream,
        stream_options: stream_options(req.stream, stream_usage),
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        stop,
        tools,
        tool_choice,
        parallel_tool_calls,
        user: req.metadata.and_then(|m| m.user_id),
        ..ChatRequest::default()
    })
}

fn chat_message(role: &str, content: Option<Raw>) -> ChatMessage {
    ChatMessage {
        role: role.to_owned(),
        content,
        ..ChatMessage::default()
    }
}

fn tool_result_to_message(b: Block) -> Result<ChatMessage, TranslateError> {
    let text = match read_content::<Block>(b.content.as_deref(), "tool_result.content")
        .map_err(TranslateError::Invalid)?
    {
        None => String::new(),
        Some(Content::Text(t)) => t,
        Some(Content::Parts(blocks)) => {
            let mut texts = Vec::new();
            for inner in blocks {
                match (inner.kind.as_str(), inner.text) {
                    ("text", Some(t)) => texts.push(t),
                    (kind, _) => {
                        return Err(unsupported(
                            format!("`{kind}` blocks inside tool results"),
                            MESSAGES,
                            CHAT,
                        ));
                    }
                }
            }
            texts.join("\n")
        }
    };
    let mut msg = chat_message("tool", Some(raw(&text)));
    msg.tool_call_id = b.tool_use_id;
    Ok(msg)
}

fn block_to_chat_part(b: Block) -> Result<ChatPart, TranslateError> {
    match b.kind.as_str() {
        "text" => Ok(ChatPart {
            kind: "text".into(),
            text: Some(b.text.unwrap_or_default()),
            image_url: None,
        }),
        "image" => {
            let src = b.source.unwrap_or_default();
            let url = match src.kind.as_str() {
                "base64" => format!(
                    "data:{};base64,{}",
                    src.media_type.unwrap_or_default(),
                    src.data.unwrap_or_default()
                ),
                "url" => src.url.unwrap_or_default(),
                other => {
                    return Err(unsupported(
                        format!("image sources of type `{other}`"),
                        MESSAGES,
                        CHAT,
                    ));
                }
            };
            Ok(ChatPart {
                kind: "image_url".into(),
                text: None,
                image_url: Some(ImageUrl { url }),
            })
        }
        other => Err(unsupported(
            format!("`{other}` content blocks"),
            MESSAGES,
            CHAT,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn to_anthropic(req: Value) -> Result<Value, TranslateError> {
        chat_to_anthropic(req.to_string().as_bytes(), "claude-3-haiku-20240307")
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

    fn to_chat(req: Value) -> Result<Value, TranslateError> {
        anthropic_to_chat(req.to_string().as_bytes(), "gpt-4o", true)
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

    #[test]
    fn openai_knobs_map_to_anthropic() {
        let a = to_anthropic(json!({"model": "x", "messages": [
                {"role": "developer", "content": "rules"},
                {"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": "required", "parallel_tool_calls": false,
            "temperature": 1.7, "stop": "END", "max_tokens": 100}))
        .unwrap();
        assert_eq!(a["system"], "rules");
        assert_eq!(a["max_tokens"], 100);
        assert_eq!(a["temperature"], 1.0);
        assert_eq!(a["stop_sequences"], json!(["END"]));
        assert_eq!(
            a["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            a["tools"][0]["input_schema"],
            json!({"type": "object", "properties": {}})
        );
        let content = &a["messages"][0]["content"];
        assert_eq!(
            content[1]["source"],
            json!({"type": "base64", "media_type": "image/png", "data": "AAAA"})
        );
        assert_eq!(
            content[2]["source"],
            json!({"type": "url", "url": "https://x.test/a.png"})
        );
        // No max_tokens: the family default.
        let a =
            to_anthropic(json!({"model": "x", "messages": [{"role": "user", "content": "hi"}]}))
                .unwrap();
        assert_eq!(a["max_tokens"], 4096);
    }

    #[test]
    fn anthropic_knobs_map_to_openai() {
        let c = to_chat(json!({"model": "x", "max_tokens": 10, "stream": true,
            "system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            "tool_choice": {"type": "tool", "name": "f"},
            "metadata": {"user_id": "u"},
            "messages": [{"role": "user", "content": "hi"}]}))
        .unwrap();
        assert_eq!(
            c["messages"][0],
            json!({"role": "system", "content": "a\n\nb"})
        );
        assert_eq!(
            c["tool_choice"],
            json!({"type": "function", "function": {"name": "f"}})
        );
        assert_eq!(c["user"], "u");
        assert_eq!(c["max_tokens"], 10);
        assert_eq!(c["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn stream_usage_is_not_asked_of_a_backend_that_declines_it() {
        let req = json!({"model": "x", "max_tokens": 10, "stream": true,
            "messages": [{"role": "user", "content": "hi"}]});
        let c: Value = serde_json::from_slice(
            &anthropic_to_chat(req.to_string().as_bytes(), "gpt-4o", false).unwrap(),
        )
        .unwrap();
        assert_eq!(c["stream"], true);
        assert!(c.get("stream_options").is_none(), "{c}");
        // Through the per-target path the pipeline uses, too.
        let tr = super::super::Translation::AnthropicToChat;
        let mut prepared = tr.prepare(req.to_string().as_bytes()).unwrap();
        let off: Value = serde_json::from_slice(&prepared.body_for("m1", false).unwrap()).unwrap();
        assert!(off.get("stream_options").is_none(), "{off}");
        let on: Value = serde_json::from_slice(&prepared.body_for("m2", true).unwrap()).unwrap();
        assert_eq!(on["stream_options"], json!({"include_usage": true}));
        assert_eq!(on["model"], "m2");
    }

    #[test]
    fn prepared_requests_take_each_targets_model_and_default() {
        let req = json!({"messages": [{"role": "user", "content": "hi"}]});
        let tr = super::super::Translation::ChatToAnthropic;
        let mut prepared = tr.prepare(req.to_string().as_bytes()).unwrap();
        let a: Value =
            serde_json::from_slice(&prepared.body_for("claude-3-opus", true).unwrap()).unwrap();
        assert_eq!(
            (a["model"].as_str(), a["max_tokens"].as_u64()),
            (Some("claude-3-opus"), Some(4096))
        );
        let b: Value =
            serde_json::from_slice(&prepared.body_for("claude-sonnet-4-5", true).unwrap()).unwrap();
        assert_eq!(b["max_tokens"], 8192);
        let req = json!({"max_tokens": 7, "messages": [{"role": "user", "content": "hi"}]});
        let mut prepared = tr.prepare(req.to_string().as_bytes()).unwrap();
        let c: Value =
            serde_json::from_slice(&prepared.body_for("claude-3-opus", true).unwrap()).unwrap();
        assert_eq!(c["max_tokens"], 7);
    }

    #[test]
    fn broken_tool_arguments_in_history_are_kept_as_raw_text() {
        let a = to_anthropic(json!({"messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{\"city\": \"Pa"}},
                {"id": "c2", "type": "function", "function": {"name": "w", "arguments": "42"}},
                {"id": "c3", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Rome\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]}))
        .unwrap();
        let blocks = &a["messages"][1]["content"];
        assert_eq!(blocks[0]["input"], json!({"_raw": "{\"city\": \"Pa"}));
        assert_eq!(blocks[1]["input"], json!({"_raw": "42"}));
        assert_eq!(blocks[2]["input"], json!({"city": "Rome"}));
    }

    #[test]
    fn untranslatable_features_are_named() {
        let user = json!([{"role": "user", "content": "hi"}]);
        let err = |r: Result<Value, TranslateError>| r.unwrap_err().to_string();
        assert!(err(to_anthropic(json!({"messages": user, "n": 3}))).contains("`n > 1`"));
        assert!(
            err(to_anthropic(
                json!({"messages": user, "response_format": {"type": "json_schema"}})
            ))
            .contains("`response_format` of type `json_schema`")
        );
        assert!(
            err(to_anthropic(
                json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]})
            ))
            .contains("`input_audio` content parts")
        );
        assert!(err(to_chat(json!({"messages": user, "top_k": 3}))).contains("`top_k`"));
        assert!(
            err(to_chat(
                json!({"messages": user, "thinking": {"type": "enabled", "budget_tokens": 1024}})
            ))
            .contains("extended `thinking`")
        );
        assert!(
            err(to_chat(
                json!({"messages": user, "tools": [{"type": "web_search_20250305", "name": "web_search"}]})
            ))
            .contains("server tools of type `web_search_20250305`")
        );
        // `"stream": null` is accepted (as no stream), as same-protocol does.
        let a = to_anthropic(json!({"messages": user, "stream": null})).unwrap();
        assert!(a.get("stream").is_none(), "{a}");
        let c = to_chat(json!({"messages": user, "max_tokens": 5, "stream": null})).unwrap();
        assert!(c.get("stream").is_none(), "{c}");
        // Same requests without the feature translate.
        assert!(to_anthropic(json!({"messages": user, "n": 1})).is_ok());
        assert!(to_chat(json!({"messages": user, "thinking": {"type": "disabled"}})).is_ok());
    }
}
