"""Stream data is line-safe: U+2028, U+2029 and U+0085 travel escaped, so
clients that split lines the Unicode way (httpx's aiter_lines, Python's
str.splitlines) get whole events, and the parsed text is unchanged."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai

from tests.support.gateway import MODEL_NAME, Gateway
from tests.support.sse import data_of

TEXT = "line\u2028sep\u2029para\x85next é"


def test_unicode_line_breaks_do_not_split_events(gateway: Gateway, client: openai.OpenAI) -> None:
    body = {"prompt": TEXT, "max_tokens": 4, "echo": True, "stream": True}

    async def read() -> list[str]:
        async with (
            httpx.AsyncClient(base_url=gateway.url, timeout=60) as c,
            c.stream("POST", "/v1/completions", json=body) as r,
        ):
            return [line async for line in r.aiter_lines() if line]

    lines = asyncio.run(read())
    data = [d for line in lines if (d := data_of(line)) is not None]
    assert data[-1] == "[DONE]"
    # Every line is a whole event: nothing was cut.
    assert all(line.startswith(("data:", ":")) for line in lines), lines
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[0]["choices"][0]["text"].startswith(TEXT)

    sdk = client.completions.create(
        model=MODEL_NAME, prompt=TEXT, max_tokens=4, echo=True, stream=True
    )
    texts = [c.choices[0].text for c in sdk if c.choices]
    assert "".join(texts).startswith(TEXT)
