"""The HTTP side of a completion stream: SSE events as they come, an error
event if the stream breaks, and always `[DONE]`. Cancellation is never
swallowed unless it is ours: when the client goes away the engine request
is aborted by the cancellation itself, and the stream is closed when the
response ends, however it ends.

sse-starlette gives the response its headers and its keep-alive comments;
the loop that runs it is ours and lean, because it runs once per token per
stream. sse-starlette's own runs every stream as four tasks in an anyio task
group (data, pings, disconnect, shutdown) and each event through an anyio
cancel scope; on the development machine the serving process spent about a
tenth of its CPU per token there (py-spy, 32 streams). Here the data loop
runs in the request's own task and one watcher task per stream waits for
the client's disconnect and sends the pings. The events of one engine output
go out in one write, and the last ones (usage chunk, `[DONE]`) with the end
of the response body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Protocol

from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import AppStatus
from starlette.types import Receive, Scope, Send

from app.completion.wire import error_events
from app.errors import EngineFailure, GatewayError
from app.scopes import BODY_SEND

logger = logging.getLogger(__name__)


class EventStream(Protocol):
    """app.completion.stream.CompletionStream, as the HTTP layer uses it."""

    done: bool

    async def next_events(self) -> str:
        """The SSE events of the next engine output; `done` after the last."""

    def failed(self, error: GatewayError) -> None:
        """The stream is about to end with `error` as its SSE error event."""

    async def close(self) -> None: ...


class StreamResponse(EventSourceResponse):
    def __init__(self, stream: EventStream, headers: dict[str, str], keepalive: float):
        # Comment lines (every `keepalive` seconds, also while the request
        # waits in the queue) keep idle proxies from closing slow streams.
        # No body iterator: the events come from `stream` (see _run).
        super().__init__(iter(()), headers=headers, sep="\n", ping=keepalive)
        self.stream = stream
        self._left = False  # the client went away (or the server stops): our cancel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.get_running_loop().create_task(self._watch(receive, send, task))
        try:
            # The start goes through every middleware; the body chunks, from
            # below them (app.scopes.BODY_SEND says why).
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            await self._run(scope.get(BODY_SEND, send))
        except asyncio.CancelledError:
            if not self._left:
                raise
            # Our own cancellation: the client has gone, nothing to answer.
            task.uncancel()
        finally:
            self.active = False
            watcher.cancel()
            # If the client left before the first event, the stream was never
            # asked for one: its engine request is aborted here.
            await self.stream.close()

    async def _run(self, send: Send) -> None:
        """The body: events as the stream yields them, then [DONE] or an error."""
        stream = self.stream
        try:
            while True:
                events = await stream.next_events()
                if stream.done:
                    break
                if events:
                    await send(
                        {"type": "http.response.body", "body": events.encode(), "more_body": True}
                    )
        except GatewayError as exc:
            stream.failed(exc)
            events = error_events(exc)
        except Exception:
            logger.exception("stream failed")
            error = EngineFailure("The stream failed.")
            stream.failed(error)
            events = error_events(error)
        # Ending anyway: from here a disconnect no longer cancels (and no
        # ping goes out). The admission place goes back before the last write.
        self.active = False
        await stream.close()
        await send({"type": "http.response.body", "body": events.encode(), "more_body": False})

    async def _watch(self, receive: Receive, send: Send, task: asyncio.Task[None]) -> None:
        """Wait for the client's disconnect (then cancel the stream) and send
        a keep-alive comment every `ping_interval` seconds meanwhile."""
        interval = self.ping_interval if self.ping_interval > 0 else None
        while self.active:
            try:
                async with asyncio.timeout(interval):
                    message = await receive()
            except TimeoutError:
                if AppStatus.should_exit:  # the server is going: end the stream
                    break
                if self.active:
                    now = datetime.now(UTC)
                    body = ServerSentEvent(comment=f"ping - {now}", sep=self.sep).encode()
                    # A ping that loses the race with the end of the body has
                    # nothing left to keep alive.
                    with contextlib.suppress(Exception):
                        await send({"type": "http.response.body", "body": body, "more_body": True})
                continue
            if message["type"] == "http.disconnect":
                break
        if self.active:
            self._left = True
            task.cancel()
