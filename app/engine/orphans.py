"""Engine processes nobody owns: the reaper that keeps a dead gateway's
engine from holding the device (app.engine.reaper), and the check at start
that finds one a reaper could not stop (both killed at once, a host reboot
of the reaper alone, ...) from the records the reapers keep in
`GATEWAY_DATA_DIR/engines/`."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from app.engine import reaper

logger = logging.getLogger(__name__)


def records_dir(data_dir: Path) -> Path:
    return data_dir / "engines"


class Reaper:
    """This gateway's reaper process (app.engine.reaper)."""

    def __init__(self, proc: subprocess.Popen[bytes]):
        self.proc = proc

    def finish(self) -> None:
        """The engine is down (or never came up): the reaper checks that
        nothing is left and exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)


def start_reaper(data_dir: Path) -> Reaper:
    """Start this gateway's reaper; it records the engine processes in
    `data_dir` (if writable) and ends them if the gateway dies first."""
    records: Path | None = records_dir(data_dir)
    try:
        records_dir(data_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        logger.warning(
            "GATEWAY_DATA_DIR %s is not writable (%s): a stale engine will not be found "
            "at the next start",
            data_dir,
            exc.strerror,
        )
        records = None
    proc = subprocess.Popen(
        [sys.executable, "-m", reaper.__name__, str(os.getpid()), str(records or "")],
        stdin=subprocess.DEVNULL,
        close_fds=True,
    )
    return Reaper(proc)


@dataclass(frozen=True)
class StaleEngine:
    record: Path
    gateway: int
    procs: dict[int, int]  # pid -> start time, each still alive


def find_stale(data_dir: Path) -> list[StaleEngine]:
    """Engines whose gateway is gone and which still run. Records of
    gateways that are gone with nothing left running are removed."""
    found: list[StaleEngine] = []
    folder = records_dir(data_dir)
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.json")):
        try:
            body = json.loads(path.read_text())
            gw = int(body["gateway"]["pid"])
            gw_start = body["gateway"]["start"]
            procs = {int(e["pid"]): int(e["start"]) for e in body["engine"]}
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not ours: never act on a guess
        if gw_start is not None and reaper.alive(gw, int(gw_start)):
            continue  # its gateway lives: not stale
        left = {p: s for p, s in procs.items() if reaper.alive(p, s)}
        if left:
            found.append(StaleEngine(path, gw, left))
        else:
            path.unlink(missing_ok=True)
    return found


def stop_stale(stale: StaleEngine) -> list[int]:
    """End a stale engine's processes (SIGTERM, then SIGKILL) and its record."""
    pids = reaper.stop(stale.procs, log=False)
    stale.record.unlink(missing_ok=True)
    return pids
