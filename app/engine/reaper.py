"""The engine's undertaker: a tiny process (`python -m app.engine.reaper
GATEWAY_PID [RECORDS_DIR]`) that outlives the gateway by a moment and ends the
engine processes the gateway leaves behind when it dies without its
shutdown (SIGKILL, the OOM killer, a signal with no handler).

Why a separate process rather than the parent-death signal set inside
vLLM's engine core: the engine core is started by vLLM (fork or spawn,
depending on the version and the platform plugin) and its worker by the
engine core; code of ours runs in neither without patching vLLM. A watcher
beside them works the same on vLLM 0.18 and 0.32, on vllm-ascend's extra
processes, and costs one wake-up a second, in its own process, and nothing
on the gateway's request path.

While the gateway lives, the reaper notes its engine processes (children
named `VLLM::*`, as vLLM titles its engine core, and everything below
them) every few seconds from /proc and writes them, with their start
times, to a record in RECORDS_DIR (GATEWAY_DATA_DIR/engines), so a later
gateway can find an engine nobody owns (app.engine.orphans). When the
gateway is gone (or sends SIGUSR1 after its own engine shutdown), it sends
SIGTERM to each process still alive (vLLM's engine core shuts its workers
down on it), SIGKILL to those left after a grace, removes the record and
exits. Standard library only: it starts in well under a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

POLL = 0.5  # seconds between checks that the gateway lives
RESCAN = 2.0  # seconds between scans of its descendants
GRACE = 10.0  # seconds the engine gets after SIGTERM before SIGKILL
# multiprocessing's resource tracker ignores SIGTERM and exits by itself once
# every process that held its pipe is gone; killing it would leak what it
# tracks (shared memory).
_SPARE = ("resource_tracker",)
ENGINE_TITLE = "VLLM::"  # vLLM's process titles (setproctitle), 0.18 and 0.32


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of
    /proc/PID/stat): with the pid, what identifies it across pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after it.
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[19])


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    """Direct children, from /proc/PID/task/*/children."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
        except OSError:
            continue
        out += [int(p) for p in text.split()]
    return out


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def engine_processes(pid: int) -> dict[int, int]:
    """pid -> start time of `pid`'s engine processes: its children that vLLM
    titled (`VLLM::EngineCore`) and every process below them."""
    found: dict[int, int] = {}
    todo = [c for c in children(pid) if comm(c).startswith(ENGINE_TITLE)]
    while todo:
        p = todo.pop()
        if p in found:
            continue
        started = start_time(p)
        if started is None:
            continue
        found[p] = started
        todo += children(p)
    return found


def alive(pid: int, started: int) -> bool:
    """The same process (not a reused pid) and not a zombie."""
    if start_time(pid) != started:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop(procs: dict[int, int], grace: float = GRACE, log: bool = True) -> list[int]:
    """SIGTERM each process still alive, SIGKILL those left after `grace`;
    the pids that were signalled."""
    targets = {
        p: s for p, s in procs.items() if alive(p, s) and not any(n in cmdline(p) for n in _SPARE)
    }
    for pid in targets:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p, s) for p, s in targets.items()):
        time.sleep(0.1)
    for pid, started in targets.items():
        if alive(pid, started):
            if log:
                _say(f"engine process {pid} ignored SIGTERM for {grace:g} s: SIGKILL")
            _signal(pid, signal.SIGKILL)
    return list(targets)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _say(line: str) -> None:
    print(f"ascend-llm-gateway reaper: {line}", file=sys.stderr, flush=True)


def write_record(path: Path, gateway: int, procs: dict[int, int]) -> None:
    body = {
        "gateway": {"pid": gateway, "start": start_time(gateway)},
        "engine": [{"pid": p, "start": s, "cmdline": cmdline(p)[:200]} for p, s in procs.items()],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body))
    tmp.replace(path)  # a reader never sees half a file


def run(gateway: int, records: Path | None) -> None:
    record = records / f"{gateway}-{os.getpid()}.json" if records is not None else None
    known: dict[int, int] = {}
    next_scan = 0.0
    writable = record is not None
    finish = False

    def finish_now(sig: int, frame: object) -> None:
        nonlocal finish
        finish = True

    # The terminal's or the operator's signals are for the gateway: the
    # reaper must outlive it to do its job. SIGUSR1: the gateway has shut
    # its engine down; check nothing is left and go.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, finish_now)
    while os.getppid() == gateway and not finish:
        now = time.monotonic()
        if now >= next_scan:
            next_scan = now + RESCAN
            found = engine_processes(gateway)
            # Keep what was seen even if it is gone from the tree now (a
            # worker re-parented when its engine core died) until it ends.
            known = {p: s for p, s in {**known, **found}.items() if alive(p, s)}
            if record is not None and writable:
                try:
                    write_record(record, gateway, known)
                except OSError as exc:
                    writable = False
                    _say(f"cannot write {record} ({exc.strerror}): no record of the engine")
        time.sleep(POLL)
    left = [p for p, s in known.items() if alive(p, s)]
    if left:
        why = "left its engine processes" if finish else "is gone"
        _say(f"gateway {gateway} {why}; stopping engine processes {left}")
        stop(known)
    if record is not None:
        with contextlib.suppress(OSError):
            record.unlink()


def main(argv: list[str]) -> None:
    gateway = int(argv[0])
    records = Path(argv[1]) if len(argv) > 1 and argv[1] else None
    run(gateway, records)


if __name__ == "__main__":
    main(sys.argv[1:])
