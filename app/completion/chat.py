"""A chat request, made ready to run as a completion: messages checked and
flattened to text, rendered with the chat template, and fitted to the
context by dropping whole messages. Everything after this is the one
completion path (app.completion.generation, app.completion.choices)."""

from __future__ import annotations

import time
from collections.abc import Callable

from app.completion.chat_template import ChatTemplate
from app.completion.context_limit import check_max_tokens
from app.completion.prepare import Preparer
from app.completion.prepared import PreparedCompletion, PreparedPrompt
from app.completion.schemas import ChatCompletionRequest, ChatMessage, TextPart
from app.completion.tokenizer import AsyncTokenizer
from app.errors import ContextLengthExceeded, InvalidRequest
from app.tenancy.tenants import Tenant

Message = dict[str, str]  # {"role", "content"}: what the template sees

# Fields a base model cannot honour here: refused by name, not ignored.
_UNSUPPORTED = {
    "tools": "tool calling",
    "tool_choice": "tool calling",
    "functions": "function calling",
    "function_call": "function calling",
    "parallel_tool_calls": "tool calling",
}
_KNOWN_PARTS = {"image_url", "input_audio", "file", "video_url", "audio_url", "refusal"}


def _flatten(message: ChatMessage, index: int) -> Message:
    role = "system" if message.role == "developer" else message.role
    where = f"messages.{index}"
    if role == "tool" or message.tool_calls or message.tool_call_id:
        raise InvalidRequest(
            "Tool messages and tool calls are not supported: this gateway serves a base "
            "model without tool calling.",
            param=where,
        )
    content = message.content
    if content is None:
        raise InvalidRequest("Message content must not be null.", param=f"{where}.content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    texts = []
    for part in content:
        if isinstance(part, TextPart):
            texts.append(part.text)
            continue
        kind = part.type if part.type in _KNOWN_PARTS else "non-text"
        raise InvalidRequest(
            f"Content parts of type '{kind}' are not supported: this model reads text only.",
            param=f"{where}.content",
        )
    return {"role": role, "content": "\n".join(texts)}


class ChatPreparer:
    def __init__(self, preparer: Preparer, template: ChatTemplate, tokenizer: AsyncTokenizer):
        self.preparer = preparer
        self.template = template
        self.tokenizer = tokenizer

    async def prepare(
        self, req: ChatCompletionRequest, tenant: Tenant | None = None
    ) -> PreparedCompletion:
        arrival = time.monotonic()
        preparer = self.preparer
        preparer.model.check(req.model)
        for name, what in _UNSUPPORTED.items():
            if getattr(req, name) is not None:
                raise InvalidRequest(f"{name}: {what} is not supported by this model.", param=name)
        limit = preparer.model.max_model_len
        requested = req.max_completion_tokens or req.max_tokens
        if requested is not None:
            check_max_tokens(requested, limit)
        k: int | None = None
        if req.logprobs:
            k = req.top_logprobs or 0
            if k > preparer.engine.max_logprobs:
                raise InvalidRequest(
                    f"top_logprobs must be at most {preparer.engine.max_logprobs}.",
                    param="top_logprobs",
                )
        elif req.top_logprobs is not None:
            raise InvalidRequest("top_logprobs requires logprobs: true.", param="top_logprobs")
        messages = [_flatten(m, i) for i, m in enumerate(req.messages)]
        budget = limit - (requested or 1)
        ids, dropped_messages, dropped_tokens = await self.tokenizer.run(
            lambda: self._fit(messages, budget, requested)
        )
        options = preparer.options(
            req,
            max_tokens=requested or limit - len(ids),
            n=req.n,
            logprobs=k,
            structured=await preparer.constraint(req),
        )
        return preparer.build(
            req,
            arrival,
            [PreparedPrompt(ids, None, dropped=dropped_tokens)],
            options,
            echo=False,
            logprobs=k,
            tenant=tenant,
            dropped_messages=dropped_messages,
        )

    def _fit(
        self, messages: list[Message], budget: int, requested: int | None
    ) -> tuple[list[int], int, int]:
        """(prompt ids, messages dropped, tokens dropped), on the tokenizer thread.

        Under `left`, the oldest messages that are neither system messages nor
        the last one are dropped whole, as few as make it fit; under `error`,
        or when even that does not fit, a 400 with the counts."""
        sync = self.tokenizer.sync

        def encode(ms: list[Message]) -> list[int]:
            return sync.encode(self.template.render(ms), add_special_tokens=False)

        full = encode(messages)
        if len(full) <= budget:
            return full, 0, 0
        completion = requested or 1
        limit = budget + completion
        if self.preparer.settings.truncation == "error":
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {len(full) + completion} tokens ({len(full)} in the "
                f"{len(messages)} messages, {completion} for the completion). Please "
                f"shorten the conversation or the completion length.",
                param="messages",
            )
        droppable = [i for i, m in enumerate(messages[:-1]) if m["role"] != "system"]

        def without(k: int) -> Callable[[], list[Message]]:
            gone = set(droppable[:k])
            return lambda: [m for i, m in enumerate(messages) if i not in gone]

        # The fewest messages to drop: the prompt shrinks as more go (binary search).
        lo, hi = 1, len(droppable)
        best: tuple[int, list[int]] | None = None
        while lo <= hi:
            mid = (lo + hi) // 2
            ids = encode(without(mid)())
            if len(ids) <= budget:
                best, hi = (mid, ids), mid - 1
            else:
                lo = mid + 1
        if best is None:
            kept = encode(without(len(droppable))())
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens. Even with only the "
                f"system messages and the last message, the prompt has {len(kept)} tokens and "
                f"{completion} are requested for the completion. Please shorten them.",
                param="messages",
            )
        dropped, ids = best
        return ids, dropped, len(full) - len(ids)
