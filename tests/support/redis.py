"""A real redis-server for tests and benchmarks (Debian's, unpacked by
`make setup` into .cache/redis): started on a free port, in memory only."""

from __future__ import annotations

from pathlib import Path

import redis

from testkit.procs import Server, free_port
from tests.support.wait import until

ROOT = Path(__file__).resolve().parents[2]
REDIS_DIR = ROOT / ".cache" / "redis"
REDIS_SERVER = REDIS_DIR / "usr" / "bin" / "redis-server"


class Redis(Server):
    port: int

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def wait_up(self, timeout: float = 30) -> None:

        def answers() -> bool:
            assert self.proc.poll() is None, f"redis-server exited:\n{self.logs()[-2000:]}"
            try:
                return bool(self.client().ping())
            except redis.RedisError:
                return False

        until(answers, "redis-server answers PING", timeout, every=0.05)


def start_redis(log: Path, port: int | None = None) -> Redis:
    """redis-server on 127.0.0.1 (no persistence); AssertionError if it is
    not installed (`make setup` installs it: a missing one is a failure)."""
    assert REDIS_SERVER.exists(), f"{REDIS_SERVER} missing: run `make setup`"
    libs = ":".join(str(p) for p in (REDIS_DIR / "usr" / "lib").glob("*-linux-gnu"))
    port = port or free_port()
    cmd = [str(REDIS_SERVER), "--port", str(port), "--bind", "127.0.0.1"]
    cmd += ["--save", "", "--appendonly", "no"]
    server = Redis("redis", cmd, port, log, env={"LD_LIBRARY_PATH": libs})
    server.port = port
    server.wait_up()
    return server
