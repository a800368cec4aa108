"""The records of engine processes: only a process with the recorded pid
and start time is a stale engine (a reused pid is never touched)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from app.engine import reaper
from app.engine.orphans import find_stale


def test_a_record_whose_pid_was_reused_is_not_stale(tmp_path: Path) -> None:
    # A record naming a live process with another start time (its pid reused
    # by something else): nothing is touched, and the record is dropped.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = tmp_path / "engines"
        folder.mkdir()
        started = reaper.start_time(other.pid)
        assert started is not None
        record = folder / "1-2.json"
        record.write_text(
            '{"gateway": {"pid": 999999, "start": 1}, '
            f'"engine": [{{"pid": {other.pid}, "start": {started + 1}}}]}}'
        )
        assert find_stale(tmp_path) == []
        assert not record.exists() and other.poll() is None
        # The same record with the right start time is an orphan to stop.
        record.write_text(
            '{"gateway": {"pid": 999999, "start": 1}, '
            f'"engine": [{{"pid": {other.pid}, "start": {started}}}]}}'
        )
        assert [e.procs for e in find_stale(tmp_path)] == [{other.pid: started}]
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
