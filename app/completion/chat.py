"""A chat request, made ready to run as a completion: messages checked and
flattened to text, rendered with the chat template, and fitted to the
context by dropping whole messages (app.completion.context_limit). Everything after this is the one
completion path (app.completion.generation, app.completion.choices)."""

from __future__ import annotations

import time

from app.completion.chat_template import ChatTemplate
from app.completion.context_limit import Message, check_max_tokens, fit_messages
from app.completion.prepare import Preparer
from app.completion.prepared import PreparedCompletion, PreparedPrompt
from app.completion.schemas import ChatCompletionRequest, ChatMessage, TextPart
from app.errors import InvalidRequest
from app.tenancy.tenants import Tenant

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
    def __init__(self, preparer: Preparer, template: ChatTemplate):
        self.preparer = preparer
        self.template = template
        self.tokenizer = preparer.tokenizer

    def _encode(self, messages: list[Message]) -> list[int]:
        """The rendered conversation's token ids (on the tokenizer thread)."""
        text = self.template.render(messages)
        return self.tokenizer.sync.encode(text, add_special_tokens=False)

    async def prepare(
        self, req: ChatCompletionRequest, tenant: Tenant | None = None
    ) -> PreparedCompletion:
        arrival = time.monotonic()
        preparer = self.preparer
        target = preparer.catalog.resolve(req.model, tenant)  # 404 before any work
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
            preparer.check_logprobs(k, "top_logprobs")
        elif req.top_logprobs is not None:
            raise InvalidRequest("top_logprobs requires logprobs: true.", param="top_logprobs")
        messages = [_flatten(m, i) for i, m in enumerate(req.messages)]
        ids, dropped_messages, dropped_tokens = await self.tokenizer.run(
            lambda: fit_messages(
                messages, self._encode, requested, limit, policy=preparer.settings.truncation
            )
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
            target=target,
            dropped_messages=dropped_messages,
        )
