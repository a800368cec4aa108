"""A real PostgreSQL server for tests (Debian's, unpacked by `make setup`
into .cache/postgres): a fresh cluster on a free port in a temporary
directory, run as `nobody` when the tests run as root (initdb and postgres
refuse root). Trust authentication on 127.0.0.1 only; fsync off."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg

from testkit.procs import Server, free_port
from tests.support.wait import until

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".cache" / "postgres" / "usr" / "lib" / "postgresql" / "15" / "bin"
_names = itertools.count()


class Postgres(Server):
    port: int
    home: Path
    cmd: list[str]
    user: str | None

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://gateway@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh database's URL (one per test on a shared server)."""
        name = f"t{os.getpid()}_{next(_names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def wait_up(self, timeout: float = 30) -> None:

        def answers() -> bool:
            assert self.proc.poll() is None, f"postgres exited:\n{self.logs()[-2000:]}"
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                return False

        until(answers, "postgres accepts connections", timeout, every=0.1)

    def kill(self) -> None:
        """SIGKILL to the server and its sessions (its own process group): the
        database is gone, every connection cut."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def restart(self) -> None:
        """The same cluster started again (crash recovery after `kill`). A
        killed server's sessions may hold its shared memory a moment longer;
        a start refused for that is tried again."""

        def started() -> bool:
            self.proc = subprocess.Popen(
                self.cmd, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                user=self.user, process_group=0,
            )  # fmt: skip
            try:
                self.wait_up()
                return True
            except AssertionError:  # it exited at once
                return False

        until(started, "postgres starts again", 30, every=0.2)

    def stop(self, timeout: float = 60) -> None:
        """A fast shutdown (SIGINT: sessions are ended, not waited for)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.home, ignore_errors=True)


def start_postgres(log: Path, port: int | None = None) -> Postgres:
    """A new cluster, started; AssertionError if PostgreSQL is not unpacked
    (`make setup` does it: a missing one is a failure, never a skip)."""
    assert (BIN / "postgres").exists(), f"{BIN / 'postgres'} missing: run `make setup`"
    user = "nobody" if os.geteuid() == 0 else None
    # Not under pytest's tmp_path: its parents are root's alone.
    home = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
    if user is not None:
        shutil.chown(home, user)
    data = home / "data"
    subprocess.run(
        [str(BIN / "initdb"), "-D", str(data), "-U", "gateway", "--auth=trust",
         "-E", "UTF8", "--no-sync", "--no-instructions"],
        check=True, capture_output=True, user=user,
    )  # fmt: skip
    port = port or free_port()
    cmd = [str(BIN / "postgres"), "-D", str(data), "-p", str(port)]
    cmd += ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={home}"]
    cmd += ["-c", "fsync=off", "-c", "full_page_writes=off"]
    server = Postgres("postgres", cmd, port, log, user=user, process_group=0)
    server.port, server.home, server.cmd, server.user = port, home, cmd, user
    server.wait_up()
    return server
