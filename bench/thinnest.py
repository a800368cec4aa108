"""The thinnest server on the gateway's stack: a floor for any serving layer.

python -m bench.thinnest --model DIR --port N --served-model-name NAME
(`python -m bench.ab --thinnest` starts it beside the gateway and vLLM's server)

One raw ASGI callable under uvicorn (uvloop, httptools, access log on, as
both real servers run), the engine built exactly as the gateway builds it
(`app.engine.vllm.build_engine`: same arguments, same stat loggers, vLLM's
`vllm:*` metrics), and for `POST /v1/completions` only what vLLM's benchmark
client needs: the JSON body, the prompt tokenized inline, one SSE event per
engine output with a fixed envelope, a usage chunk and `[DONE]`. No
validation, no admission, no middleware, no gateway metrics, no error
handling, no disconnect watching.

It is not a server to run. It measures what the same engine, event loop and
HTTP stack cost with next to no serving layer, so that what the gateway and
vLLM's server each add can be told from what no serving layer on this stack
avoids.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import time
from typing import Any

import uvicorn
from prometheus_client import REGISTRY, generate_latest

from app.config import Settings
from app.engine.protocol import Engine, SamplingOptions

Scope = dict[str, Any]


class Thinnest:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.model = settings.model_name
        self.engine: Engine | None = None
        self.ids = itertools.count()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["method"] == "POST" and scope["path"] == "/v1/completions":
            await self.completion(receive, send)
        elif scope["path"] == "/metrics":
            await respond(send, 200, generate_latest(REGISTRY), b"text/plain; version=0.0.4")
        elif scope["path"] == "/health":
            await respond(send, 200 if self.engine else 503, b"", b"text/plain")
        else:
            await respond(send, 404, b"", b"text/plain")

    async def lifespan(self, receive: Any, send: Any) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # as the gateway: local models only
        from app.engine.vllm import build_engine

        await receive()  # startup
        engine = await asyncio.to_thread(build_engine, self.settings, lambda step: None)
        self.engine = engine
        await send({"type": "lifespan.startup.complete"})
        await receive()  # shutdown
        engine.shutdown()
        await send({"type": "lifespan.shutdown.complete"})

    async def completion(self, receive: Any, send: Any) -> None:
        assert self.engine is not None
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body)
        ids = self.engine.tokenizer.encode(request["prompt"])
        options = SamplingOptions(
            max_tokens=request.get("max_tokens", 16),
            temperature=request.get("temperature"),
            ignore_eos=request.get("ignore_eos", False),
        )
        rid = f"cmpl-{next(self.ids)}"
        head = json.dumps(
            {
                "id": rid,
                "object": "text_completion",
                "created": int(time.time()),
                "model": self.model,
            }
        )[:-1]
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        tokens = 0
        async for out in self.engine.generate(ids, options, rid):
            choice = out.outputs[0]
            tokens += len(choice.token_ids)
            reason = json.dumps(choice.finish_reason)
            event = (
                f'data: {head}, "choices": [{{"index": 0, "text": {json.dumps(choice.text)}, '
                f'"logprobs": null, "finish_reason": {reason}}}]}}\n\n'
            )
            await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
        usage = {"prompt_tokens": len(ids), "completion_tokens": tokens}
        last = f'data: {head}, "choices": [], "usage": {json.dumps(usage)}}}\n\ndata: [DONE]\n\n'
        await send({"type": "http.response.body", "body": last.encode(), "more_body": False})


async def respond(send: Any, status: int, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type)],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--served-model-name")
    p.add_argument("--max-model-len", type=int, default=2048)
    a = p.parse_args()
    settings = Settings(
        model=a.model, served_model_name=a.served_model_name, max_model_len=a.max_model_len
    )
    uvicorn.run(Thinnest(settings), host="127.0.0.1", port=a.port, log_level="info")


if __name__ == "__main__":
    main()
