"""The SSE layer: our lean data loop replaces sse-starlette's own, which its
__call__ must still be the one to run (pings, disconnects, shutdown stay its)."""

from __future__ import annotations

import inspect

from sse_starlette import EventSourceResponse

from app.streaming import StreamResponse, line_safe


def test_sse_starlette_still_runs_the_data_loop_we_replace() -> None:
    # If a release renamed it, our override would silently stop being used.
    assert "_stream_response" in inspect.getsource(EventSourceResponse.__call__)
    assert StreamResponse._stream_response is not EventSourceResponse._stream_response


def test_unicode_line_breaks_are_escaped_and_the_rest_untouched() -> None:
    assert line_safe('{"t": "a\\u2028b"}') == '{"t": "a\\u2028b"}'
    assert line_safe('{"t": "a\u2028b\u2029c\x85d é"}') == '{"t": "a\\u2028b\\u2029c\\u0085d é"}'
