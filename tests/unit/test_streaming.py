"""The SSE response's own loop (app.api.sse_response): what it writes, in how many
messages, and how it ends when the stream breaks or the client leaves.
Driven through ASGI directly with a scripted event stream; the real engine
and sockets are in tests/e2e."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.types import Message

from app.api.sse_response import StreamResponse
from app.completion.wire import line_safe
from app.errors import EngineFailure, GatewayError
from app.scopes import BODY_SEND

pytestmark = pytest.mark.anyio


def test_unicode_line_breaks_are_escaped_and_the_rest_untouched() -> None:
    assert line_safe('{"t": "a\\u2028b"}') == '{"t": "a\\u2028b"}'
    assert line_safe('{"t": "a\u2028b\u2029c\x85d é"}') == '{"t": "a\\u2028b\\u2029c\\u0085d é"}'


class Scripted:
    """An event stream that hands out `script` items: str events, an
    exception to raise, or None to wait until cancelled."""

    def __init__(self, *script: str | Exception | None):
        self.script = list(script)
        self.done = False
        self.closed = 0
        self.errors: list[GatewayError] = []

    async def next_events(self) -> str:
        item = self.script.pop(0)
        if item is None:
            await asyncio.Event().wait()
        if isinstance(item, Exception):
            raise item
        assert isinstance(item, str)
        if not self.script:
            self.done = True
        return item

    def failed(self, error: GatewayError) -> None:
        self.errors.append(error)

    async def close(self) -> None:
        self.closed += 1


async def run(
    stream: Scripted, keepalive: float = 15, disconnect_after: float | None = None
) -> list[Message]:
    sent: list[Message] = []
    gone = asyncio.Event()
    loop = asyncio.get_running_loop()
    leaves = None if disconnect_after is None else loop.time() + disconnect_after

    async def receive() -> Message:
        # Like uvicorn's: a receive cut short (the ping timer) and called
        # again still meets the disconnect when it comes.
        if leaves is None:
            await gone.wait()
        else:
            await asyncio.sleep(max(0.0, leaves - loop.time()))
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: dict[str, Any] = {"type": "http", "method": "POST", "headers": []}
    await StreamResponse(stream, {}, keepalive)(scope, receive, send)
    gone.set()
    return sent


def bodies(sent: list[Message]) -> list[tuple[bytes, bool]]:
    return [(m["body"], m["more_body"]) for m in sent if m["type"] == "http.response.body"]


async def test_each_output_is_one_write_and_the_last_ends_the_body() -> None:
    stream = Scripted("data: 1\n\n", "", "data: 2\n\ndata: 3\n\n", "data: [DONE]\n\n")
    sent = await run(stream)
    assert sent[0]["type"] == "http.response.start"
    # Nothing to send for an empty output; the end goes with the last events.
    assert bodies(sent) == [
        (b"data: 1\n\n", True),
        (b"data: 2\n\ndata: 3\n\n", True),
        (b"data: [DONE]\n\n", False),
    ]
    assert stream.closed >= 1


async def test_a_broken_stream_ends_with_its_error_event_then_done() -> None:
    stream = Scripted("data: 1\n\n", EngineFailure("boom"))
    sent = await run(stream)
    last, more = bodies(sent)[-1]
    assert not more
    error, done = last.decode().split("\n\n")[:2]
    assert '"message": "boom"' in error and error.startswith("data: {")
    assert done == "data: [DONE]"
    assert [e.message for e in stream.errors] == ["boom"]


async def test_an_unexpected_error_is_an_engine_error_event() -> None:
    stream = Scripted(RuntimeError("internal detail"))
    sent = await run(stream)
    last, _ = bodies(sent)[-1]
    assert b"internal detail" not in last
    assert b"The stream failed." in last and last.endswith(b"data: [DONE]\n\n")


async def test_a_client_that_leaves_cancels_the_wait_and_closes_the_stream() -> None:
    stream = Scripted("data: 1\n\n", None)
    sent = await asyncio.wait_for(run(stream, disconnect_after=0.05), 5)
    # No end of body for a client that is gone, and no exception escaped.
    assert bodies(sent) == [(b"data: 1\n\n", True)]
    assert stream.closed >= 1


async def test_keepalive_comments_while_waiting() -> None:
    stream = Scripted(None)
    sent = await asyncio.wait_for(run(stream, keepalive=0.05, disconnect_after=0.3), 5)
    pings = [b for b, _ in bodies(sent) if b.startswith(b": ping")]
    assert len(pings) >= 3
    assert all(b.endswith(b"\n\n") for b in pings)


async def test_the_start_passes_the_middleware_and_the_body_goes_below_them() -> None:
    """RequestContext keeps the send below every middleware in the scope
    (app.scopes.BODY_SEND): the start (status, headers: what the
    middleware look at) goes through them, each body chunk straight there."""
    through: list[Message] = []
    below: list[Message] = []

    async def send(message: Message) -> None:
        through.append(message)

    async def body_send(message: Message) -> None:
        below.append(message)

    async def receive() -> Message:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    scope: dict[str, Any] = {"type": "http", "method": "POST", "headers": [], BODY_SEND: body_send}
    stream = Scripted("data: 1\n\n", "data: [DONE]\n\n")
    await StreamResponse(stream, {}, 15)(scope, receive, send)
    assert [m["type"] for m in through] == ["http.response.start"]
    assert bodies(below) == [(b"data: 1\n\n", True), (b"data: [DONE]\n\n", False)]
