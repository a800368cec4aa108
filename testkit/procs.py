"""Server processes for the tests and the bench: a free loopback port, a
command started with its output in a log file, a wait until it answers
ready, and a stop that does not leave it behind."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server process on 127.0.0.1:`port`, started at once."""

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

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 600, path: str = "/health") -> float:
        """Seconds until `path` answered 200. If the process exits first, or
        `timeout` passes (then it is killed), RuntimeError with its log's tail."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.logs()[-4000:]}"
                )
            try:
                if httpx.get(f"{self.url}{path}", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.proc.kill()
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.logs()[-4000:]}")

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
