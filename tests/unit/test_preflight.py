"""NPU preflight: the right message for each missing piece, simulated at the probe."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from app.engine.preflight import PreflightError, check_npu


@dataclass
class Probe:
    error: str | None = None
    count: int = 1
    free: int = 64 * 2**30

    def import_error(self) -> str | None:
        return self.error

    def device_count(self) -> int:
        return self.count

    def free_memory(self, device: int) -> int:
        return self.free


@pytest.fixture
def model(tmp_path: Path) -> Path:
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"\0" * 3000)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"\0" * 3000)
    return tmp_path


def test_passes_with_a_device_and_room(model: Path) -> None:
    check_npu(model, 1, Probe())


def test_missing_torch_npu_says_which_image(model: Path) -> None:
    with pytest.raises(PreflightError, match=r"vllm-ascend image.*GATEWAY_DEVICE=cpu"):
        check_npu(model, 1, Probe(error="ImportError: libascendcl.so"))


def test_no_device_names_plugin_mounts_and_visible_devices(
    model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "3")
    with pytest.raises(PreflightError) as err:
        check_npu(model, 1, Probe(count=0))
    for hint in (
        "huawei.com/Ascend910",
        "/dev/davinci",
        "ASCEND_RT_VISIBLE_DEVICES (now 3)",
        "npu-smi",
    ):
        assert hint in str(err.value)


def test_too_few_devices_for_tensor_parallel(model: Path) -> None:
    with pytest.raises(PreflightError, match=r"2 NPUs are needed.*1 are visible"):
        check_npu(model, 2, Probe(count=1))


def test_not_enough_device_memory_for_the_weights(model: Path) -> None:
    with pytest.raises(PreflightError, match="NPU memory"):
        check_npu(model, 1, Probe(free=5000))
    check_npu(model, 2, Probe(count=2, free=3500))  # split over two cards it fits
