"""Task adapters for tests: the fixture's (scripts/build_adapters.py) and
variants written on the spot (another rank, other targets, broken files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.numpy import save_file

from scripts.build_adapters import adapter_config, lora_tensors

ROOT = Path(__file__).resolve().parents[2]
FIXTURE_ADAPTERS = ROOT / ".cache" / "adapters"
REFUSED = ROOT / ".cache" / "adapters-refused"
MODEL_CONFIG = ROOT / ".cache" / "models" / "tiny-mobilellama" / "config.json"


def copy_adapter(name: str, into: Path, as_name: str | None = None) -> Path:
    """A fixture adapter copied into `into` (under `as_name`)."""
    target = into / (as_name or name)
    shutil.copytree(FIXTURE_ADAPTERS / name, target)
    return target


def write_adapter(
    target: Path, rank: int, targets: list[str], seed: int = 7, width: int = 1
) -> Path:
    """A PEFT LoRA adapter for the fixture model (`width` 2: shaped for a wider one)."""
    config = json.loads(MODEL_CONFIG.read_text())
    target.mkdir(parents=True)
    (target / "adapter_config.json").write_text(json.dumps(adapter_config(rank, targets)))
    tensors = lora_tensors(config, seed, rank, targets, width)
    save_file(tensors, str(target / "adapter_model.safetensors"), metadata={"format": "pt"})
    return target
