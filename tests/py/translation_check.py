#!/usr/bin/env python3
"""Drives the official `openai` and `anthropic` SDKs across protocols.

Usage: translation_check.py http://127.0.0.1:PORT

The proxy must route `claude:*` to an Anthropic-type backend and `gpt:*` to an
OpenAI-type backend, both pointing at the testkit mock upstream. So the OpenAI
SDK talks to an Anthropic backend and the Anthropic SDK to an OpenAI backend,
through the proxy's translation. The mock's `echo` model answers the last
user message; with tools it calls the first tool with {"query": "<last user
text>"} (compact JSON); after a tool result it answers
"Tool result received: <result>". Usage numbers are word counts.

Each tool scenario is a two-step round trip: the model asks for a tool, the
client returns the result, the model answers.

Prints `ok <scenario>` per scenario; exits 1 on the first failure.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any, Callable

import anthropic
import openai

# Shared with the same-protocol SDK checks (this script's folder is on sys.path).
from sdk_check import (
    ANTHROPIC_TOOLS,
    OPENAI_TOOLS,
    PROMPT,
    PROMPT_WORDS,
    TIMEOUT,
    TOOL_ARGS,
    TOOL_ARGS_WORDS,
    CheckFailed,
    _text,
    _tool_use,
    check,
    eq,
    validated,
)

RESULT = "sunny and warm"
ANSWER = f"Tool result received: {RESULT}"


# --------------------------------------------------------------------------
# OpenAI SDK → Anthropic backend
# --------------------------------------------------------------------------

MODEL_A = "claude:echo"


def chat_json(oa: openai.OpenAI) -> None:
    r = oa.chat.completions.create(
        model=MODEL_A, messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": PROMPT}]
    )
    validated(r)
    eq(r.object, "chat.completion", "object")
    eq(r.choices[0].message.content, PROMPT, "content")
    eq(r.choices[0].finish_reason, "stop", "finish_reason")
    assert r.usage is not None
    eq(r.usage.prompt_tokens, PROMPT_WORDS + 2, "usage.prompt_tokens (system + user words)")
    eq(r.usage.completion_tokens, PROMPT_WORDS, "usage.completion_tokens")
    eq(r.usage.total_tokens, 2 * PROMPT_WORDS + 2, "usage.total_tokens")


def chat_stream(oa: openai.OpenAI, include_usage: bool) -> None:
    kwargs: dict[str, Any] = {}
    if include_usage:
        kwargs["stream_options"] = {"include_usage": True}
    stream = oa.chat.completions.create(
        model=MODEL_A, messages=[{"role": "user", "content": PROMPT}], stream=True, **kwargs
    )
    text = ""
    finish = None
    usage = None
    for chunk in stream:
        validated(chunk)
        eq(chunk.object, "chat.completion.chunk", "chunk.object")
        if chunk.usage is not None:
            usage = chunk.usage
            eq(chunk.choices, [], "usage chunk has no choices")
        for choice in chunk.choices:
            if choice.delta.content:
                text += choice.delta.content
            if choice.finish_reason:
                finish = choice.finish_reason
    eq(text, PROMPT, "concatenated deltas")
    eq(finish, "stop", "finish_reason")
    if include_usage:
        check(usage is not None, "usage chunk")
        assert usage is not None
        eq(usage.prompt_tokens, PROMPT_WORDS, "usage.prompt_tokens")
        eq(usage.completion_tokens, PROMPT_WORDS, "usage.completion_tokens")
    else:
        eq(usage, None, "no usage chunk unless asked for")


def _chat_tool_step1(oa: openai.OpenAI, stream: bool) -> tuple[str, str]:
    """Returns (call id, arguments) of the tool call the model asks for."""
    messages: Any = [{"role": "user", "content": PROMPT}]
    if not stream:
        r = oa.chat.completions.create(model=MODEL_A, messages=messages, tools=OPENAI_TOOLS)
        validated(r)
        eq(r.choices[0].finish_reason, "tool_calls", "step 1 finish_reason")
        calls = r.choices[0].message.tool_calls or []
        eq(len(calls), 1, "tool call count")
        eq(calls[0].type, "function", "tool call type")
        eq(calls[0].function.name, "search", "tool name")
        assert r.usage is not None
        eq(r.usage.prompt_tokens, PROMPT_WORDS, "step 1 usage.prompt_tokens")
        eq(r.usage.completion_tokens, TOOL_ARGS_WORDS, "step 1 usage.completion_tokens")
        return calls[0].id, calls[0].function.arguments
    chunks = oa.chat.completions.create(
        model=MODEL_A, messages=messages, tools=OPENAI_TOOLS, stream=True,
        stream_options={"include_usage": True},
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    pieces = 0
    usage = None
    for chunk in chunks:
        validated(chunk)
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.finish_reason:
                finish = choice.finish_reason
            for tc in choice.delta.tool_calls or []:
                c = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                c["id"] += tc.id or ""
                if tc.function is not None:
                    c["name"] += tc.function.name or ""
                    if tc.function.arguments:
                        c["arguments"] += tc.function.arguments
                        pieces += 1
    eq(sorted(calls), [0], "tool call indexes")
    eq(calls[0]["name"], "search", "tool name")
    check(pieces >= 2, f"arguments streamed in pieces, got {pieces}")
    eq(finish, "tool_calls", "step 1 finish_reason")
    assert usage is not None
    eq(usage.completion_tokens, TOOL_ARGS_WORDS, "step 1 usage.completion_tokens")
    return calls[0]["id"], calls[0]["arguments"]


def chat_tool_round_trip(oa: openai.OpenAI, stream: bool) -> None:
    call_id, args = _chat_tool_step1(oa, stream)
    check(bool(call_id), "tool call id")
    eq(args, TOOL_ARGS, "tool arguments (exact JSON)")
    messages: Any = [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": "search", "arguments": args}}
        ]},
        {"role": "tool", "tool_call_id": call_id, "content": RESULT},
    ]
    if not stream:
        r = oa.chat.completions.create(model=MODEL_A, messages=messages, tools=OPENAI_TOOLS)
        validated(r)
        eq(r.choices[0].message.content, ANSWER, "step 2 answer")
        eq(r.choices[0].finish_reason, "stop", "step 2 finish_reason")
        assert r.usage is not None
        eq(r.usage.prompt_tokens, PROMPT_WORDS + len(RESULT.split()), "step 2 usage.prompt_tokens")
        eq(r.usage.completion_tokens, len(ANSWER.split()), "step 2 usage.completion_tokens")
        return
    text = ""
    finish = None
    for chunk in oa.chat.completions.create(
        model=MODEL_A, messages=messages, tools=OPENAI_TOOLS, stream=True
    ):
        validated(chunk)
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    eq(text, ANSWER, "step 2 streamed answer")
    eq(finish, "stop", "step 2 finish_reason")


def chat_untranslatable(oa: openai.OpenAI) -> None:
    try:
        oa.chat.completions.create(
            model=MODEL_A, messages=[{"role": "user", "content": PROMPT}], n=2
        )
    except openai.BadRequestError as e:
        eq(e.status_code, 400, "status")
        check("n > 1" in str(e), f"error names the feature: {e}")
    else:
        raise CheckFailed("n=2 to an Anthropic backend was not rejected")
    try:
        oa.responses.create(model=MODEL_A, input=PROMPT)
    except openai.BadRequestError as e:
        check("responses" in str(e), f"error names the Responses API: {e}")
    else:
        raise CheckFailed("Responses API to an Anthropic backend was not rejected")


# --------------------------------------------------------------------------
# Anthropic SDK → OpenAI backend
# --------------------------------------------------------------------------

MODEL_O = "gpt:echo"


def messages_json(an: anthropic.Anthropic) -> None:
    m = an.messages.create(
        model=MODEL_O, max_tokens=64, system="be brief",
        messages=[{"role": "user", "content": PROMPT}],
    )
    validated(m)
    eq(m.type, "message", "type")
    eq(m.role, "assistant", "role")
    eq(_text(m), PROMPT, "text")
    eq(m.stop_reason, "end_turn", "stop_reason")
    eq(m.usage.input_tokens, PROMPT_WORDS + 2, "usage.input_tokens (system + user words)")
    eq(m.usage.output_tokens, PROMPT_WORDS, "usage.output_tokens")


def messages_stream_raw(an: anthropic.Anthropic) -> None:
    stream = an.messages.create(
        model=MODEL_O, max_tokens=64, messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    text = ""
    types = []
    usage = None
    stop_reason = None
    for event in stream:
        validated(event)
        types.append(event.type)
        if event.type == "content_block_delta" and event.delta.type == "text_delta":
            text += event.delta.text
        elif event.type == "message_delta":
            usage = event.usage
            stop_reason = event.delta.stop_reason
    eq(types[0] if types else None, "message_start", "first event")
    eq(types[-1] if types else None, "message_stop", "last event")
    eq(text, PROMPT, "concatenated text deltas")
    eq(stop_reason, "end_turn", "stop_reason")
    assert usage is not None
    eq(usage.output_tokens, PROMPT_WORDS, "message_delta usage.output_tokens")
    eq(usage.input_tokens, PROMPT_WORDS, "message_delta usage.input_tokens")


def messages_tool_round_trip(an: anthropic.Anthropic, stream: bool) -> None:
    messages: Any = [{"role": "user", "content": PROMPT}]
    if stream:
        partial = ""
        pieces = 0
        with an.messages.stream(
            model=MODEL_O, max_tokens=64, messages=messages, tools=ANTHROPIC_TOOLS
        ) as s:
            for event in s:
                if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                    partial += event.delta.partial_json
                    pieces += 1
            first = s.get_final_message()
        eq(partial, TOOL_ARGS, "reassembled input_json_delta (exact JSON)")
        check(pieces >= 2, f"input streamed in pieces, got {pieces}")
    else:
        first = an.messages.create(
            model=MODEL_O, max_tokens=64, messages=messages, tools=ANTHROPIC_TOOLS
        )
    validated(first)
    eq(first.stop_reason, "tool_use", "step 1 stop_reason")
    block = _tool_use(first)
    eq(block.name, "search", "tool name")
    eq(block.input, {"query": PROMPT}, "tool input")
    check(bool(block.id), "tool_use id")
    eq(first.usage.input_tokens, PROMPT_WORDS, "step 1 usage.input_tokens")
    eq(first.usage.output_tokens, TOOL_ARGS_WORDS, "step 1 usage.output_tokens")
    messages += [
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": block.id, "content": RESULT}
        ]},
    ]
    if stream:
        with an.messages.stream(
            model=MODEL_O, max_tokens=64, messages=messages, tools=ANTHROPIC_TOOLS
        ) as s:
            text = "".join(s.text_stream)
            second = s.get_final_message()
        eq(text, ANSWER, "step 2 text_stream")
    else:
        second = an.messages.create(
            model=MODEL_O, max_tokens=64, messages=messages, tools=ANTHROPIC_TOOLS
        )
    validated(second)
    eq(_text(second), ANSWER, "step 2 answer")
    eq(second.stop_reason, "end_turn", "step 2 stop_reason")
    eq(second.usage.input_tokens, PROMPT_WORDS + len(RESULT.split()), "step 2 usage.input_tokens")
    eq(second.usage.output_tokens, len(ANSWER.split()), "step 2 usage.output_tokens")


def messages_untranslatable(an: anthropic.Anthropic) -> None:
    try:
        an.messages.create(
            model=MODEL_O, max_tokens=64, messages=[{"role": "user", "content": PROMPT}],
            extra_body={"top_k": 5},
        )
    except anthropic.BadRequestError as e:
        eq(e.status_code, 400, "status")
        check("top_k" in str(e), f"error names the feature: {e}")
    else:
        raise CheckFailed("top_k to an OpenAI backend was not rejected")


def main() -> int:
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} http://127.0.0.1:PORT", file=sys.stderr)
        return 2
    base = sys.argv[1].rstrip("/")
    oa = openai.OpenAI(base_url=base + "/v1", api_key="test", timeout=TIMEOUT, max_retries=0)
    an = anthropic.Anthropic(base_url=base, api_key="test", timeout=TIMEOUT, max_retries=0)

    scenarios: list[tuple[str, Callable[[], None]]] = [
        ("openai-to-anthropic-json", lambda: chat_json(oa)),
        ("openai-to-anthropic-stream", lambda: chat_stream(oa, include_usage=False)),
        ("openai-to-anthropic-stream-usage", lambda: chat_stream(oa, include_usage=True)),
        ("openai-to-anthropic-tools-json", lambda: chat_tool_round_trip(oa, stream=False)),
        ("openai-to-anthropic-tools-stream", lambda: chat_tool_round_trip(oa, stream=True)),
        ("openai-to-anthropic-untranslatable", lambda: chat_untranslatable(oa)),
        ("anthropic-to-openai-json", lambda: messages_json(an)),
        ("anthropic-to-openai-stream", lambda: messages_stream_raw(an)),
        ("anthropic-to-openai-tools-json", lambda: messages_tool_round_trip(an, stream=False)),
        ("anthropic-to-openai-tools-stream", lambda: messages_tool_round_trip(an, stream=True)),
        ("anthropic-to-openai-untranslatable", lambda: messages_untranslatable(an)),
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
