"""No orphaned engine, on real gateway processes: SIGHUP never ends the
gateway; a gateway killed with SIGKILL leaves no engine process behind; an
engine left running by a gateway whose reaper died with it is found at the
next start (stopped with one line naming it, or refused with exit 2)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from app.engine import reaper
from tests.support import gateway as support
from tests.support.gateway import ROOT, Gateway
from tests.support.wait import until

pytestmark = pytest.mark.engine

# Seconds an engine may outlive its SIGKILLed gateway: the reaper's poll
# (0.5 s), vLLM's own shutdown on SIGTERM (its worker exits gracefully in
# ~3-8 s here), the 10 s grace before SIGKILL, and slack for a loaded node.
ORPHAN_BOUND = 30.0


def _engine(gw: Gateway) -> list[psutil.Process]:
    """The engine core and everything below it, found through /proc."""
    procs = [
        psutil.Process(pid)
        for pid in reaper.engine_processes(gw.proc.pid)  # reads /proc/*/task/*/children
    ]
    assert any("EngineCore" in p.name() for p in procs), procs
    return procs


def _reaper_of(gw: Gateway) -> psutil.Process:
    kids = psutil.Process(gw.proc.pid).children()
    return next(p for p in kids if "app.engine.reaper" in " ".join(p.cmdline()))


def _complete(gw: Gateway) -> int:
    r = httpx.post(f"{gw.url}/v1/completions", json={"prompt": "Hi", "max_tokens": 3}, timeout=60)
    assert r.status_code == 200, r.text
    return int(r.json()["usage"]["completion_tokens"])


def test_sighup_without_a_tenants_file_keeps_serving(model_dir: Path, tmp_path: Path) -> None:
    gw = support.spawn_gateway(
        model_dir, tmp_path / "gw.log", "--warmup", "minimal", "--data-dir", str(tmp_path)
    )
    try:
        # While the engine loads, and again when ready: neither ends the process.
        until(lambda: "phase starting -> loading" in gw.logs(), "the loading phase")
        gw.proc.send_signal(signal.SIGHUP)
        support.wait_ready(gw)
        gw.proc.send_signal(signal.SIGHUP)
        until(lambda: gw.logs().count("SIGHUP: nothing to reload") == 2, "two SIGHUP lines")
        assert gw.proc.poll() is None
        assert _complete(gw) == 3
    finally:
        support.stop_gateway(gw)
    assert gw.proc.returncode == 0, gw.logs()[-3000:]


def test_sigkill_of_the_gateway_leaves_no_engine(model_dir: Path, tmp_path: Path) -> None:
    gw = support.start_gateway(
        model_dir, tmp_path / "gw.log", "--warmup", "minimal", "--data-dir", str(tmp_path)
    )
    try:
        engine = _engine(gw)
        helper = _reaper_of(gw)
    finally:
        gw.proc.kill()
    gw.proc.wait(30)
    killed = time.monotonic()
    support.assert_no_orphans([*engine, helper], within=ORPHAN_BOUND)
    took = time.monotonic() - killed
    assert took < ORPHAN_BOUND
    assert "is gone; stopping engine processes" in gw.logs()
    # Its record of the engine is gone with it.
    assert not list((tmp_path / "engines").glob("*.json"))


def test_a_stale_engine_is_found_at_the_next_start(model_dir: Path, tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    gw = support.start_gateway(
        model_dir, tmp_path / "gw1.log", "--warmup", "none", "--data-dir", data
    )
    try:
        engine = _engine(gw)
        # Gateway and reaper killed together (as an OOM kill of both would):
        # nobody is left to stop the engine.
        helper = _reaper_of(gw)
        until(lambda: list((tmp_path / "data" / "engines").glob("*.json")), "the record")
        helper.kill()  # a zombie until its parent goes, a moment later
    finally:
        gw.proc.kill()
    gw.proc.wait(30)
    time.sleep(3)
    core = next(p for p in engine if "EngineCore" in p.name())
    assert core.is_running() and core.status() != psutil.STATUS_ZOMBIE, "no orphan to find"

    # refuse: one line naming the processes, exit 2, nothing stopped.
    refused = subprocess.run(
        [sys.executable, "-m", "app", "--model", str(model_dir), "--data-dir", data,
         "--stale-engines", "refuse"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and str(core.pid) in lines[0] and "Traceback" not in refused.stderr
    assert core.is_running()

    # The default on cpu: stopped, one line naming them, then serving.
    gw2 = support.start_gateway(
        model_dir, tmp_path / "gw2.log", "--warmup", "none", "--data-dir", data
    )
    try:
        support.assert_no_orphans(engine, within=ORPHAN_BOUND)
        stopped = [ln for ln in gw2.logs().splitlines() if "left running by gateway" in ln]
        assert len(stopped) == 1 and str(core.pid) in stopped[0], gw2.logs()[-2000:]
        assert _complete(gw2) == 3
    finally:
        support.stop_gateway(gw2)
