"""The admin endpoint's two operations, in vLLM's terms: load an adapter
(check it, write it into the registry directory, converge) and unload one
(move it out of the directory, converge). The directory is the registry:
a restart, and every replica at its next look, serve the same set. A load
the engine refuses is taken out of the directory again (no replica keeps
retrying it); one call at a time per name (another gets 409)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.adapters.check import AdapterRefused
from app.adapters.files import persist, remove, split_name, withdraw
from app.adapters.registry import NOT_FOUND, Adapters
from app.errors import Conflict, InvalidRequest, ModelNotFound


@contextmanager
def _one_at_a_time(adapters: Adapters, name: str) -> Iterator[None]:
    if name in adapters.changing:
        raise Conflict(
            "Another load or unload of that adapter is under way; try again when it ends.",
            param="lora_name",
        )
    adapters.changing.add(name)
    try:
        yield
    finally:
        adapters.changing.discard(name)


async def load(adapters: Adapters, name: str, path: str, who: str) -> None:
    if split_name(name) is None:
        raise InvalidRequest(
            "lora_name must be a name or name@N (letters, digits, _ . -; N a version).",
            param="lora_name",
        )
    lora_dir = adapters.lora_dir
    if lora_dir is None:
        raise InvalidRequest(
            "GATEWAY_LORA_DIR is not set: a loaded adapter is kept there, so that a "
            "restart and every replica serve it.",
            param="lora_path",
        )
    with _one_at_a_time(adapters, name):
        if name in adapters.by_name or name in adapters.modules:
            raise InvalidRequest(
                "An adapter of that name is already loaded; roll out a new version as name@N.",
                param="lora_name",
            )
        try:  # off the event loop: reading and parsing
            files, _ = await asyncio.to_thread(adapters.check, Path(path))
        except AdapterRefused as exc:
            adapters.refuse(name, exc, f"admin load by {who}")
            raise InvalidRequest(f"The adapter was refused: {exc}.", param="lora_path") from None
        if not await asyncio.to_thread(persist, lora_dir, name, files):
            raise InvalidRequest(
                "The registry directory already has an adapter of that name (not yet looked "
                "at); roll out a new version as name@N.",
                param="lora_name",
            )
        try:
            await adapters.rescan(f"admin load by {who}")
        finally:
            if name not in adapters.by_name:  # refused by the engine (or the look failed)
                await asyncio.to_thread(remove, lora_dir, name)
        if name not in adapters.by_name:
            await adapters.rescan(f"admin load by {who} undone")  # its refusal forgotten
            raise InvalidRequest("The engine refused the adapter (see the gateway's log).")


async def unload(adapters: Adapters, name: str, who: str) -> None:
    with _one_at_a_time(adapters, name):
        if name not in adapters.by_name:
            raise ModelNotFound(NOT_FOUND, param="lora_name")
        if name in adapters.modules or adapters.lora_dir is None:
            raise InvalidRequest(
                "That adapter is configured by GATEWAY_LORA_MODULES; remove it there.",
                param="lora_name",
            )
        await asyncio.to_thread(withdraw, adapters.lora_dir, name)
        await adapters.rescan(f"admin unload by {who}")
