"""The model's tokenizer, run off the event loop for long prompts.

Hugging Face's fast tokenizers release the GIL while they work. A long prompt
(1 MB of text takes about 0.85 s on the 2-core development machine) is
tokenized on a worker thread, so the event loop keeps every other stream
moving meanwhile. One worker, as vLLM's server has by default: long prompts
queue behind each other and leave the other cores to the engine.

Short texts (up to `INLINE_CHARS` in all) are encoded inline: the hop to the
worker and back cost more than their encoding (a 670-character prompt:
~0.25 ms to encode, ~0.15 ms more through the worker), and the loop is held
no longer than a few engine outputs take. Decoding inside the context limit
(a token for logprobs, a prompt for echo) stays inline through `sync`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from app.engine.protocol import Tokenizer

T = TypeVar("T")

# ~1 ms of encoding on the development machine: the most the loop is held.
INLINE_CHARS = 2048


class AsyncTokenizer:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.sync = tokenizer
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="tokenizer")

    async def run(self, fn: Callable[[], T]) -> T:
        """`fn` on the tokenizer's worker thread (whole-prompt work: encode, render)."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn)

    async def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return (await self._encode([text], add_special_tokens))[0]

    async def encode_all(self, texts: list[str]) -> list[list[int]]:
        """Several prompts, with BOS as for a completion."""
        return await self._encode(texts, True)

    async def _encode(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        """Inline when short, else in one hop to the worker."""

        def work() -> list[list[int]]:
            return [self.sync.encode(t, add_special_tokens=add_special_tokens) for t in texts]

        if sum(map(len, texts)) <= INLINE_CHARS:
            return work()
        return await self.run(work)

    async def decode(self, token_ids: list[int], skip_special_tokens: bool) -> str:
        return await self.run(
            lambda: self.sync.decode(token_ids, skip_special_tokens=skip_special_tokens)
        )

    async def token_strs(self, token_ids: list[int]) -> list[str]:
        return await self.run(lambda: self.sync.convert_ids_to_tokens(token_ids))
