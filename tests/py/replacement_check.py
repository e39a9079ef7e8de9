#!/usr/bin/env python3
"""Drives the official `openai` Python SDK through llm-proxy with model replacement on.

Usage: replacement_check.py http://127.0.0.1:PORT

The proxy must route `primary:mock` to the mock model (which answers a fixed
text) and replace it, with probability 1 and turn_count 2, by a backend whose
model is `echo` (which answers the last user message). So the six turns of one
session go original, replacement, replacement, original, replacement,
replacement: replaced turns answer with the user's text, original turns do not.
Turns 1-3 are JSON, turns 4-6 streamed.

Prints one JSON line per turn; exits 1 with a message on the first failure.
"""

from __future__ import annotations

import json
import sys

import openai

SESSION = "sdk-replacement-session"
EXPECTED = "ORRORR"
TIMEOUT = 20.0


def main() -> int:
    base = sys.argv[1].rstrip("/")
    client = openai.OpenAI(
        base_url=f"{base}/v1",
        api_key="sk-test",
        timeout=TIMEOUT,
        max_retries=0,
        default_headers={"x-session-id": SESSION},
    )
    messages: list[dict[str, str]] = []
    for turn, expected in enumerate(EXPECTED, start=1):
        text = f"turn {turn} of the replacement check"
        messages.append({"role": "user", "content": text})
        stream = turn > 3
        if stream:
            parts = []
            chunks = client.chat.completions.create(
                model="primary:mock", messages=messages, stream=True
            )
            model = None
            for chunk in chunks:
                model = model or chunk.model
                for choice in chunk.choices:
                    if choice.delta.content:
                        parts.append(choice.delta.content)
            answer = "".join(parts)
        else:
            response = client.chat.completions.create(model="primary:mock", messages=messages)
            model = response.model
            answer = response.choices[0].message.content or ""
        replaced = answer == text
        print(json.dumps({"turn": turn, "stream": stream, "model": model, "answer": answer}))
        if replaced != (expected == "R"):
            print(
                f"turn {turn}: expected {'replacement' if expected == 'R' else 'original'}, "
                f"got answer {answer!r} from model {model!r}",
                file=sys.stderr,
            )
            return 1
        if not answer:
            print(f"turn {turn}: empty answer", file=sys.stderr)
            return 1
        messages.append({"role": "assistant", "content": answer})
    print("replacement turns passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
