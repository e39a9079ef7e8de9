//! Translation properties and golden streams.
//!
//! * Round trips: a generated conversation (system prompt, user text and
//!   images, assistant text, tool calls, tool results) translated to the other
//!   protocol and back keeps every message, tool call (id, name, exact
//!   argument bytes) and tool result; and its translation already says the
//!   same conversation in the other protocol's terms.
//! * Golden streams: realistic multi-tool SSE streams of each protocol
//!   (`tests/fixtures/translate/*.sse`) transcode to the checked-in
//!   `*.expected` output, whatever the chunk boundaries.
//!
//! Set `LLM_PROXY_BLESS=1` to rewrite the `.expected` files after a deliberate change.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::PathBuf;

use llm_proxy_core::translate::request::{anthropic_to_chat, chat_to_anthropic};
use llm_proxy_core::translate::{StreamTranscoder, Translation};
use proptest::prelude::*;
use serde_json::{Value, json};

/// One conversation item, protocol-neutral.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    System(String),
    User(Vec<Piece>),
    Assistant {
        text: String,
        calls: Vec<(String, String, String)>,
    },
    ToolResult {
        id: String,
        text: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Image(String),
}

fn push_user(items: &mut Vec<Item>, pieces: Vec<Piece>) {
    if let Some(Item::User(prev)) = items.last_mut() {
        prev.extend(pieces);
    } else {
        items.push(Item::User(pieces));
    }
}

/// The conversation an OpenAI chat request says.
fn canon_chat(req: &Value) -> Vec<Item> {
    let mut items = Vec::new();
    let mut system = Vec::new();
    for m in req["messages"].as_array().unwrap() {
        let content = &m["content"];
        match m["role"].as_str().unwrap() {
            "system" | "developer" => system.push(content.as_str().unwrap().to_owned()),
            "user" => {
                let pieces = match content {
                    Value::String(s) => vec![Piece::Text(s.clone())],
                    Value::Array(parts) => parts
                        .iter()
                        .map(|p| match p["type"].as_str().unwrap() {
                            "text" => Piece::Text(p["text"].as_str().unwrap().to_owned()),
                            _ => Piece::Image(p["image_url"]["url"].as_str().unwrap().to_owned()),
                        })
                        .collect(),
                    other => panic!("user content {other}"),
                };
                push_user(&mut items, pieces);
            }
            "assistant" => {
                let text = match content {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    Value::Array(parts) => {
                        parts.iter().map(|p| p["text"].as_str().unwrap()).collect()
                    }
                    other => panic!("assistant content {other}"),
                };
                let calls = m["tool_calls"]
                    .as_array()
                    .map(|calls| {
                        calls
                            .iter()
                            .map(|c| {
                                (
                                    c["id"].as_str().unwrap().to_owned(),
                                    c["function"]["name"].as_str().unwrap().to_owned(),
                                    c["function"]["arguments"].as_str().unwrap().to_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                items.push(Item::Assistant { text, calls });
            }
            "tool" => items.push(Item::ToolResult {
                id: m["tool_call_id"].as_str().unwrap().to_owned(),
                text: content.as_str().unwrap().to_owned(),
            }),
            other => panic!("role {other}"),
        }
    }
    if !system.is_empty() {
        items.insert(0, Item::System(system.join("\n\n")));
    }
    items
}

/// The conversation an Anthropic messages request says. Tool input is taken
/// from the raw request text so its exact bytes are compared.
fn canon_anthropic(raw: &str) -> Vec<Item> {
    let req: Value = serde_json::from_str(raw).unwrap();
    let mut items = Vec::new();
    if let Some(s) = req["system"].as_str() {
        items.push(Item::System(s.to_owned()));
    }
    // Raw inputs in document order.
    let mut inputs = raw_inputs(raw).into_iter();
    for m in req["messages"].as_array().unwrap() {
        let content = &m["content"];
        let assistant = m["role"] == "assistant";
        let blocks = match content {
            Value::String(s) if assistant => {
                items.push(Item::Assistant {
                    text: s.clone(),
                    calls: vec![],
                });
                continue;
            }
            Value::String(s) => {
                push_user(&mut items, vec![Piece::Text(s.clone())]);
                continue;
            }
            Value::Array(b) => b,
            other => panic!("content {other}"),
        };
        if assistant {
            let mut text = String::new();
            let mut calls = Vec::new();
            for b in blocks {
                match b["type"].as_str().unwrap() {
                    "text" => text.push_str(b["text"].as_str().unwrap()),
                    "tool_use" => calls.push((
                        b["id"].as_str().unwrap().to_owned(),
                        b["name"].as_str().unwrap().to_owned(),
                        inputs.next().unwrap(),
                    )),
                    other => panic!("assistant block {other}"),
                }
            }
            items.push(Item::Assistant { text, calls });
        } else {
            let mut pieces = Vec::new();
            for b in blocks {
                match b["type"].as_str().unwrap() {
                    "text" => pieces.push(Piece::Text(b["text"].as_str().unwrap().to_owned())),
                    "image" => {
                        let s = &b["source"];
                        pieces.push(Piece::Image(match s["type"].as_str().unwrap() {
                            "url" => s["url"].as_str().unwrap().to_owned(),
                            _ => format!(
                                "data:{};base64,{}",
                                s["media_type"].as_str().unwrap(),
                                s["data"].as_str().unwrap()
                            ),
                        }));
                    }
                    "tool_result" => {
                        if !pieces.is_empty() {
                            push_user(&mut items, std::mem::take(&mut pieces));
                        }
                        items.push(Item::ToolResult {
                            id: b["tool_use_id"].as_str().unwrap().to_owned(),
                            text: b["content"].as_str().unwrap().to_owned(),
                        });
                    }
                    other => panic!("user block {other}"),
                }
            }
            if !pieces.is_empty() {
                push_user(&mut items, pieces);
            }
        }
    }
    items
}

/// The raw text of every `"input":` value of `raw`, in order.
fn raw_inputs(raw: &str) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Req<'a> {
        #[serde(borrow)]
        messages: Vec<Msg<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Msg<'a> {
        #[serde(borrow)]
        content: &'a serde_json::value::RawValue,
    }
    #[derive(serde::Deserialize)]
    struct Blk<'a> {
        #[serde(borrow, default)]
        input: Option<&'a serde_json::value::RawValue>,
    }
    let req: Req<'_> = serde_json::from_str(raw).unwrap();
    let mut out = Vec::new();
    for m in req.messages {
        if let Ok(blocks) = serde_json::from_str::<Vec<Blk<'_>>>(m.content.get()) {
            out.extend(
                blocks
                    .into_iter()
                    .filter_map(|b| b.input)
                    .map(|i| i.get().to_owned()),
            );
        }
    }
    out
}

// ------------------------------------------------------------- generators

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 .,!?\"\\\\é{}\n]{1,24}"
}

fn args() -> impl Strategy<Value = String> {
    (
        prop::collection::btree_map(
            "[a-z_]{1,6}",
            prop_oneof![
                any::<i32>().prop_map(|n| json!(n)),
                text().prop_map(Value::String)
            ],
            0..4,
        ),
        any::<bool>(),
    )
        .prop_map(|(map, pretty)| {
            let v = Value::Object(map.into_iter().collect());
            if pretty {
                serde_json::to_string_pretty(&v).unwrap()
            } else {
                v.to_string()
            }
        })
}

fn piece() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => text().prop_map(|t| json!({"type": "text", "text": t})),
        1 => "[a-z]{1,8}".prop_map(|p| json!({"type": "image_url", "image_url": {"url": format!("https://img.example/{p}.png")}})),
        1 => "[A-Za-z0-9+/]{4,16}".prop_map(|d| json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{d}")}})),
    ]
}

fn user() -> impl Strategy<Value = Value> {
    prop_oneof![
        text().prop_map(|t| json!({"role": "user", "content": t})),
        prop::collection::vec(piece(), 1..4).prop_map(|p| json!({"role": "user", "content": p})),
    ]
}

/// An assistant reply: text, or tool calls (optionally with text) and their results.
fn reply(turn: usize) -> impl Strategy<Value = Vec<Value>> {
    prop_oneof![
        text().prop_map(|t| vec![json!({"role": "assistant", "content": t})]),
        (
            prop::option::of(text()),
            prop::collection::vec(("[a-z_]{1,10}", args(), text()), 1..4)
        )
            .prop_map(move |(t, calls)| {
                let mut out = vec![json!({
                    "role": "assistant",
                    "content": t,
                    "tool_calls": calls.iter().enumerate().map(|(i, (name, args, _))| json!({
                        "id": format!("call_{turn}_{i}"), "type": "function",
                        "function": {"name": name, "arguments": args},
                    })).collect::<Vec<_>>(),
                })];
                for (i, (_, _, result)) in calls.iter().enumerate() {
                    out.push(json!({"role": "tool", "tool_call_id": format!("call_{turn}_{i}"), "content": result}));
                }
                out
            }),
    ]
}

fn conversation() -> impl Strategy<Value = Value> {
    (
        prop::option::of(text()),
        prop::collection::vec((user(), prop::option::of(reply(0))), 1..5),
    )
        .prop_map(|(system, turns)| {
            let mut messages = Vec::new();
            if let Some(s) = system {
                messages.push(json!({"role": "system", "content": s}));
            }
            for (turn, (u, r)) in turns.into_iter().enumerate() {
                messages.push(u);
                for mut m in r.unwrap_or_default() {
                    // Unique call ids per turn.
                    if let Some(calls) = m["tool_calls"].as_array_mut() {
                        for c in calls {
                            c["id"] = json!(c["id"].as_str().unwrap().replace("call_0", &format!("call_{turn}")));
                        }
                    }
                    if let Some(id) = m["tool_call_id"].as_str() {
                        m["tool_call_id"] = json!(id.replace("call_0", &format!("call_{turn}")));
                    }
                    messages.push(m);
                }
            }
            json!({"model": "gpt-4o", "messages": messages, "temperature": 0.5, "stop": ["END"], "user": "u-1"})
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn openai_to_anthropic_and_back_keeps_the_conversation(req in conversation()) {
        let original = canon_chat(&req);
        let anthropic = chat_to_anthropic(req.to_string().as_bytes(), "claude-x").unwrap();
        let anthropic_text = std::str::from_utf8(&anthropic).unwrap();
        prop_assert_eq!(&canon_anthropic(anthropic_text), &original);
        let a: Value = serde_json::from_str(anthropic_text).unwrap();
        prop_assert_eq!(&a["stop_sequences"], &json!(["END"]));
        prop_assert_eq!(&a["metadata"]["user_id"], "u-1");
        prop_assert_eq!(&a["max_tokens"], 8192);
        let back = anthropic_to_chat(&anthropic, "gpt-4o", true).unwrap();
        let back: Value = serde_json::from_slice(&back).unwrap();
        prop_assert_eq!(canon_chat(&back), original);
        prop_assert_eq!(&back["stop"], &json!(["END"]));
        prop_assert_eq!(&back["user"], "u-1");
        prop_assert_eq!(&back["temperature"], 0.5);
    }

    #[test]
    fn anthropic_to_openai_and_back_keeps_the_conversation(req in conversation()) {
        // Anthropic requests are generated via the (checked) first translation.
        let anthropic = chat_to_anthropic(req.to_string().as_bytes(), "claude-x").unwrap();
        let original = canon_anthropic(std::str::from_utf8(&anthropic).unwrap());
        let chat = anthropic_to_chat(&anthropic, "gpt-4o", true).unwrap();
        prop_assert_eq!(&canon_chat(&serde_json::from_slice(&chat).unwrap()), &original);
        let again = chat_to_anthropic(&chat, "claude-x").unwrap();
        prop_assert_eq!(canon_anthropic(std::str::from_utf8(&again).unwrap()), original);
    }

    #[test]
    fn stream_output_does_not_depend_on_chunking(cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12)) {
        for (fixture, translation, include_usage) in GOLDEN {
            let input = std::fs::read(fixtures().join(fixture)).unwrap();
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            at.sort_unstable();
            let whole = transcode(*translation, *include_usage, &[&input[..]]);
            let mut parts = Vec::new();
            let mut start = 0;
            for cut in at {
                parts.push(&input[start..cut]);
                start = cut;
            }
            parts.push(&input[start..]);
            prop_assert_eq!(transcode(*translation, *include_usage, &parts), whole);
        }
    }
}

// ---------------------------------------------------------------- golden

const GOLDEN: &[(&str, Translation, bool)] = &[
    (
        "anthropic_multi_tool.sse",
        Translation::ChatToAnthropic,
        true,
    ),
    ("openai_multi_tool.sse", Translation::AnthropicToChat, false),
];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/translate")
}

/// Transcodes `parts` (fed one by one); `created` timestamps are zeroed.
fn transcode(translation: Translation, include_usage: bool, parts: &[&[u8]]) -> String {
    let mut t: StreamTranscoder = translation.stream(include_usage);
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(&t.push(p));
    }
    out.extend_from_slice(&t.finish());
    let text = String::from_utf8(out).unwrap();
    let mut clean = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find("\"created\":") {
        let (head, tail) = rest.split_at(i + "\"created\":".len());
        clean.push_str(head);
        clean.push('0');
        rest = tail.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    clean.push_str(rest);
    clean
}

#[test]
fn golden_multi_tool_streams() {
    for (fixture, translation, include_usage) in GOLDEN {
        let input = std::fs::read(fixtures().join(fixture)).unwrap();
        let out = transcode(*translation, *include_usage, &[&input[..]]);
        let expected_path = fixtures().join(fixture.replace(".sse", ".expected"));
        if std::env::var_os("LLM_PROXY_BLESS").is_some() {
            std::fs::write(&expected_path, &out).unwrap();
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap();
        assert_eq!(out, expected, "{fixture}");
        // Byte-at-a-time feeding gives the same output.
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(
            transcode(*translation, *include_usage, &bytes),
            expected,
            "{fixture} byte by byte"
        );
    }
}

#[test]
fn golden_anthropic_stream_reads_as_openai() {
    let input = std::fs::read(fixtures().join("anthropic_multi_tool.sse")).unwrap();
    let out = transcode(Translation::ChatToAnthropic, true, &[&input[..]]);
    let mut text = String::new();
    let mut args: Vec<String> = vec![String::new(); 2];
    let mut ids = Vec::new();
    let mut finish = None;
    let mut usage = None;
    let events: Vec<&str> = out.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"));
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["id"], "msg_01XFDUDYJgAACzvnptvVoYEL");
        if !v["usage"].is_null() {
            usage = Some(v["usage"].clone());
        }
        for c in v["choices"].as_array().unwrap() {
            text.push_str(c["delta"]["content"].as_str().unwrap_or(""));
            for tc in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
                let i = tc["index"].as_u64().unwrap() as usize;
                if let Some(id) = tc["id"].as_str() {
                    ids.push(id.to_owned());
                }
                args[i].push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
            }
            if let Some(f) = c["finish_reason"].as_str() {
                finish = Some(f.to_owned());
            }
        }
    }
    assert_eq!(text, "I'll check the weather in both cities — één moment.");
    assert_eq!(
        ids,
        [
            "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "toolu_01A09q90qw90lq917835lq9"
        ]
    );
    assert_eq!(
        args[0],
        r#"{"location": "San Francisco, CA", "unit": "fahrenheit"}"#
    );
    assert_eq!(args[1], r#"{"location": "Zürich"}"#);
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    assert_eq!(
        usage.unwrap(),
        json!({"prompt_tokens": 2520, "completion_tokens": 89, "total_tokens": 2609,
               "prompt_tokens_details": {"cached_tokens": 2048}})
    );
}

#[test]
fn golden_openai_stream_reads_as_anthropic() {
    let input = std::fs::read(fixtures().join("openai_multi_tool.sse")).unwrap();
    let out = transcode(Translation::AnthropicToChat, false, &[&input[..]]);
    let mut names = Vec::new();
    let mut blocks: Vec<(String, String)> = Vec::new();
    let mut open: Option<u64> = None;
    let mut stop = None;
    let mut usage = None;
    for e in out.split("\n\n").filter(|e| !e.is_empty()) {
        let (name, data) = e.split_once('\n').unwrap();
        let name = name.strip_prefix("event: ").unwrap();
        let v: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(v["type"], name);
        names.push(name.to_owned());
        match name {
            "content_block_start" => {
                assert_eq!(open, None, "blocks do not overlap");
                let i = v["index"].as_u64().unwrap();
                assert_eq!(i as usize, blocks.len());
                open = Some(i);
                let b = &v["content_block"];
                blocks.push((b["type"].as_str().unwrap().to_owned(), String::new()));
            }
            "content_block_delta" => {
                let i = v["index"].as_u64().unwrap();
                assert_eq!(open, Some(i));
                let d = &v["delta"];
                let piece = d["text"].as_str().or(d["partial_json"].as_str()).unwrap();
                blocks[i as usize].1.push_str(piece);
            }
            "content_block_stop" => {
                assert_eq!(open, v["index"].as_u64());
                open = None;
            }
            "message_delta" => {
                stop = v["delta"]["stop_reason"].as_str().map(str::to_owned);
                usage = Some(v["usage"].clone());
            }
            _ => {}
        }
    }
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    assert_eq!(
        blocks,
        [
            (
                "text".to_owned(),
                "Checking both cities — één moment.".to_owned()
            ),
            (
                "tool_use".to_owned(),
                r#"{"location": "San Francisco, CA", "unit": "fahrenheit"}"#.to_owned()
            ),
            (
                "tool_use".to_owned(),
                r#"{"location": "Zürich"}"#.to_owned()
            ),
        ]
    );
    assert_eq!(stop.as_deref(), Some("tool_use"));
    assert_eq!(
        usage.unwrap(),
        json!({"input_tokens": 472, "output_tokens": 89, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2048})
    );
}
