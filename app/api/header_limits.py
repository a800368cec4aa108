"""HTTP/1.1 header limits for uvicorn's httptools parser, which has none.

uvicorn picks httptools (the fast parser) when it is installed, and httptools
accepts request lines and headers of any size and count, at any pace: one
client can hold memory with a huge header block, or a connection forever by
sending a header line every few seconds (slowloris). This protocol adds:

- `max_header_bytes`: bytes of the request line and headers; beyond, 431.
- `max_headers`: header fields per request; beyond, 431.
- `header_timeout`: seconds from the connection (or the first byte of the
  next request on it) until its headers are complete; then 408 and close.

Responses are OpenAI-shaped JSON and the connection is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.api.rejection import raw_response
from app.errors import GatewayError, HeadersTooLarge, HeaderTimeout


@dataclass(frozen=True, slots=True)
class HeaderLimits:
    max_header_bytes: int
    max_headers: int
    header_timeout: float


class _HeaderLimitExceeded(Exception):
    """Raised inside a parser callback to stop parsing this request."""


TOO_LARGE = HeadersTooLarge("The request line and headers exceed this server's limits.")
TOO_SLOW = HeaderTimeout("The request headers did not arrive in time.")


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    # Set on the subclass that `protocol_class` makes.
    limits: HeaderLimits
    on_reject: Callable[[GatewayError], None]

    # httptools buffers a header line until it is complete, so a size limit
    # must be applied to the raw bytes before they reach the parser: while a
    # request's headers are incomplete, data is fed in slices no larger than
    # the room left.
    _in_headers = True
    _header_bytes = 0
    _header_count = 0
    _header_timer: asyncio.TimerHandle | None = None
    _over_limit = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        while data and self._in_headers:
            room = self.limits.max_header_bytes - self._header_bytes
            if room <= 0:
                self._reject(TOO_LARGE)
                return
            piece, data = data[:room], data[room:]
            self._header_bytes += len(piece)
            super().data_received(piece)
            if self.transport.is_closing():
                return
        if data:
            super().data_received(data)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(
                self.limits.header_timeout, self._reject, TOO_SLOW
            )

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _reject(self, error: GatewayError) -> None:
        self._disarm_header_timer()
        if not self.transport.is_closing():
            type(self).on_reject(error)
            self.transport.write(raw_response(error))
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_count = 0
        self._arm_header_timer()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._over_limit = True
            raise _HeaderLimitExceeded  # httptools turns it into HttpParserCallbackError
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm_header_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # The next bytes on this connection start the next request's headers.
        self._in_headers = True
        self._header_bytes = 0

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to any parser error; ours when a limit stopped it.
        if self._over_limit:
            self._reject(TOO_LARGE)
        else:
            super().send_400_response(msg)


def protocol_class(
    limits: HeaderLimits, on_reject: Callable[[GatewayError], None] = lambda _: None
) -> type[LimitedHttpToolsProtocol]:
    """A protocol class for `uvicorn.Config(http=...)` with these limits;
    `on_reject` counts each refusal (app.api.rejection.Rejections.count)."""
    attrs = {"limits": limits, "on_reject": staticmethod(on_reject)}
    return type("GatewayHttpProtocol", (LimitedHttpToolsProtocol,), attrs)
