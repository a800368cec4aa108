"""Server processes for the tests and the bench: a free loopback port, a
command started with its output in a log file, a wait until it answers
ready, and a stop that does not leave it behind."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ok(url: str, timeout: float, alive: Callable[[], bool] = lambda: True) -> float:
    """Seconds until `url` answers 200; AssertionError when `alive()` turns
    false or `timeout` passes first."""
    t0 = time.monotonic()
    while True:
        assert alive(), f"the server behind {url} has gone"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.TransportError:
            pass
        assert time.monotonic() - t0 < timeout, f"{url} not 200 within {timeout} s"
        time.sleep(0.1)


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
        user: str | None = None,
        process_group: int | None = None,
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
            user=user,  # a server that refuses root (postgres) runs as another user
            process_group=process_group,
        )

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 600, path: str = "/health") -> float:
        """Seconds until `path` answered 200. If the process exits first, or
        `timeout` passes (then it is killed), RuntimeError with its log's tail."""
        try:
            return wait_ok(f"{self.url}{path}", timeout, lambda: self.proc.poll() is None)
        except AssertionError as exc:
            code = self.proc.poll()
            if code is None:
                self.proc.kill()
            state = f"exited with {code}" if code is not None else "not ready, killed"
            raise RuntimeError(f"{self.name} {state} ({exc}):\n{self.logs()[-4000:]}") from None

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
