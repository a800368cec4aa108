"""A bad setting stops the CLI at once with one line per problem: it names
the variable / flag, says what is accepted, never echoes a secret, shows no
traceback, exits 2. The NPU preflight runs before vLLM is imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.config import Settings
from tests.support.gateway import MODEL_DIR, ROOT

SECRET = "sk-very-secret-123"


# `python -m app`, reporting on stdout at exit whether vLLM was ever imported.
CLI = (
    "import atexit, runpy, sys\n"
    "atexit.register(lambda: print('vllm imported:', 'vllm' in sys.modules))\n"
    "runpy.run_module('app', run_name='__main__', alter_sys=True)\n"
)


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "VLLM_"))}
    return subprocess.run(
        [sys.executable, "-c", CLI, "--model", str(MODEL_DIR), *args],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard: these exit in ~1 s, slower when the machine is loaded
    )


CASES = [
    ({"GATEWAY_TRUNCATION": "right"}, "GATEWAY_TRUNCATION / --truncation", "'left' or 'error'"),
    ({"GATEWAY_PORT": "eighty"}, "GATEWAY_PORT / --port", "integer"),
    ({"GATEWAY_CORS_ORIGINS": "https://a"}, "GATEWAY_CORS_ORIGINS", "JSON"),
    ({"GATEWAY_API_KEYS": f'["{SECRET}"'}, "GATEWAY_API_KEYS", "comma-separated"),
    ({"GATEWAY_RATE_LIMIT_RPM": "60"}, "GATEWAY_RATE_LIMIT_RPM", "per key"),
    (
        {"GATEWAY_DRAIN_TIMEOUT": "60", "GATEWAY_TERMINATION_GRACE": "30"},
        "GATEWAY_DRAIN_TIMEOUT",
        "terminationGracePeriodSeconds",
    ),
    ({"GATEWAY_MAX_MODEL_LEN": "4096"}, "GATEWAY_MAX_MODEL_LEN", "context length 2048"),
    ({"VLLM_PORT": "tcp://10.0.0.1:8000"}, "VLLM_PORT holds a URI", "enableServiceLinks"),
]


@pytest.mark.parametrize(("env", "names", "accepted"), CASES, ids=lambda v: str(v)[:30])
def test_a_bad_setting_is_one_line_and_exit_2(
    env: dict[str, str], names: str, accepted: str
) -> None:
    proc = run_cli(env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert (
        lines[0].startswith("ascend-llm-gateway: ") and names in lines[0] and accepted in lines[0]
    )
    assert "Traceback" not in proc.stderr and SECRET not in proc.stderr + proc.stdout


def test_a_bad_flag_is_named_like_its_variable() -> None:
    proc = run_cli({}, "--truncation", "middle")
    assert proc.returncode == 2
    assert "GATEWAY_TRUNCATION / --truncation" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("raw", "keys"),
    [
        ("sk-abc", ["sk-abc"]),  # one key, as vLLM's --api-key takes it
        ("k1, k2,", ["k1", "k2"]),
        ('["k1", "k,2"]', ["k1", "k,2"]),
    ],
)
def test_api_keys_take_one_a_comma_list_or_json(
    monkeypatch: pytest.MonkeyPatch, raw: str, keys: list[str]
) -> None:
    monkeypatch.setenv("GATEWAY_API_KEYS", raw)
    assert Settings().api_keys == keys


def test_npu_preflight_fails_fast_without_torch_npu() -> None:
    proc = run_cli({"GATEWAY_DEVICE": "npu"})
    assert proc.returncode == 1
    assert "vllm imported: False" in proc.stdout, proc.stdout  # it fails before vLLM loads
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "torch_npu cannot be imported" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
