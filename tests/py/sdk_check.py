#!/usr/bin/env python3
"""Drives the official `openai` and `anthropic` Python SDKs through llm-proxy.

Usage: sdk_check.py http://127.0.0.1:PORT

The proxy must route `openai:*` to an OpenAI-type backend and `anthropic:*`
to an Anthropic-type backend, both pointing at the testkit mock upstream.
The mock's `echo` model answers the last user message; usage numbers are
whitespace-separated word counts; when tools are declared it calls the first
tool with arguments {"query": "<last user text>"} (compact JSON).

Prints `ok <scenario>` per scenario; exits 1 with a message on the first failure.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any, Callable

import anthropic
import openai
import pydantic

PROMPT = "the quick brown fox jumps over the lazy dog"
PROMPT_WORDS = len(PROMPT.split())  # 9
TOOL_ARGS = json.dumps({"query": PROMPT}, separators=(",", ":"))
TOOL_ARGS_WORDS = max(1, len(TOOL_ARGS.split()))
TIMEOUT = 20.0

OPENAI_TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the web.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "other",
            "description": "Never called.",
            "parameters": {"type": "object", "properties": {}},
        },
    },
]

RESPONSES_TOOLS: Any = [
    {
        "type": "function",
        "name": "search",
        "description": "Search the web.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    },
    {
        "type": "function",
        "name": "other",
        "description": "Never called.",
        "parameters": {"type": "object", "properties": {}},
    },
]

ANTHROPIC_TOOLS: Any = [
    {
        "name": "search",
        "description": "Search the web.",
        "input_schema": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    },
    {
        "name": "other",
        "description": "Never called.",
        "input_schema": {"type": "object", "properties": {}},
    },
]


class CheckFailed(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


def eq(actual: Any, expected: Any, what: str) -> None:
    if actual != expected:
        raise CheckFailed(f"{what}: expected {expected!r}, got {actual!r}")


def validated(obj: Any) -> Any:
    """Re-validates an SDK object strictly through its own pydantic model.

    The SDKs build response objects leniently (missing required fields or wrong
    types do not raise), so this round-trips the object through
    `model_validate`, which does raise on anything the SDK's schema rejects.
    """
    check(isinstance(obj, pydantic.BaseModel), f"{type(obj)!r} is not an SDK model")
    data = obj.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return type(obj).model_validate(data)


# --------------------------------------------------------------------------
# OpenAI chat completions
# --------------------------------------------------------------------------


def chat_json(oa: openai.OpenAI) -> None:
    r = oa.chat.completions.create(
        model="openai:echo",
        messages=[{"role": "user", "content": PROMPT}],
    )
    validated(r)
    eq(r.object, "chat.completion", "object")
    eq(len(r.choices), 1, "choice count")
    eq(r.choices[0].message.role, "assistant", "role")
    eq(r.choices[0].message.content, PROMPT, "content")
    eq(r.choices[0].finish_reason, "stop", "finish_reason")
    check(r.usage is not None, "usage present")
    assert r.usage is not None
    eq(r.usage.prompt_tokens, PROMPT_WORDS, "usage.prompt_tokens")
    eq(r.usage.completion_tokens, PROMPT_WORDS, "usage.completion_tokens")
    eq(r.usage.total_tokens, 2 * PROMPT_WORDS, "usage.total_tokens")


def chat_stream(oa: openai.OpenAI) -> None:
    stream = oa.chat.completions.create(
        model="openai:echo",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text = ""
    chunks = []
    finish = None
    for chunk in stream:
        validated(chunk)
        eq(chunk.object, "chat.completion.chunk", "chunk.object")
        chunks.append(chunk)
        for choice in chunk.choices:
            if choice.delta.content:
                text += choice.delta.content
            if choice.finish_reason:
                finish = choice.finish_reason
    check(len(chunks) >= 2, f"at least two chunks, got {len(chunks)}")
    eq(text, PROMPT, "concatenated deltas")
    eq(finish, "stop", "finish_reason")
    last = chunks[-1]
    check(last.usage is not None, "final chunk carries usage")
    assert last.usage is not None
    eq(last.choices, [], "final usage chunk has no choices")
    eq(last.usage.prompt_tokens, PROMPT_WORDS, "usage.prompt_tokens")
    eq(last.usage.completion_tokens, PROMPT_WORDS, "usage.completion_tokens")
    eq(last.usage.total_tokens, 2 * PROMPT_WORDS, "usage.total_tokens")


def chat_tools_json(oa: openai.OpenAI) -> None:
    r = oa.chat.completions.create(
        model="openai:echo",
        messages=[{"role": "user", "content": PROMPT}],
        tools=OPENAI_TOOLS,
    )
    validated(r)
    msg = r.choices[0].message
    eq(r.choices[0].finish_reason, "tool_calls", "finish_reason")
    check(msg.tool_calls is not None, "tool_calls present")
    assert msg.tool_calls is not None
    eq(len(msg.tool_calls), 1, "tool call count")
    call = msg.tool_calls[0]
    eq(call.type, "function", "tool call type")
    check(bool(call.id), "tool call id")
    eq(call.function.name, "search", "tool name")
    eq(call.function.arguments, TOOL_ARGS, "tool arguments")
    eq(json.loads(call.function.arguments), {"query": PROMPT}, "parsed arguments")
    assert r.usage is not None
    eq(r.usage.prompt_tokens, PROMPT_WORDS, "usage.prompt_tokens")
    eq(r.usage.completion_tokens, TOOL_ARGS_WORDS, "usage.completion_tokens")


def chat_tools_stream(oa: openai.OpenAI) -> None:
    stream = oa.chat.completions.create(
        model="openai:echo",
        messages=[{"role": "user", "content": PROMPT}],
        tools=OPENAI_TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    usage = None
    pieces = 0
    for chunk in stream:
        validated(chunk)
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.finish_reason:
                finish = choice.finish_reason
            for tc in choice.delta.tool_calls or []:
                c = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                if tc.id:
                    c["id"] += tc.id
                if tc.function is not None:
                    if tc.function.name:
                        c["name"] += tc.function.name
                    if tc.function.arguments:
                        c["arguments"] += tc.function.arguments
                        pieces += 1
    eq(sorted(calls), [0], "tool call indexes")
    eq(calls[0]["name"], "search", "tool name")
    check(bool(calls[0]["id"]), "tool call id")
    eq(calls[0]["arguments"], TOOL_ARGS, "reassembled arguments")
    check(pieces >= 2, f"arguments streamed in pieces, got {pieces}")
    eq(finish, "tool_calls", "finish_reason")
    check(usage is not None, "usage chunk")
    assert usage is not None
    eq(usage.prompt_tokens, PROMPT_WORDS, "usage.prompt_tokens")
    eq(usage.completion_tokens, TOOL_ARGS_WORDS, "usage.completion_tokens")


# --------------------------------------------------------------------------
# OpenAI responses
# --------------------------------------------------------------------------


def responses_json(oa: openai.OpenAI) -> None:
    r = oa.responses.create(model="openai:echo", input=PROMPT)
    validated(r)
    eq(r.object, "response", "object")
    eq(r.status, "completed", "status")
    eq(r.output_text, PROMPT, "output_text")
    check(r.usage is not None, "usage present")
    assert r.usage is not None
    eq(r.usage.input_tokens, PROMPT_WORDS, "usage.input_tokens")
    eq(r.usage.output_tokens, PROMPT_WORDS, "usage.output_tokens")
    eq(r.usage.total_tokens, 2 * PROMPT_WORDS, "usage.total_tokens")


def responses_stream(oa: openai.OpenAI) -> None:
    stream = oa.responses.create(model="openai:echo", input=PROMPT, stream=True)
    text = ""
    types = []
    completed = None
    for event in stream:
        validated(event)
        types.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        elif event.type == "response.completed":
            completed = event.response
    eq(types[0] if types else None, "response.created", "first event")
    eq(types[-1] if types else None, "response.completed", "last event")
    eq(text, PROMPT, "concatenated output_text deltas")
    check(completed is not None, "response.completed event")
    assert completed is not None
    eq(completed.output_text, PROMPT, "completed output_text")
    check(completed.usage is not None, "completed usage")
    assert completed.usage is not None
    eq(completed.usage.input_tokens, PROMPT_WORDS, "usage.input_tokens")
    eq(completed.usage.output_tokens, PROMPT_WORDS, "usage.output_tokens")


def responses_stream_helper(oa: openai.OpenAI) -> None:
    with oa.responses.stream(model="openai:echo", input=PROMPT) as stream:
        text = ""
        for event in stream:
            if event.type == "response.output_text.delta":
                text += event.delta
        final = stream.get_final_response()
    eq(text, PROMPT, "concatenated output_text deltas")
    validated(final)
    eq(final.output_text, PROMPT, "final output_text")
    assert final.usage is not None
    eq(final.usage.output_tokens, PROMPT_WORDS, "usage.output_tokens")


def _function_call(r: Any) -> Any:
    calls = [item for item in r.output if item.type == "function_call"]
    eq(len(calls), 1, "function_call output items")
    return calls[0]


def responses_tools_json(oa: openai.OpenAI) -> None:
    r = oa.responses.create(model="openai:echo", input=PROMPT, tools=RESPONSES_TOOLS)
    validated(r)
    call = _function_call(r)
    eq(call.name, "search", "function name")
    eq(call.arguments, TOOL_ARGS, "function arguments")
    check(bool(call.call_id), "call_id")
    assert r.usage is not None
    eq(r.usage.output_tokens, TOOL_ARGS_WORDS, "usage.output_tokens")


def responses_tools_stream(oa: openai.OpenAI) -> None:
    stream = oa.responses.create(
        model="openai:echo", input=PROMPT, tools=RESPONSES_TOOLS, stream=True
    )
    args = ""
    done_args = None
    completed = None
    for event in stream:
        validated(event)
        if event.type == "response.function_call_arguments.delta":
            args += event.delta
        elif event.type == "response.function_call_arguments.done":
            done_args = event.arguments
        elif event.type == "response.completed":
            completed = event.response
    eq(args, TOOL_ARGS, "reassembled argument deltas")
    eq(done_args, TOOL_ARGS, "function_call_arguments.done")
    check(completed is not None, "response.completed event")
    assert completed is not None
    call = _function_call(completed)
    eq(call.name, "search", "function name")
    eq(call.arguments, TOOL_ARGS, "function arguments")


# --------------------------------------------------------------------------
# Anthropic messages
# --------------------------------------------------------------------------


def _text(message: Any) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def messages_json(an: anthropic.Anthropic) -> None:
    m = an.messages.create(
        model="anthropic:echo",
        max_tokens=64,
        messages=[{"role": "user", "content": PROMPT}],
    )
    validated(m)
    eq(m.type, "message", "type")
    eq(m.role, "assistant", "role")
    eq(_text(m), PROMPT, "text")
    eq(m.stop_reason, "end_turn", "stop_reason")
    eq(m.usage.input_tokens, PROMPT_WORDS, "usage.input_tokens")
    eq(m.usage.output_tokens, PROMPT_WORDS, "usage.output_tokens")


def messages_stream_raw(an: anthropic.Anthropic) -> None:
    stream = an.messages.create(
        model="anthropic:echo",
        max_tokens=64,
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
    )
    text = ""
    types = []
    input_tokens = None
    output_tokens = None
    stop_reason = None
    for event in stream:
        validated(event)
        types.append(event.type)
        if event.type == "message_start":
            input_tokens = event.message.usage.input_tokens
        elif event.type == "content_block_delta" and event.delta.type == "text_delta":
            text += event.delta.text
        elif event.type == "message_delta":
            output_tokens = event.usage.output_tokens
            stop_reason = event.delta.stop_reason
    eq(types[0] if types else None, "message_start", "first event")
    eq(types[-1] if types else None, "message_stop", "last event")
    eq(text, PROMPT, "concatenated text deltas")
    eq(stop_reason, "end_turn", "stop_reason")
    eq(input_tokens, PROMPT_WORDS, "message_start usage.input_tokens")
    eq(output_tokens, PROMPT_WORDS, "message_delta usage.output_tokens")


def messages_stream_helper(an: anthropic.Anthropic) -> None:
    with an.messages.stream(
        model="anthropic:echo",
        max_tokens=64,
        messages=[{"role": "user", "content": PROMPT}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    eq(text, PROMPT, "text_stream")
    validated(final)
    eq(_text(final), PROMPT, "final message text")
    eq(final.stop_reason, "end_turn", "stop_reason")
    eq(final.usage.input_tokens, PROMPT_WORDS, "usage.input_tokens")
    eq(final.usage.output_tokens, PROMPT_WORDS, "usage.output_tokens")


def _tool_use(message: Any) -> Any:
    blocks = [b for b in message.content if b.type == "tool_use"]
    eq(len(blocks), 1, "tool_use blocks")
    return blocks[0]


def messages_tools_json(an: anthropic.Anthropic) -> None:
    m = an.messages.create(
        model="anthropic:echo",
        max_tokens=64,
        messages=[{"role": "user", "content": PROMPT}],
        tools=ANTHROPIC_TOOLS,
    )
    validated(m)
    eq(m.stop_reason, "tool_use", "stop_reason")
    block = _tool_use(m)
    eq(block.name, "search", "tool name")
    eq(block.input, {"query": PROMPT}, "tool input")
    check(bool(block.id), "tool_use id")
    eq(m.usage.input_tokens, PROMPT_WORDS, "usage.input_tokens")
    eq(m.usage.output_tokens, TOOL_ARGS_WORDS, "usage.output_tokens")


def messages_tools_stream_raw(an: anthropic.Anthropic) -> None:
    stream = an.messages.create(
        model="anthropic:echo",
        max_tokens=64,
        messages=[{"role": "user", "content": PROMPT}],
        tools=ANTHROPIC_TOOLS,
        stream=True,
    )
    name = None
    partial = ""
    pieces = 0
    stop_reason = None
    for event in stream:
        validated(event)
        if event.type == "content_block_start" and event.content_block.type == "tool_use":
            name = event.content_block.name
        elif event.type == "content_block_delta" and event.delta.type == "input_json_delta":
            partial += event.delta.partial_json
            pieces += 1
        elif event.type == "message_delta":
            stop_reason = event.delta.stop_reason
    eq(name, "search", "tool name")
    eq(partial, TOOL_ARGS, "reassembled input_json_delta")
    check(pieces >= 2, f"input streamed in pieces, got {pieces}")
    eq(stop_reason, "tool_use", "stop_reason")


def messages_tools_stream_helper(an: anthropic.Anthropic) -> None:
    with an.messages.stream(
        model="anthropic:echo",
        max_tokens=64,
        messages=[{"role": "user", "content": PROMPT}],
        tools=ANTHROPIC_TOOLS,
    ) as stream:
        final = stream.get_final_message()
    validated(final)
    eq(final.stop_reason, "tool_use", "stop_reason")
    block = _tool_use(final)
    eq(block.name, "search", "tool name")
    eq(block.input, {"query": PROMPT}, "tool input")
    eq(final.usage.output_tokens, TOOL_ARGS_WORDS, "usage.output_tokens")


def main() -> int:
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} http://127.0.0.1:PORT", file=sys.stderr)
        return 2
    base = sys.argv[1].rstrip("/")
    oa = openai.OpenAI(base_url=base + "/v1", api_key="test", timeout=TIMEOUT, max_retries=0)
    an = anthropic.Anthropic(base_url=base, api_key="test", timeout=TIMEOUT, max_retries=0)

    scenarios: list[tuple[str, Callable[[], None]]] = [
        ("openai-chat-json", lambda: chat_json(oa)),
        ("openai-chat-stream", lambda: chat_stream(oa)),
        ("openai-chat-tools-json", lambda: chat_tools_json(oa)),
        ("openai-chat-tools-stream", lambda: chat_tools_stream(oa)),
        ("openai-responses-json", lambda: responses_json(oa)),
        ("openai-responses-stream", lambda: responses_stream(oa)),
        ("openai-responses-stream-helper", lambda: responses_stream_helper(oa)),
        ("openai-responses-tools-json", lambda: responses_tools_json(oa)),
        ("openai-responses-tools-stream", lambda: responses_tools_stream(oa)),
        ("anthropic-messages-json", lambda: messages_json(an)),
        ("anthropic-messages-stream-raw", lambda: messages_stream_raw(an)),
        ("anthropic-messages-stream-helper", lambda: messages_stream_helper(an)),
        ("anthropic-messages-tools-json", lambda: messages_tools_json(an)),
        ("anthropic-messages-tools-stream-raw", lambda: messages_tools_stream_raw(an)),
        ("anthropic-messages-tools-stream-helper", lambda: messages_tools_stream_helper(an)),
    ]
    for name, run in scenarios:
        try:
            run()
        except Exception as e:  # noqa: BLE001 - report any failure, then stop
            traceback.print_exc()
            print(f"FAIL {name}: {type(e).__name__}: {e}", file=sys.stderr)
            print(f"FAIL {name}", flush=True)
            return 1
        print(f"ok {name}", flush=True)
    print(f"all {len(scenarios)} scenarios passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
