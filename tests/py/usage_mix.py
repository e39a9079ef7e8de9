#!/usr/bin/env python3
"""A fixed mix of SDK requests for the usage-tracking end-to-end test.

Usage: usage_mix.py http://127.0.0.1:PORT

Sends, in this order and with `x-mock-first-token-delay-ms: 100` and
`x-session-id: usage-mix` on every request (retries off):
  1. OpenAI chat, JSON                       -> 200
  2. OpenAI chat, stream (no include_usage)  -> 200
  3. OpenAI chat with a tool, JSON           -> 200, tool call `get_weather`
  4. Anthropic messages, JSON                -> 200
  5. Anthropic messages, stream              -> 200
  6. Anthropic messages with a tool, stream  -> 200, tool_use `get_weather`
  7. OpenAI chat with fault 429              -> RateLimitError
  8. Anthropic messages with fault 500       -> InternalServerError
Exits non-zero with a message if any step does not behave as listed.
"""

from __future__ import annotations

import sys

import anthropic
import openai

HEADERS = {"x-mock-first-token-delay-ms": "100", "x-session-id": "usage-mix"}
PROMPT = "what is the weather in Paris today"
OPENAI_TOOL = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}]
ANTHROPIC_TOOL = [{
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
}]


def main() -> None:
    base = sys.argv[1]
    oa = openai.OpenAI(base_url=base + "/v1", api_key="test", max_retries=0, timeout=20)
    an = anthropic.Anthropic(base_url=base, api_key="test", max_retries=0, timeout=20)
    msgs = [{"role": "user", "content": PROMPT}]

    r = oa.chat.completions.create(model="openai:gpt-4o-mini", messages=msgs, extra_headers=HEADERS)
    assert r.choices[0].message.content, "1: empty answer"

    text = ""
    for chunk in oa.chat.completions.create(
        model="openai:gpt-4o-mini", messages=msgs, stream=True, extra_headers=HEADERS
    ):
        assert chunk.usage is None, "2: the client did not ask for usage but got it"
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    assert text, "2: empty stream"

    r = oa.chat.completions.create(
        model="openai:gpt-4o-mini", messages=msgs, tools=OPENAI_TOOL, extra_headers=HEADERS
    )
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather", "3: no tool call"

    m = an.messages.create(
        model="anthropic:claude-haiku-4-5", max_tokens=64, messages=msgs, extra_headers=HEADERS
    )
    assert m.content[0].text, "4: empty answer"

    with an.messages.stream(
        model="anthropic:claude-haiku-4-5", max_tokens=64, messages=msgs, extra_headers=HEADERS
    ) as s:
        final = s.get_final_message()
    assert final.content[0].text, "5: empty stream"

    with an.messages.stream(
        model="anthropic:claude-haiku-4-5", max_tokens=64, messages=msgs, tools=ANTHROPIC_TOOL,
        extra_headers=HEADERS,
    ) as s:
        final = s.get_final_message()
    assert final.content[0].type == "tool_use" and final.content[0].name == "get_weather", "6: no tool_use"

    try:
        oa.chat.completions.create(
            model="openai:gpt-4o-mini", messages=msgs, extra_headers={**HEADERS, "x-mock-fault": "429"}
        )
        raise AssertionError("7: expected a 429")
    except openai.RateLimitError:
        pass

    try:
        an.messages.create(
            model="anthropic:claude-haiku-4-5", max_tokens=64, messages=msgs,
            extra_headers={**HEADERS, "x-mock-fault": "500"},
        )
        raise AssertionError("8: expected a 500")
    except anthropic.InternalServerError:
        pass
    print("ok usage mix")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - report anything, exit non-zero
        print(f"FAIL: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
