"""How a completion is told to the client: `text_completion` for
/v1/completions, `chat.completion` for /v1/chat/completions, whole or as
stream chunks. The content is the same (app.completion.choices); only the shape differs."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from app.completion.choices import Choice, Choices, Delta
from app.completion.prepared import PreparedCompletion
from app.completion.schemas import CompletionLogprobs, Usage
from app.completion.sse import sse_event, text_delta_encoder


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

    def encoder(self, prep: PreparedCompletion) -> Callable[[Delta], str]:
        """Delta -> its stream chunk as an SSE event (`data: {json}` and the
        blank line), line-safe (app.completion.sse)."""
        head = self.head(prep)
        tail = {"usage": None} if prep.include_usage else {}
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
