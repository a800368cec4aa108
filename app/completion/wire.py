"""The OpenAI wire shapes of a completion, all of them: `text_completion` for
/v1/completions and `chat.completion` for /v1/chat/completions, whole or as
stream chunks, and their SSE framing: each chunk one `data:` line and a
blank line (line-safe), the chat stream's opening chunk, the usage tail,
the error event that ends a broken stream, `[DONE]` last, and the per-token
fast path of a text completion. The content is the same
(app.completion.choices); only the shape differs. No I/O here
(app.api.sse_response sends what these return)."""

from __future__ import annotations

import json
from collections.abc import Callable
from json.encoder import encode_basestring as quote
from typing import Any

from app.completion.choices import Choice, Choices, Delta
from app.completion.prepared import PreparedCompletion
from app.completion.schemas import CompletionLogprobs, Usage
from app.errors import GatewayError

# JSON may carry these raw, but clients that split lines the Unicode way
# (Python's str.splitlines, httpx's aiter_lines) cut an event in two at
# them. Escaped, the JSON is the same text after parsing.
_LINE_SAFE = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})

DONE_EVENT = "data: [DONE]\n\n"


def line_safe(data: str) -> str:
    return data if data.isascii() else data.translate(_LINE_SAFE)


def sse_event(data: str) -> str:
    """One event carrying `data` (one line of JSON)."""
    return f"data: {line_safe(data)}\n\n"


def chunk_event(chunk: dict[str, Any]) -> str:
    """A stream chunk (an opening chunk, say) as one event."""
    return sse_event(json.dumps(chunk))


def error_data(exc: GatewayError) -> str:
    """The `data:` payload of the error event that ends a broken stream."""
    body = exc.body()
    body["error"]["code"] = exc.code or int(exc.status)
    return json.dumps(body)


def error_events(exc: GatewayError) -> str:
    """What ends a broken stream: its error event, then [DONE]."""
    return sse_event(error_data(exc)) + DONE_EVENT


def text_delta_encoder(head: dict[str, Any], tail: dict[str, Any]) -> Callable[[Delta], str]:
    """The per-token path of a text completion without logprobs: only the
    index, text and finish reason change, so the envelope is encoded once
    (byte for byte what json.dumps writes), and the text with json's own C
    string encoder."""
    start = json.dumps({**head, "choices": [{"index": 0}]}, ensure_ascii=False)
    start = "data: " + line_safe(start[: start.rindex("0}]}")])
    end = "}], " + line_safe(json.dumps(tail)[1:]) + "\n\n" if tail else "}]}\n\n"

    def encode(d: Delta) -> str:
        text = line_safe(quote(d.text))
        reason = "null" if d.finish_reason is None else quote(d.finish_reason)
        return (
            f'{start}{d.choice.index}, "text": {text}, '
            f'"logprobs": null, "finish_reason": {reason}{end}'
        )

    return encode


class TextFormat:
    object = "text_completion"
    chunk_object = "text_completion"
    opens = False  # no per-choice opening chunk

    def answer(self, prep: PreparedCompletion, choices: Choices, usage: Usage) -> dict[str, Any]:
        return {
            "id": prep.request_id,
            "object": self.object,
            "created": prep.created,
            "model": prep.model,
            "choices": choices.final(),
            "usage": usage,
        }

    def head(self, prep: PreparedCompletion) -> dict[str, Any]:
        return {
            "id": prep.request_id,
            "object": self.chunk_object,
            "created": prep.created,
            "model": prep.model,
        }

    def opening(self, choice: Choice) -> dict[str, Any]:
        raise NotImplementedError

    def frames(self, prep: PreparedCompletion) -> Frames:
        """How one stream of this shape is written (see Frames)."""
        return Frames(self, prep)

    def encoder(
        self, prep: PreparedCompletion, head: dict[str, Any], tail: dict[str, Any]
    ) -> Callable[[Delta], str]:
        """Delta -> its stream chunk as an SSE event, line-safe."""
        if prep.logprobs is None and type(self) is TextFormat:
            return text_delta_encoder(head, tail)
        dumps, delta = json.dumps, self.delta
        return lambda d: sse_event(
            dumps({**head, "choices": [delta(d, prep)], **tail}, ensure_ascii=False)
        )

    def delta(self, d: Delta, prep: PreparedCompletion) -> dict[str, Any]:
        return {
            "index": d.choice.index,
            "text": d.text,
            "logprobs": d.choice.logprobs_from(d.logprobs_start),
            "finish_reason": d.finish_reason,
        }


def _chat_logprobs(lp: CompletionLogprobs | None, k: int) -> dict[str, Any] | None:
    """OpenAI chat logprobs: per token, its logprob, bytes and the top k."""
    if lp is None:
        return None
    content = []
    for token, logprob, top in zip(
        lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True
    ):
        alternatives = sorted((top or {}).items(), key=lambda kv: kv[1], reverse=True)[:k]
        content.append(
            {
                "token": token,
                "logprob": logprob,
                "bytes": list(token.encode()),
                "top_logprobs": [
                    {"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in alternatives
                ],
            }
        )
    return {"content": content}


class ChatFormat(TextFormat):
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    opens = True  # the assistant's role goes first, in a chunk of its own

    def answer(self, prep: PreparedCompletion, choices: Choices, usage: Usage) -> dict[str, Any]:
        body = super().answer(prep, choices, usage)
        k = prep.logprobs or 0
        body["choices"] = [
            {
                "index": c["index"],
                "message": {"role": "assistant", "content": c["text"]},
                "logprobs": _chat_logprobs(c["logprobs"], k),
                "finish_reason": c["finish_reason"],
            }
            for c in body["choices"]
        ]
        return body

    def opening(self, choice: Choice) -> dict[str, Any]:
        return {
            "index": choice.index,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }

    def delta(self, d: Delta, prep: PreparedCompletion) -> dict[str, Any]:
        return {
            "index": d.choice.index,
            "delta": {"content": d.text} if d.text else {},
            "logprobs": _chat_logprobs(
                d.choice.logprobs_from(d.logprobs_start), prep.logprobs or 0
            ),
            "finish_reason": d.finish_reason,
        }


TEXT = TextFormat()
CHAT = ChatFormat()


class Frames:
    """One stream's chunks as SSE events. Its envelope (id, object, created,
    model) and its usage tail are decided here, once: with include_usage
    every chunk carries `"usage": null` and the last one, before `[DONE]`,
    the usage itself."""

    __slots__ = ("_fmt", "delta", "head", "opens", "tail")

    def __init__(self, fmt: TextFormat, prep: PreparedCompletion):
        self._fmt = fmt
        self.opens = fmt.opens
        self.head = fmt.head(prep)
        self.tail: dict[str, Any] = {"usage": None} if prep.include_usage else {}
        self.delta = fmt.encoder(prep, self.head, self.tail)  # Delta -> its event

    def opening(self, choice: Choice) -> str:
        """The chat stream's first chunk of a choice (the assistant's role)."""
        return chunk_event({**self.head, "choices": [self._fmt.opening(choice)], **self.tail})

    def end(self, usage: Usage | None) -> str:
        """What ends a stream that finished: the usage chunk (when the
        client asked for it), then [DONE]."""
        if usage is None:
            return DONE_EVENT
        return sse_event(json.dumps({**self.head, "choices": [], "usage": usage})) + DONE_EVENT
