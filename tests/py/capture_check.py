"""Wire capture, checked by an independent decoder (cbor2).

    capture_check.py session BASE_URL PROXY_KEY
        drives the official openai and anthropic SDKs (JSON and stream) through the proxy
    capture_check.py verify CAPTURE_DIR REQUESTS KEY [KEY ...]
        decodes every capture file and checks the format (SPEC section 8)
"""

from __future__ import annotations

import glob
import json
import os
import sys
import zlib

import anthropic
import cbor2
import openai

MAGIC = "LLMPROXY-CAPTURE-V2"


def session(base: str, key: str) -> int:
    oa = openai.OpenAI(base_url=base + "/v1", api_key=key, timeout=30, max_retries=0)
    an = anthropic.Anthropic(base_url=base, api_key=key, timeout=30, max_retries=0)
    msgs = [{"role": "user", "content": "hello capture"}]
    r = oa.chat.completions.create(model="openai:echo", messages=msgs)
    assert r.choices[0].message.content, r
    text = "".join(
        c.choices[0].delta.content or ""
        for c in oa.chat.completions.create(model="openai:echo", messages=msgs, stream=True)
        if c.choices
    )
    assert text, "openai stream text"
    m = an.messages.create(model="anthropic:echo", max_tokens=64, messages=msgs)
    assert m.content[0].text, m
    with an.messages.stream(model="anthropic:echo", max_tokens=64, messages=msgs) as s:
        assert s.get_final_message().content[0].text
    print("session done", flush=True)
    return 0


def fail(msg: str) -> None:
    print(f"FAIL {msg}", flush=True)
    sys.exit(1)


def decode_file(path: str) -> tuple[dict, list[dict], bytes]:
    raw = open(path, "rb").read()
    items = []
    with open(path, "rb") as fp:
        dec = cbor2.CBORDecoder(fp)
        while fp.tell() < len(raw):
            items.append(dec.decode())
    if not items:
        fail(f"{path}: empty")
    return items[0], items[1:], raw


def verify(directory: str, requests: int, keys: list[str]) -> int:
    files = sorted(glob.glob(os.path.join(directory, "capture-*.cbor")))
    if not files:
        fail(f"no capture files in {directory}")
    entries = []
    for path in files:
        header, items, raw = decode_file(path)
        if header.get("magic") != MAGIC or header.get("version") != 2:
            fail(f"{path}: header {header!r}")
        for k in ("created_at", "session_id", "metadata"):
            if k not in header:
                fail(f"{path}: header lacks {k}")
        for key in keys:
            if key.encode() in raw:
                fail(f"{path}: raw bytes contain a credential")
        for e in items:
            if not isinstance(e.get("data"), bytes):
                fail(f"entry data is not a byte string: {e!r}")
            if e.get("dir") not in (0, 1, 2, 3) or not isinstance(e.get("ts"), float):
                fail(f"bad entry {e!r}")
            data = e["data"]
            if e.get("enc") == "zlib":
                data = zlib.decompress(data)
                if len(data) <= 128:
                    fail("compressed a payload of 128 bytes or less")
            e["plain"] = data
            for key in keys:
                if key.encode() in data:
                    fail(f"decompressed data contains a credential (dir {e['dir']})")
            for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
                name = line.split(b":", 1)[0].lower()
                if name in (b"authorization", b"x-api-key") and not line.endswith(b"[REDACTED]"):
                    fail(f"unredacted header line {line!r}")
            entries.append(e)
    by_rid: dict[str, list[dict]] = {}
    for e in entries:
        meta = e.get("meta") or {}
        if not meta.get("rid") or not meta.get("sid"):
            fail(f"entry without rid/sid: {meta!r}")
        by_rid.setdefault(meta["rid"], []).append(e)
    if len(by_rid) != requests:
        fail(f"{len(by_rid)} request ids, expected {requests}")
    streams = 0
    for rid, es in by_rid.items():
        dirs = {e["dir"] for e in es}
        if dirs != {0, 1, 2, 3}:
            fail(f"{rid}: legs {sorted(dirs)}")
        req = [e for e in es if e["dir"] == 0][0]
        body = json.loads(req["plain"].split(b"\r\n\r\n", 1)[1])
        if not any(e["dir"] == 2 and (e.get("meta") or {}).get("be") for e in es):
            fail(f"{rid}: backend request without be")
        if body.get("stream"):
            streams += 1
            for d in (1, 3):
                leg = sorted((e for e in es if e["dir"] == d), key=lambda e: e["seq"])
                metas = [e.get("meta") or {} for e in leg]
                starts = [i for i, m in enumerate(metas) if m.get("ss")]
                ends = [i for i, m in enumerate(metas) if m.get("se")]
                chunks = [m["ci"] for m in metas if "ci" in m]
                if len(starts) != 1 or len(ends) != 1 or not starts[0] < ends[0]:
                    fail(f"{rid} dir {d}: markers {starts} {ends}")
                if chunks != list(range(1, len(chunks) + 1)) or not chunks:
                    fail(f"{rid} dir {d}: chunk indexes {chunks}")
                end = metas[ends[0]]
                tb = sum(len(e["plain"]) for e in leg if "ci" in (e.get("meta") or {}))
                if end.get("tc") != len(chunks) or end.get("tb") != tb or "sdur" not in end:
                    fail(f"{rid} dir {d}: end marker {end!r} (chunks {len(chunks)}, bytes {tb})")
                if not leg[0]["plain"].startswith(b"HTTP/1.1 200"):
                    fail(f"{rid} dir {d}: first entry is not the head")
        else:
            resp = [e for e in es if e["dir"] == 3][0]
            if not resp["plain"].startswith(b"HTTP/1.1 200") or (resp.get("meta") or {}).get("sc") != 200:
                fail(f"{rid}: backend response {resp['plain'][:40]!r}")
    print(json.dumps({"files": len(files), "entries": len(entries), "requests": len(by_rid), "streams": streams}))
    print("capture checks passed", flush=True)
    return 0


def main() -> int:
    if len(sys.argv) >= 4 and sys.argv[1] == "session":
        return session(sys.argv[2].rstrip("/"), sys.argv[3])
    if len(sys.argv) >= 5 and sys.argv[1] == "verify":
        return verify(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
