"""Settings: GATEWAY_* variables, matching CLI flags, device profiles."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.config import Settings
from app.engine.profiles import DEVICE_PROFILES, engine_kwargs
from tests.support.gateway import ROOT


def test_env_prefix_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "9001")
    monkeypatch.setenv("GATEWAY_TRUNCATION", "error")
    monkeypatch.setenv("GATEWAY_ENGINE_ARGS", '{"seed": 7, "max_logprobs": 5}')
    s = Settings()
    assert (s.port, s.truncation, s.device, s.host) == (9001, "error", "auto", "127.0.0.1")
    assert s.engine_args == {"seed": 7, "max_logprobs": 5}
    assert s.model_name == "tiny-mobilellama"  # the model directory's name


def test_cli_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "9001")
    s = Settings(
        _cli_parse_args=[
            "--port",
            "9002",
            "--max-model-len",
            "1024",
            "--enforce-eager",
            "true",
            "--served-model-name",
            "m",
            "--engine-args",
            '{"seed": 3}',
        ]
    )
    assert (s.port, s.max_model_len, s.enforce_eager, s.model_name) == (9002, 1024, True, "m")
    assert s.engine_args == {"seed": 3}


def test_invalid_values_are_refused() -> None:
    with pytest.raises(ValueError):
        Settings(truncation="right")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Settings(gpu_memory_utilization=1.5)


def test_engine_kwargs_layer_profile_then_settings_then_passthrough() -> None:
    s = Settings(
        model="/models/MobileLLaMA-1.4B-Base",
        max_num_seqs=8,
        engine_args={"max_num_batched_tokens": 4096, "seed": 1},
    )
    npu = engine_kwargs(s, "npu")
    assert npu["dtype"] == "float16" and npu["enable_prefix_caching"] is True
    assert npu["compilation_config"] == {"cudagraph_mode": "PIECEWISE"}
    assert npu["max_num_seqs"] == 8  # explicit setting beats the profile
    assert npu["max_num_batched_tokens"] == 4096  # passthrough beats both
    assert npu["served_model_name"] == "MobileLLaMA-1.4B-Base"
    cpu = engine_kwargs(s, "cpu")
    assert cpu["enforce_eager"] is True and cpu["gpu_memory_utilization"] < 0.5
    assert DEVICE_PROFILES["npu"]["max_num_batched_tokens"] == 8192  # profile untouched


def test_console_script_is_the_cli() -> None:
    script = ROOT / ".venv" / "bin" / "ascend-llm-gateway"
    for cmd in ([str(script), "--help"], [sys.executable, "-m", "app", "--help"]):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
        assert "--max-model-len" in out and "--truncation" in out


@pytest.mark.engine  # imports vLLM (~13 s)
def test_auto_device_is_cpu_without_torch_npu() -> None:
    pytest.importorskip("vllm")
    from app.engine.preflight import resolve_device

    assert resolve_device("auto") == "cpu"
    assert resolve_device("npu") == "npu"


def test_profiles_yield_exactly_the_expected_engine_arguments() -> None:
    s = Settings(model="/models/MobileLLaMA-1.4B-Base")
    assert engine_kwargs(s, "npu") == {
        "model": "/models/MobileLLaMA-1.4B-Base",
        "served_model_name": "MobileLLaMA-1.4B-Base",
        "dtype": "float16",
        "gpu_memory_utilization": 0.9,
        "enforce_eager": False,
        "enable_prefix_caching": True,
        "enable_chunked_prefill": True,
        "max_num_batched_tokens": 8192,
        "compilation_config": {"cudagraph_mode": "PIECEWISE"},
    }
    assert engine_kwargs(s, "cpu") == {
        "model": "/models/MobileLLaMA-1.4B-Base",
        "served_model_name": "MobileLLaMA-1.4B-Base",
        "dtype": "bfloat16",
        "gpu_memory_utilization": 0.1,
        "enforce_eager": True,
        "enable_prefix_caching": True,
        "enable_chunked_prefill": True,
        "max_num_seqs": 64,
    }


def test_graph_mode_is_overridable_through_engine_args() -> None:
    s = Settings(
        engine_args={
            "compilation_config": {
                "cudagraph_mode": "FULL_DECODE_ONLY",
                "cudagraph_capture_sizes": [1, 2, 4, 8],
            }
        },
        enforce_eager=False,
    )
    kwargs = engine_kwargs(s, "npu")
    assert kwargs["compilation_config"]["cudagraph_mode"] == "FULL_DECODE_ONLY"
    assert kwargs["compilation_config"]["cudagraph_capture_sizes"] == [1, 2, 4, 8]
