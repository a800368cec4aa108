"""The admin endpoint's two operations, in vLLM's terms: load an adapter
(check it, write it into the registry directory, converge) and unload one
(move it out of the directory, converge). The directory is the registry:
a restart, and every replica at its next look, serve the same set."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.adapters.check import AdapterRefused, inspect, read
from app.adapters.files import persist, split_name, withdraw
from app.adapters.registry import NOT_FOUND, Adapters
from app.errors import InvalidRequest, ModelNotFound


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
    if name in adapters.by_name or name in adapters.modules:
        raise InvalidRequest(
            "An adapter of that name is already loaded; roll out a new version as name@N.",
            param="lora_name",
        )
    try:
        files = await asyncio.to_thread(read, Path(path))
        inspect(files, adapters.shape, adapters.max_rank, adapters.ascend)
    except AdapterRefused as exc:
        adapters.refuse(name, exc, f"admin load by {who}")
        raise InvalidRequest(f"The adapter was refused: {exc}.", param="lora_path") from None
    if not await asyncio.to_thread(persist, lora_dir, name, files):
        raise InvalidRequest(
            "The registry directory already has an adapter of that name (not yet looked "
            "at); roll out a new version as name@N.",
            param="lora_name",
        )
    await adapters.rescan(f"admin load by {who}")
    if name not in adapters.by_name:
        raise InvalidRequest("The engine refused the adapter (see the gateway's log).")


async def unload(adapters: Adapters, name: str, who: str) -> None:
    if name not in adapters.by_name:
        raise ModelNotFound(NOT_FOUND, param="lora_name")
    if name in adapters.modules or adapters.lora_dir is None:
        raise InvalidRequest(
            "That adapter is configured by GATEWAY_LORA_MODULES; remove it there.",
            param="lora_name",
        )
    await asyncio.to_thread(withdraw, adapters.lora_dir, name)
    await adapters.rescan(f"admin unload by {who}")
