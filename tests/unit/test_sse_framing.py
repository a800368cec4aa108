"""The SSE wire format (app/completion/wire.py) checked directly: each event
one `data:` line and a blank line, the text fast path equal to what the
generic encoder writes, the usage chunk, the error event, [DONE] last."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from app.completion.wire import (
    CHAT,
    DONE_EVENT,
    TEXT,
    Frames,
    chunk_event,
    error_events,
    sse_event,
    text_delta_encoder,
)
from app.errors import EngineFailure, InvalidRequest, RateLimited

HEAD = {"id": "cmpl-1", "object": "text_completion", "created": 7, "model": "m"}
BREAKS = "\u2028\u2029\x85\n\r"


def events(wire: str) -> list[Any]:
    """The events of a wire text, each exactly `data: <one line>` + blank line."""
    assert wire.endswith("\n\n")
    out = []
    for block in wire[:-2].split("\n\n"):
        assert block.startswith("data: "), block
        line = block[len("data: ") :]
        # one line whichever way a client splits lines
        assert len(line.splitlines()) == 1 and "\n" not in line and "\r" not in line, line
        out.append("[DONE]" if line == "[DONE]" else json.loads(line))
    return out


def delta(text: str, index: int = 0, reason: str | None = None) -> Any:
    return SimpleNamespace(choice=SimpleNamespace(index=index), text=text, finish_reason=reason)


def generic(
    head: dict[str, Any], index: int, text: str, reason: str | None, tail: dict[str, Any]
) -> dict[str, Any]:
    choice = {"index": index, "text": text, "logprobs": None, "finish_reason": reason}
    return {**head, "choices": [choice], **tail}


@given(
    st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(BREAKS + '"\\')),
    st.sampled_from(["m", "llama-é", "a\u2028b", 'x0}]}"y']),
    st.integers(0, 40),
    st.sampled_from([None, "stop", "length"]),
    st.sampled_from([{}, {"usage": None}, {"usage": {"prompt_tokens": 3}, "x": ["\u2029"]}]),
)
def test_the_text_fast_path_writes_what_the_generic_encoder_means(
    text: str, model: str, index: int, reason: str | None, tail: dict[str, Any]
) -> None:
    # Any text, any served model name (even one with a line break or the
    # envelope's own closing characters in it), any index and tail.
    head = {**HEAD, "model": model}
    wire = text_delta_encoder(head, tail)(delta(text, index, reason))
    assert events(wire) == [generic(head, index, text, reason, tail)]
    if (text + model).isascii() and not set(text) & set(BREAKS):
        # byte for byte the generic path's event
        assert wire == chunk_event(generic(head, index, text, reason, tail))


def test_the_fast_path_keeps_non_ascii_text_unescaped() -> None:
    wire = text_delta_encoder(HEAD, {})(delta("é\u2028x"))
    assert '"text": "é\\u2028x"' in wire


@given(st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(BREAKS)))
def test_one_event_is_one_line_whatever_the_text(text: str) -> None:
    wire = sse_event(json.dumps({"t": text}, ensure_ascii=False))
    assert events(wire) == [{"t": text}]


def frames(fmt: Any = TEXT, include_usage: bool = False) -> Frames:
    prep = SimpleNamespace(
        request_id="cmpl-1", created=7, model="m", include_usage=include_usage, logprobs=None
    )
    return fmt.frames(prep)  # type: ignore[no-any-return]


def test_a_stream_ends_with_done_and_the_usage_chunk_only_when_asked() -> None:
    assert frames().end(None) == DONE_EVENT == "data: [DONE]\n\n"
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    wire = frames(include_usage=True).end(usage)  # type: ignore[arg-type]
    assert events(wire) == [{**HEAD, "choices": [], "usage": usage}, "[DONE]"]


def test_the_usage_tail_is_on_every_chunk_of_a_stream_that_asked_for_usage() -> None:
    """With include_usage, each chunk before the last carries "usage": null
    (the opening chunk of a chat stream too); without it, no usage key."""
    for include_usage, tail in ((True, {"usage": None}), (False, {})):
        chat = frames(CHAT, include_usage)
        choice = SimpleNamespace(index=2)
        head = {**HEAD, "object": "chat.completion.chunk"}
        opening = {"index": 2, "delta": {"role": "assistant", "content": ""},
                   "logprobs": None, "finish_reason": None}  # fmt: skip
        assert events(chat.opening(choice)) == [{**head, "choices": [opening], **tail}]  # type: ignore[arg-type]
        [chunk] = events(frames(TEXT, include_usage).delta(delta("x", 1, "stop")))
        assert chunk == {**HEAD, "choices": [{"index": 1, "text": "x", "logprobs": None,
                                              "finish_reason": "stop"}], **tail}  # fmt: skip


def test_a_broken_stream_ends_with_its_error_then_done() -> None:
    error = InvalidRequest("bad \u2028 thing", param="prompt", code="x_code")
    assert events(error_events(error)) == [
        {"error": {"message": "bad \u2028 thing", "type": "invalid_request_error",
                   "param": "prompt", "code": "x_code"}},
        "[DONE]",
    ]  # fmt: skip
    # without a code of its own, the event's code is the HTTP status
    failure = EngineFailure("gone")
    [event, done] = events(error_events(failure))
    assert event["error"]["code"] == int(failure.status) == 500 and done == "[DONE]"
    limited = RateLimited("slow down", retry_after=3)
    assert events(error_events(limited))[0]["error"]["code"] == (limited.code or 429)


# -- the OpenAI shapes (whole answers and deltas), exactly --------------------

LP = {
    "tokens": ["é", "b"],
    "token_logprobs": [-0.5, None],
    # alternatives out of order, so neither the dict's nor the tokens' order is the logprobs'
    "top_logprobs": [{"é": -0.5, "z": -2.0, "b": -1.0}, None],
    "text_offset": [0, 1],
}
CHAT_CONTENT = [
    {"token": "é", "logprob": -0.5, "bytes": [195, 169], "top_logprobs": [
        {"token": "é", "logprob": -0.5, "bytes": [195, 169]},
        {"token": "b", "logprob": -1.0, "bytes": [98]},
    ]},
    {"token": "b", "logprob": None, "bytes": [98], "top_logprobs": []},
]  # fmt: skip


def prep(logprobs: int | None = None) -> Any:
    return SimpleNamespace(request_id="chatcmpl-1", created=7, model="m", logprobs=logprobs,
                           include_usage=False)  # fmt: skip


def answer_choices(lp: Any) -> Any:
    final = [{"index": 0, "text": "éb", "logprobs": lp, "finish_reason": "stop"}]
    return SimpleNamespace(final=lambda: final)


def test_chat_logprobs_keep_the_k_most_likely_in_order_with_bytes() -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    body = CHAT.answer(prep(2), answer_choices(LP), usage)  # type: ignore[arg-type]
    assert body == {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "éb"},
                     "logprobs": {"content": CHAT_CONTENT}, "finish_reason": "stop"}],
        "usage": usage,
    }  # fmt: skip
    # without logprobs: null, and k 0 keeps no alternative
    body = CHAT.answer(prep(None), answer_choices(None), usage)  # type: ignore[arg-type]
    assert body["choices"][0]["logprobs"] is None
    body = CHAT.answer(prep(0), answer_choices(LP), usage)  # type: ignore[arg-type]
    assert [c["top_logprobs"] for c in body["choices"][0]["logprobs"]["content"]] == [[], []]


def test_text_answer_and_deltas_of_both_shapes() -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    body = TEXT.answer(prep(), answer_choices(None), usage)  # type: ignore[arg-type]
    assert body == {"id": "chatcmpl-1", "object": "text_completion", "created": 7, "model": "m",
                    "choices": answer_choices(None).final(), "usage": usage}  # fmt: skip
    choice = SimpleNamespace(index=3, logprobs_from=lambda start: {**LP} if start == 1 else None)
    d = SimpleNamespace(choice=choice, text="b", logprobs_start=1, finish_reason="length")
    assert TEXT.delta(d, prep(2)) == {  # type: ignore[arg-type]
        "index": 3, "text": "b", "logprobs": LP, "finish_reason": "length"
    }  # fmt: skip
    assert CHAT.delta(d, prep(2)) == {  # type: ignore[arg-type]
        "index": 3, "delta": {"content": "b"}, "logprobs": {"content": CHAT_CONTENT},
        "finish_reason": "length",
    }  # fmt: skip
    # logprobs asked with top_logprobs 0: each token's own logprob, no alternative
    zero = CHAT.delta(d, prep(0))["logprobs"]["content"]  # type: ignore[arg-type]
    assert [c["top_logprobs"] for c in zero] == [[], []]
    empty = SimpleNamespace(choice=choice, text="", logprobs_start=0, finish_reason=None)
    assert CHAT.delta(empty, prep()) == {  # type: ignore[arg-type]
        "index": 3, "delta": {}, "logprobs": None, "finish_reason": None
    }  # fmt: skip


def test_the_generic_encoder_writes_logprobs_and_raw_utf8() -> None:
    """With logprobs (or for chat) the chunk is json.dumps'd whole: non-ASCII
    stays raw, and the head and tail are around the delta."""
    choice = SimpleNamespace(index=0, logprobs_from=lambda start: LP)
    d = SimpleNamespace(choice=choice, text="é", logprobs_start=0, finish_reason=None)
    head = {"id": "c", "object": "text_completion", "created": 7, "model": "m"}
    wire = TEXT.encoder(prep(1), head, {"usage": None})(d)  # type: ignore[arg-type]
    assert "é" in wire and "\\u00e9" not in wire
    chunk = {"index": 0, "text": "é", "logprobs": LP, "finish_reason": None}
    assert events(wire) == [{**head, "choices": [chunk], "usage": None}]
    chat = CHAT.encoder(prep(None), head, {})(d)  # type: ignore[arg-type]
    assert events(chat)[0]["choices"][0]["delta"] == {"content": "é"}
